//! Hostile input on the wire, against a real stack on SQLite and PostgreSQL: raw protobuf bytes
//! no request message decodes (to every RPC of every service), invalid UTF-8 in string fields,
//! control, bidirectional and homoglyph characters, SQL-looking strings, messages over the size
//! limit, metadata over the header limit, absurd page sizes and filters, and malformed agent
//! stream messages (the committed corpus, `tests/corpus/`). Each is answered with the
//! documented code (`INVALID_ARGUMENT` with a `BadRequest`, or tonic's `OUT_OF_RANGE` for a
//! message over `server.max_message_bytes`), the server serves on, and nothing is written.

use std::path::PathBuf;

use bytes::{Buf, BufMut};
use prost::Message as _;
use steward_proto::admin::v1::{
    Administrator, BatchDeleteAdministratorsRequest, CreateAdministratorRequest, CreateRoleRequest,
    GetAdministratorRequest, GetProfileRequest, ListAdministratorsRequest, Role, RoleDefinition,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_proto::auth::v1::SignInRequest;
use steward_proto::authz::Access;
use steward_proto::commands::v1::agent_service_client::AgentServiceClient;
use steward_proto::commands::v1::open_stream_request::{Hello, Message as AgentMessage};
use steward_proto::commands::v1::{
    BatchCheckAccessRequest, CheckAccessRequest, Command, CreateCommandRequest, Interpreter,
    ListCommandsRequest, OpenStreamRequest, OutputChunk, RegisterAgentRequest,
};
use steward_server::ServiceKind;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::harness::{reason, refused, Owner, Stack};

/// Sends and receives message bodies as raw bytes, so a test can put anything on the wire.
#[derive(Clone, Copy, Debug, Default)]
struct Raw;

#[derive(Debug)]
struct RawCoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }

    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Every file of `tests/corpus/{target}`, sorted, as (file name, bytes).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(path).unwrap())
        })
        .collect()
}

/// One unary call of `path` with `body` as the message bytes and `metadata` as headers.
async fn raw_call(
    channel: &Channel,
    path: &str,
    metadata: &[(&'static str, String)],
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    grpc.unary(request, path, Raw).await.map(tonic::Response::into_inner)
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// `message` encoded, with the bytes of `marker` (unique in the encoding) replaced by as many
/// bytes that are not UTF-8: the length prefixes stay right, only the string is invalid.
fn with_invalid_utf8(message: &impl prost::Message, marker: &str) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    let at = bytes.windows(marker.len()).position(|w| w == marker.as_bytes()).unwrap();
    for (i, byte) in bytes[at..at + marker.len()].iter_mut().enumerate() {
        *byte = if i % 2 == 0 { 0xff } else { 0xfe };
    }
    assert!(String::from_utf8(bytes.clone()).is_err());
    bytes
}

/// Asserts `INVALID_ARGUMENT` with `ErrorInfo` `INVALID_ARGUMENT` and a `BadRequest` whose one
/// violation is on `field` (and mentions `mentions`); the message stays short.
fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, field: &str, mentions: &str) {
    let status = refused(result, Code::InvalidArgument, "INVALID_ARGUMENT");
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("a BadRequest detail").field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, field, "{status:?}");
    assert!(violations[0].description.contains(mentions), "{:?}", violations[0].description);
    assert!(status.message().len() < 2048, "a {}-byte message", status.message().len());
}

/// The server still answers an ordinary call, and the organization's administrators are
/// `expected` (nothing was written by the refused calls).
async fn still_serving(owner: &Owner, expected: usize) {
    let profile = owner.client.admin().get_profile(GetProfileRequest {}).await.unwrap();
    assert_eq!(profile.into_inner().profile.unwrap().administrator.unwrap().name, owner.admin);
    let listed = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.administrators.len(), expected, "{:?}", listed.administrators);
}

async fn channel(stack: &Stack, url: &str) -> Channel {
    stack.endpoint(url).connect().await.unwrap()
}

backend_test!(every_rpc_answers_undecodable_bytes_with_invalid_argument, |stack| async move {
    // The owner holds every permission and billing: no refusal comes before the message is read.
    let owner = stack.owner().await;
    let public = channel(&stack, &stack.url(ServiceKind::Admin)).await;
    let internal = channel(&stack, &stack.internal_url(ServiceKind::Admin)).await;
    let as_admin = bearer(&owner.tokens.access_token);
    let as_service = vec![(
        steward_runtime::authn::SERVICE_CREDENTIAL_HEADER,
        stack.service_token().to_string(),
    )];
    let mut calls = 0;
    for (file, body) in corpus("requests") {
        for rule in steward_proto::authz::RULES {
            // OpenStream reads its messages after the call is accepted: agent_stream_* below.
            if rule.path.ends_with("/OpenStream") {
                continue;
            }
            let (channel, metadata) = match rule.access {
                Access::Internal => (&internal, &as_service),
                Access::Public | Access::Agent => (&public, &Vec::new()),
                _ => (&public, &as_admin),
            };
            let result = raw_call(channel, rule.path, metadata, body.clone()).await;
            let status = result.expect_err(&format!("{} accepted requests/{file}", rule.path));
            assert_eq!(
                (status.code(), reason(&status).as_str()),
                (Code::InvalidArgument, "INVALID_ARGUMENT"),
                "{} answered requests/{file} with {status:?}",
                rule.path
            );
            let details = status.get_error_details();
            let violation = &details.bad_request().unwrap().field_violations[0];
            assert_eq!(violation.field, steward_proto::codec::UNDECODABLE_FIELD);
            calls += 1;
        }
    }
    assert!(calls > 300, "only {calls} calls");
    still_serving(&owner, 1).await;
});

backend_test!(invalid_utf8_in_string_fields_is_invalid_argument, |stack| async move {
    let owner = stack.owner().await;
    let admin_url = stack.url(ServiceKind::Admin);
    let public = channel(&stack, &admin_url).await;
    let as_owner = bearer(&owner.tokens.access_token);
    let marker = "MARKER-0123456789";

    let create = CreateAdministratorRequest {
        parent: owner.org.clone(),
        administrator: Some(Administrator {
            email: format!("{marker}@example.com"),
            role: Role::ReadOnly as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let result = raw_call(
        &public,
        "/steward.admin.v1.AdminService/CreateAdministrator",
        &as_owner,
        with_invalid_utf8(&create, marker),
    )
    .await;
    assert_invalid(result, "request", "Administrator.email");

    let list = ListAdministratorsRequest {
        parent: owner.org.clone(),
        filter: format!("role = {marker}"),
        ..Default::default()
    };
    let result = raw_call(
        &public,
        "/steward.admin.v1.AdminService/ListAdministrators",
        &as_owner,
        with_invalid_utf8(&list, marker),
    )
    .await;
    assert_invalid(result, "request", "filter");

    let command = CreateCommandRequest {
        parent: owner.org.clone(),
        command: Some(Command {
            display_name: marker.into(),
            script: "echo hi".into(),
            interpreter: Interpreter::Sh as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let commands = channel(&stack, &stack.url(ServiceKind::Commands)).await;
    let result = raw_call(
        &commands,
        "/steward.commands.v1.CommandService/CreateCommand",
        &as_owner,
        with_invalid_utf8(&command, marker),
    )
    .await;
    assert_invalid(result, "request", "Command.display_name");

    let sign_in = SignInRequest {
        email: owner.email.clone(),
        password: format!("{marker}{}", crate::harness::PASSWORD),
        organization: String::new(),
    };
    let auth = channel(&stack, &stack.url(ServiceKind::Auth)).await;
    let result = raw_call(
        &auth,
        "/steward.auth.v1.AuthService/SignIn",
        &[],
        with_invalid_utf8(&sign_in, marker),
    )
    .await;
    assert_invalid(result, "request", "password");

    let register = RegisterAgentRequest {
        connect_key: "key".into(),
        hostname: marker.into(),
        os: "linux".into(),
        agent_version: "1".into(),
    };
    let result = raw_call(
        &commands,
        "/steward.commands.v1.AgentService/RegisterAgent",
        &[],
        with_invalid_utf8(&register, marker),
    )
    .await;
    assert_invalid(result, "request", "hostname");

    // Nothing was created, and the same calls with valid UTF-8 still work.
    still_serving(&owner, 1).await;
    let listed = owner
        .client
        .commands()
        .list_commands(ListCommandsRequest { parent: owner.org.clone(), ..Default::default() })
        .await
        .unwrap();
    assert!(listed.into_inner().commands.is_empty());
    stack.sign_in(&owner.email, crate::harness::PASSWORD).await;
});

backend_test!(control_homoglyph_and_sql_strings_are_refused_or_kept_verbatim, |stack| async move {
    let owner = stack.owner().await;
    let create = |email: &str| CreateAdministratorRequest {
        parent: owner.org.clone(),
        administrator: Some(Administrator {
            email: email.into(),
            role: Role::ReadOnly as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    };
    // Homoglyph, bidi, CRLF and SQL-in-the-domain emails are refused...
    for (file, bytes) in corpus("emails") {
        let email = String::from_utf8_lossy(&bytes).into_owned();
        let result = owner.client.admin().create_administrator(create(&email)).await;
        let status = refused(result, Code::InvalidArgument, "INVALID_ARGUMENT");
        let violations = status.get_error_details().bad_request().unwrap().field_violations.clone();
        assert_eq!(violations[0].field, "administrator.email", "emails/{file}");
    }
    // ...while an address that merely looks like SQL to a careless reader is data, kept as is.
    let sql_email = "o'brien--@example.com";
    let created = owner.client.admin().create_administrator(create(sql_email)).await.unwrap();
    let created = created.into_inner().administrator.unwrap();
    let fetched = owner
        .client
        .admin()
        .get_administrator(GetAdministratorRequest { name: created.name.clone() })
        .await
        .unwrap();
    assert_eq!(fetched.into_inner().administrator.unwrap().email, sql_email);

    // Resource names: SQL, homoglyphs, bidi and a megabyte are refused with a short message.
    let huge = format!("{}/administrators/{}", owner.org, "a".repeat(1 << 20));
    for name in [
        format!("{}/administrators/x' OR '1'='1", owner.org),
        format!("{}/administrators/\u{0430}dmin", owner.org),
        format!("{}/administrators/\u{202e}nimda", owner.org),
        huge,
    ] {
        let result = owner.client.admin().get_administrator(GetAdministratorRequest { name }).await;
        assert_invalid(result, "name", "must look like");
    }

    // Display text: SQL-looking names are kept verbatim; control and bidi characters refused.
    let sql_name = "Robert'); DROP TABLE commands_commands;--";
    let command = |display_name: &str, script: &str| CreateCommandRequest {
        parent: owner.org.clone(),
        command: Some(Command {
            display_name: display_name.into(),
            script: script.into(),
            interpreter: Interpreter::Sh as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let kept = owner.client.commands().create_command(command(sql_name, "echo hi")).await;
    assert_eq!(kept.unwrap().into_inner().command.unwrap().display_name, sql_name);
    for (display_name, script, field) in [
        ("deploy \u{202e}hs.exe", "echo hi", "command.display_name"),
        ("line\r\nbreak", "echo hi", "command.display_name"),
        ("deploy", "echo \u{2066}safe\u{2069} && rm -rf /", "command.script"),
        ("deploy", "echo \u{1b}[2J", "command.script"),
    ] {
        let result = owner.client.commands().create_command(command(display_name, script)).await;
        assert_invalid(result, field, "bidirectional");
    }
    let role = |display_name: &str| CreateRoleRequest {
        parent: owner.org.clone(),
        role: Some(RoleDefinition {
            display_name: display_name.into(),
            permissions: vec!["commands.read".into()],
            ..Default::default()
        }),
        role_id: "auditors".into(),
    };
    let result = owner.client.roles().create_role(role("Audit\u{0}ors")).await;
    assert_invalid(result, "role.display_name", "control characters");
    // The table is intact: the SQL-named command is listed, found by its exact name only.
    let found = owner
        .client
        .commands()
        .list_commands(ListCommandsRequest {
            parent: owner.org.clone(),
            filter: format!("display_name = \"{sql_name}\""),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .commands;
    assert_eq!(found.len(), 1);
    let injected = owner
        .client
        .commands()
        .list_commands(ListCommandsRequest {
            parent: owner.org.clone(),
            filter: "display_name = \"x' OR '1'='1\"".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(injected.into_inner().commands.is_empty());

    // Sign-in: a SQL-looking email is just a wrong one; a megabyte one is refused up front.
    let auth = stack.client_for(ServiceKind::Auth).await;
    let sign_in = |email: String, password: String| SignInRequest {
        email,
        password,
        organization: String::new(),
    };
    let result = auth.auth().sign_in(sign_in("' OR '1'='1".into(), "' OR '1'='1".into())).await;
    refused(result, Code::Unauthenticated, "UNAUTHENTICATED");
    let result = auth.auth().sign_in(sign_in("a".repeat(1 << 20), "x".into())).await;
    assert_invalid(result, "email", "at most 254");
    let result = auth.auth().sign_in(sign_in(owner.email.clone(), "p".repeat(1 << 20))).await;
    assert_invalid(result, "password", "at most 128");
    stack.sign_in(&owner.email, crate::harness::PASSWORD).await;
    still_serving(&owner, 2).await;
});

backend_test!(absurd_list_requests_are_bounded, |stack| async move {
    let owner = stack.owner().await;
    let list = |page_size: i32, page_token: &str, filter: &str| ListAdministratorsRequest {
        parent: owner.org.clone(),
        page_size,
        page_token: page_token.into(),
        filter: filter.into(),
        order_by: String::new(),
    };
    let admin = owner.client.admin();
    // Page sizes: the largest is clamped, a negative one refused.
    let served = admin.clone().list_administrators(list(i32::MAX, "", "")).await.unwrap();
    assert_eq!(served.into_inner().administrators.len(), 1);
    assert_invalid(
        admin.clone().list_administrators(list(-1, "", "")).await,
        "page_size",
        "negative",
    );
    // Forged, truncated and garbage page tokens.
    use base64::Engine;
    let b64 = |raw: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    for token in ["!!", &b64("18446744073709551615:x"), &b64("-1:x"), &"A".repeat(100_000)] {
        let result = admin.clone().list_administrators(list(10, token, "")).await;
        assert_invalid(result, "page_token", "not a token");
    }
    // Filters: more terms than the bound, however valid each is, and thousands of them. Before
    // the bound each term was one SQL condition: 1,200 were INTERNAL on SQLite (its expression
    // depth), 40,000 overflowed a worker thread's stack and aborted the server on both backends.
    for (terms, bound) in
        [(9, "at most 8 terms"), (5000, "at most 2048 bytes"), (40_000, "at most 2048 bytes")]
    {
        let filter = vec!["billing = false"; terms].join(" AND ");
        let result = admin.clone().list_administrators(list(10, "", &filter)).await;
        assert_invalid(result, "filter", bound);
        let audit = vec!["result = RESULT_DENIED"; terms].join(" AND ");
        let result = owner
            .client
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                parent: owner.org.clone(),
                filter: audit,
                ..Default::default()
            })
            .await;
        assert_invalid(result, "filter", bound);
    }
    let at_bound = ["billing = false"; 8].join(" AND ");
    admin.clone().list_administrators(list(10, "", &at_bound)).await.unwrap();
    assert_invalid(
        admin.clone().list_administrators(list(10, "", &"x".repeat(5000))).await,
        "filter",
        "at most 2048 bytes",
    );
    // Batches: over their bound, refused before any item is looked at.
    let names = vec![owner.admin.clone(); 101];
    let result = admin
        .clone()
        .batch_delete_administrators(BatchDeleteAdministratorsRequest {
            parent: owner.org.clone(),
            names,
            validate_only: true,
        })
        .await;
    assert_invalid(result, "names", "1 to 100");
    let check = CheckAccessRequest { principal: owner.admin.clone(), ..Default::default() };
    let result = owner
        .client
        .commands()
        .batch_check_access(BatchCheckAccessRequest {
            parent: owner.org.clone(),
            requests: vec![check; 101],
        })
        .await;
    assert_invalid(result, "requests", "1 to 100");
    for (file, bytes) in corpus("filters") {
        let filter = String::from_utf8_lossy(&bytes).into_owned();
        let result = admin.clone().list_administrators(list(10, "", &filter)).await;
        if file.starts_with("refused-") {
            let status = result.expect_err(&format!("filters/{file} accepted"));
            assert_eq!(status.code(), Code::InvalidArgument, "filters/{file}: {status:?}");
        } else if let Err(status) = result {
            assert_eq!(status.code(), Code::InvalidArgument, "filters/{file}: {status:?}");
        }
    }
    still_serving(&owner, 1).await;
});

backend_test!(oversized_messages_and_metadata_are_refused, |stack| async move {
    let owner = stack.owner().await;
    let limit = stack.config().server.max_message_bytes;
    // A message over the limit: tonic answers OUT_OF_RANGE, naming the limit.
    let command = CreateCommandRequest {
        parent: owner.org.clone(),
        command: Some(Command {
            display_name: "big".into(),
            script: "x".repeat(limit + 1),
            interpreter: Interpreter::Sh as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = owner.client.commands().create_command(command).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    // Metadata over the HTTP/2 header list limit (hyper's 16 KiB) never reaches a handler: h2
    // answers 431, which gRPC clients report as UNKNOWN naming the HTTP status. Past a megabyte,
    // by timing, h2 either refuses the stream while the client still writes it (UNKNOWN, broken
    // pipe) or ends the connection for its flood of CONTINUATION frames (GOAWAY
    // ENHANCE_YOUR_CALM, RESOURCE_EXHAUSTED).
    let public = channel(&stack, &stack.url(ServiceKind::Admin)).await;
    for (size, expected) in [
        (20 << 10, &[(Code::Unknown, "HTTP status code 431")][..]),
        (
            1 << 20,
            &[(Code::Unknown, "transport error"), (Code::ResourceExhausted, "http2 error")][..],
        ),
    ] {
        let mut metadata = bearer(&owner.tokens.access_token);
        metadata.push(("x-junk", "j".repeat(size)));
        let result = raw_call(
            &public,
            "/steward.admin.v1.AdminService/GetProfile",
            &metadata,
            GetProfileRequest {}.encode_to_vec(),
        )
        .await;
        let status = result.expect_err("oversized metadata was accepted");
        assert!(
            expected
                .iter()
                .any(|(code, says)| status.code() == *code && status.message().contains(says)),
            "{size} bytes of metadata: {status:?}"
        );
    }
    // The server serves on (on a new connection: the flood may have ended the old one).
    let public = channel(&stack, &stack.url(ServiceKind::Admin)).await;
    let profile = raw_call(
        &public,
        "/steward.admin.v1.AdminService/GetProfile",
        &bearer(&owner.tokens.access_token),
        GetProfileRequest {}.encode_to_vec(),
    )
    .await;
    assert!(profile.is_ok(), "{profile:?}");
    still_serving(&owner, 1).await;
});

/// Registers an agent with a fresh connect key; answers its credential.
async fn register_agent(stack: &Stack, owner: &Owner) -> String {
    let (_, key) = crate::agent::connect_key(owner).await;
    let channel = channel(stack, &stack.url(ServiceKind::Commands)).await;
    AgentServiceClient::new(channel)
        .register_agent(RegisterAgentRequest {
            connect_key: key,
            hostname: "fuzz-host".into(),
            os: "linux".into(),
            agent_version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .credential
}

/// Opens an agent stream with `credential`, sends `messages` (raw bytes each), and answers how
/// the stream ended: its status, `OK` when it ended cleanly.
async fn agent_stream(stack: &Stack, credential: &str, messages: Vec<Vec<u8>>) -> Status {
    let channel = channel(stack, &stack.url(ServiceKind::Commands)).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // Keep the request side open until the server answers, so the end is the server's.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(messages.len() + 1);
    for message in messages {
        tx.send(message).await.unwrap();
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {credential}").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/steward.commands.v1.AgentService/OpenStream");
    let response = match grpc.streaming(request, path, Raw).await {
        Ok(response) => response,
        Err(status) => return status,
    };
    let mut inbound = response.into_inner();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Status::ok(""),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream did not end within 20 s");
    drop(tx);
    ended
}

fn hello() -> Vec<u8> {
    OpenStreamRequest {
        message: Some(AgentMessage::Hello(Hello { agent_version: "1.0.0".into() })),
    }
    .encode_to_vec()
}

backend_test!(agent_streams_end_invalid_argument_on_malformed_messages, |stack| async move {
    let owner = stack.owner().await;
    let credential = register_agent(&stack, &owner).await;
    for (file, bytes) in corpus("agent_messages") {
        let status = agent_stream(&stack, &credential, vec![hello(), bytes]).await;
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::InvalidArgument, "INVALID_ARGUMENT"),
            "agent_messages/{file}: {status:?}"
        );
    }
    // A report before Hello is refused too.
    let heartbeat = OpenStreamRequest {
        message: Some(AgentMessage::Output(OutputChunk {
            run: format!("{}/runs/r", owner.org),
            stream: 1,
            data: b"x".to_vec(),
            ..Default::default()
        })),
    };
    let status = agent_stream(&stack, &credential, vec![heartbeat.encode_to_vec()]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A message over the size limit ends the stream with tonic's OUT_OF_RANGE.
    let limit = stack.config().server.max_message_bytes;
    let big = OpenStreamRequest {
        message: Some(AgentMessage::Output(OutputChunk {
            run: format!("{}/runs/r", owner.org),
            stream: 1,
            data: vec![b'x'; limit + 1],
            ..Default::default()
        })),
    };
    let status = agent_stream(&stack, &credential, vec![hello(), big.encode_to_vec()]).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The agent can still connect and the service still answers: a stream of valid messages
    // stays open until the agent leaves.
    let channel = channel(&stack, &stack.url(ServiceKind::Commands)).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    tx.send(hello()).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {credential}").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/steward.commands.v1.AgentService/OpenStream");
    let mut inbound = grpc.streaming(request, path, Raw).await.unwrap().into_inner();
    let open = tokio::time::timeout(std::time::Duration::from_millis(500), inbound.message()).await;
    assert!(open.is_err(), "a valid stream ended: {open:?}");
    drop(tx);
    still_serving(&owner, 1).await;
});

// A ListRuns page carries at most 5,000 per-system results however many runs it may hold
// (1,000 runs of 1,000 systems would be a million): six runs on 1,000 systems come five, then
// one, whatever the page size asked.
backend_test!(list_runs_pages_are_bounded_by_their_results, |stack| async move {
    use steward_proto::commands::v1::{ListRunsRequest, RunCommandRequest};
    let owner = stack.owner().await;
    let (_, key) = crate::agent::connect_key(&owner).await;
    let url = stack.url(ServiceKind::Commands);
    let mut registering = tokio::task::JoinSet::new();
    let mut systems = Vec::new();
    for batch in 0..20 {
        let (url, key) = (url.clone(), key.clone());
        registering.spawn(async move {
            let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
            let mut agents = AgentServiceClient::new(channel);
            let mut names = Vec::new();
            for i in 0..50 {
                let registered = agents
                    .register_agent(RegisterAgentRequest {
                        connect_key: key.clone(),
                        hostname: format!("host-{batch}-{i}"),
                        os: "linux".into(),
                        agent_version: "e2e".into(),
                    })
                    .await
                    .unwrap();
                names.push(registered.into_inner().system.unwrap().name);
            }
            names
        });
    }
    while let Some(names) = registering.join_next().await {
        systems.extend(names.unwrap());
    }
    assert_eq!(systems.len(), 1000);
    let command = crate::agent::command_on(&owner, &systems, "true", 60).await;
    for _ in 0..6 {
        let run = RunCommandRequest {
            command: command.clone(),
            systems: vec![],
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        owner.client.commands().run_command(run).await.unwrap();
    }
    let page = |page_token: String| {
        let request = ListRunsRequest {
            parent: owner.org.clone(),
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let mut client = owner.client.commands();
        async move { client.list_runs(request).await.unwrap().into_inner() }
    };
    let first = page(String::new()).await;
    let held: Vec<usize> = first.runs.iter().map(|r| r.results.len()).collect();
    assert_eq!(held, [1000; 5], "five runs of 1,000 results fit in 5,000");
    assert!(!first.next_page_token.is_empty());
    let second = page(first.next_page_token).await;
    assert_eq!(second.runs.iter().map(|r| r.results.len()).collect::<Vec<_>>(), [1000]);
    assert!(second.next_page_token.is_empty());
    let mut seen: Vec<String> =
        first.runs.iter().chain(&second.runs).map(|r| r.name.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6, "every run once");
});
