//! What operators rely on: request ids joining errors, responses and the audit log; liveness
//! that outlives a database outage while readiness follows it; connections told to go away by
//! age; a hung peer.

use std::time::Duration;

use steward_proto::admin::v1::Role;
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, GetAdministratorRequest, ListAdministratorsRequest,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_server::ServiceKind;
use steward_storage::testing::Backend;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

use crate::harness::Stack;

fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", id.parse().unwrap());
    request
}

fn request_info(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .request_info()
        .map(|info| info.request_id.clone())
        .unwrap_or_default()
}

crate::backend_test!(request_ids_join_errors_responses_and_the_audit_log, |stack| async move {
    let owner = stack.owner().await;

    // An error carries the caller's id in RequestInfo and the response header.
    let missing = format!("{}/administrators/0000000000000000000000000000", owner.org);
    let err = owner
        .client
        .admin()
        .get_administrator(with_request_id(
            GetAdministratorRequest { name: missing.clone() },
            "req-e2e-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(request_info(&err), "req-e2e-1", "{err:?}");
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "req-e2e-1");

    // Without one, the server's id is the same in both places; an unusable one is replaced.
    for sent in [None, Some("has spaces and is not kept")] {
        let request = GetAdministratorRequest { name: missing.clone() };
        let request = match sent {
            Some(id) => with_request_id(request, id),
            None => tonic::Request::new(request),
        };
        let err = owner.client.admin().get_administrator(request).await.unwrap_err();
        let generated = request_info(&err);
        assert_eq!(generated.len(), 36, "a UUID: {generated:?}");
        assert_eq!(err.metadata().get("x-request-id").unwrap().to_str().unwrap(), generated);
    }
    // Refusals by the authentication layer too.
    let anonymous = stack.client().await;
    let err = anonymous
        .admin()
        .get_administrator(with_request_id(GetAdministratorRequest { name: missing }, "req-e2e-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(request_info(&err), "req-e2e-2");

    // A success answers with the id, and its audit event records it.
    let created = owner
        .client
        .admin()
        .create_administrator(with_request_id(
            CreateAdministratorRequest {
                parent: owner.org.clone(),
                administrator: Some(Administrator {
                    email: "traced@example.com".into(),
                    role: Role::ReadOnly as i32,
                    ..Default::default()
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
            },
            "req-e2e-3",
        ))
        .await
        .unwrap();
    assert_eq!(created.metadata().get("x-request-id").unwrap(), "req-e2e-3");
    let mut recorded = Vec::new();
    for _ in 0..100 {
        recorded = owner
            .client
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                parent: owner.org.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .audit_events
            .into_iter()
            .filter(|event| event.request_id == "req-e2e-3")
            .collect();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(recorded.len(), 1, "one audit event carries the request id");
    assert!(recorded[0].action.ends_with("CreateAdministrator"), "{:?}", recorded[0]);
});

async fn health_status(url: &str, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await;
    let Ok(channel) = channel else { return -1 };
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map_or(-1, |reply| reply.into_inner().status)
}

/// Polls until the health of `service` at `url` is `want` (1 SERVING, 2 NOT_SERVING).
async fn wait_for_health(url: &str, service: &str, want: i32) {
    for _ in 0..300 {
        if health_status(url, service).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service:?} at {url} never reached status {want}");
}

/// A TCP proxy to a local port that can be cut (every connection dropped, new ones refused)
/// and restored on the same address.
struct Proxy {
    addr: std::net::SocketAddr,
    upstream: u16,
    accepting: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Self { addr, upstream, accepting: None };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        self.accepting = Some(tokio::spawn(async move {
            // Dropped with this task: aborting it closes every proxied connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(task) = self.accepting.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// `message` with a deadline of `secs` seconds (sent as `grpc-timeout`).
fn within<T>(message: T, secs: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(secs));
    request
}

fn administrator(owner: &crate::harness::Owner, email: &str) -> CreateAdministratorRequest {
    CreateAdministratorRequest {
        parent: owner.org.clone(),
        administrator: Some(Administrator {
            email: email.into(),
            role: Role::ReadOnly as i32,
            ..Default::default()
        }),
        request_id: uuid::Uuid::new_v4().to_string(),
    }
}

// A database outage under a mixed load: calls fail fast with UNAVAILABLE (before a 2 s client
// deadline, never INTERNAL, never the driver's text); readiness turns NOT_SERVING while liveness stays SERVING
// (a restarted pod would not bring the database back); once the database is back the service
// answers again within 5 s without a restart, and every write acknowledged, before or during the
// outage, is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_calls_fast_and_the_service_recovers_alone() {
    if !crate::harness::postgres_available() {
        return;
    }
    // The services reach PostgreSQL through a proxy the test can cut, as a stopped server.
    let mut proxy = Proxy::start(5432).await;
    let port = proxy.addr.port();
    let stack = Stack::start_with(Backend::Postgres, move |config| {
        assert!(config.database.url.contains(":5432/"), "{}", config.database.url);
        config.database.url = config.database.url.replace(":5432/", &format!(":{port}/"));
    })
    .await;
    let url = stack.url(ServiceKind::Admin);
    let owner = stack.owner().await;
    assert_eq!(health_status(&url, "").await, 1);
    assert_eq!(health_status(&url, "liveness").await, 1);
    let before = owner
        .client
        .admin()
        .create_administrator(administrator(&owner, "before-the-outage@example.com"))
        .await
        .unwrap()
        .into_inner();

    // A mixed load runs through the outage: callers without the SDK's retries, each call with a
    // 2 s deadline, alternating reads and writes.
    let raw = owner.client.clone().with_retry_policy(None).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let (client, org, stop) = (raw.clone(), owner.org.clone(), stop.clone());
        load.spawn(async move {
            let (mut created, mut codes) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let answer = if n % 2 == 0 {
                    let request =
                        ListAdministratorsRequest { parent: org.clone(), ..Default::default() };
                    client.admin().list_administrators(within(request, 2)).await.map(|_| None)
                } else {
                    let email = format!("load-{worker}-{n}@example.com");
                    let request = CreateAdministratorRequest {
                        parent: org.clone(),
                        administrator: Some(Administrator {
                            email,
                            role: Role::ReadOnly as i32,
                            ..Default::default()
                        }),
                        request_id: uuid::Uuid::new_v4().to_string(),
                    };
                    client
                        .admin()
                        .create_administrator(within(request, 2))
                        .await
                        .map(|reply| reply.into_inner().administrator.map(|a| a.name))
                };
                match answer {
                    Ok(Some(name)) => created.push(name),
                    Ok(None) => {}
                    Err(status) => {
                        codes.push((status.code(), status.message().to_string()));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (created, codes)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // PostgreSQL goes away: every connection drops and new ones are refused.
    proxy.cut().await;
    // Reads and writes: UNAVAILABLE before a 2 s deadline could pass (the server's answer, so
    // without the SDK's retries).
    for attempt in 0..3 {
        let read = raw
            .admin()
            .list_administrators(within(
                ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() },
                2,
            ))
            .await
            .unwrap_err();
        assert_eq!(read.code(), Code::Unavailable, "read {attempt}: {read:?}");
        assert!(!read.message().contains("sqlx") && !read.message().contains("5432"), "{read:?}");
        let write = raw
            .admin()
            .create_administrator(within(administrator(&owner, "during@example.com"), 2))
            .await
            .unwrap_err();
        assert_eq!(write.code(), Code::Unavailable, "write {attempt}: {write:?}");
    }
    wait_for_health(&url, "", 2).await;
    wait_for_health(&url, "steward.admin.v1.AdminService", 2).await;
    assert_eq!(health_status(&url, "liveness").await, 1, "liveness ignores the database");

    proxy.restore().await;
    let back = std::time::Instant::now();
    let listed = loop {
        let answer = owner
            .client
            .admin()
            .list_administrators(within(
                ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() },
                3,
            ))
            .await;
        match answer {
            Ok(reply) => break reply.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(back.elapsed() < Duration::from_secs(5), "not back within 5 s: {status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The load's callers only ever saw UNAVAILABLE, never a deadline, INTERNAL or driver text;
    // and every write acknowledged to them, before or during the outage, is there.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = vec![before.administrator.unwrap().name];
    let mut failures = 0;
    while let Some(worker) = load.join_next().await {
        let (created, codes) = worker.unwrap();
        acknowledged.extend(created);
        for (code, message) in codes {
            assert_eq!(code, Code::Unavailable, "a loaded call failed otherwise: {message}");
            assert!(!message.contains("sqlx") && !message.contains("5432"), "{message}");
            failures += 1;
        }
    }
    assert!(failures > 0, "the load met the outage");
    // Listed afresh once the load has stopped (writes made while paging could shift the pages).
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = owner
            .client
            .admin()
            .list_administrators(ListAdministratorsRequest {
                parent: owner.org.clone(),
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.administrators.iter().map(|a| a.name.clone()));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    for name in &acknowledged {
        assert!(names.contains(name), "acknowledged but lost: {name}");
    }
    assert!(!listed.administrators.iter().any(|a| a.email == "during@example.com"));
    wait_for_health(&url, "", 1).await;
    assert_eq!(health_status(&url, "liveness").await, 1);
}

// server.max_connection_age_secs: a connection past its age gets an HTTP/2 GOAWAY with NO_ERROR
// (new calls then open a new connection, to any replica), read here frame by frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_age_are_told_to_go_away() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start_with(Backend::Sqlite, |config| {
        config.server.max_connection_age_secs = 1;
    })
    .await;
    let addr = stack.url(ServiceKind::Admin).trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The client preface and an empty SETTINGS frame.
    socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let goaway = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut header = [0u8; 9];
            socket.read_exact(&mut header).await.unwrap();
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            socket.read_exact(&mut payload).await.unwrap();
            match (header[3], header[4]) {
                // SETTINGS from the server: acknowledge it.
                (4, 0) => socket.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap(),
                (7, _) => return payload,
                _ => {}
            }
        }
    })
    .await
    .expect("a GOAWAY frame within 20 s");
    let error_code = u32::from_be_bytes([goaway[4], goaway[5], goaway[6], goaway[7]]);
    assert_eq!(error_code, 0, "NO_ERROR: a graceful go-away, not a protocol error");
}

/// A peer that accepts connections and never answers (a hung process, SIGSTOP).
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

// A hung peer: the commands service asks the admin service about its caller, which never
// answers. The peer call gets the caller's deadline less a margin, so the caller hears a
// retryable UNAVAILABLE with RetryInfo before its own deadline, not INTERNAL, not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_is_unavailable_within_the_callers_deadline() {
    use steward_proto::commands::v1::ListCommandsRequest;
    let mut stack = Stack::start(Backend::Sqlite).await;
    let owner = stack.owner().await;
    let hung = black_hole().await;
    let url = stack
        .add_server(vec![ServiceKind::Commands], |config| config.internal.admin_url = hung)
        .await;
    let client = steward_proto::client::Steward::connect(url)
        .await
        .unwrap()
        .with_token(&owner.tokens.access_token)
        .unwrap();
    let mut request = tonic::Request::new(ListCommandsRequest {
        parent: owner.org.clone(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(3));
    let err = client.commands().list_commands(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let retry = err.get_error_details().retry_info().cloned();
    assert!(retry.and_then(|r| r.retry_delay).is_some(), "RetryInfo: {err:?}");
    assert!(!err.message().contains("127.0.0.1"), "no peer address: {err:?}");
}

// A call past its deadline (the caller's grpc-timeout here) is answered DEADLINE_EXCEEDED by
// Steward's own layer, with its request id: read as a gRPC-Web client over HTTP/1.1 sees it
// (a native gRPC client would give up on its own clock first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_deadline_exceeded_with_its_request_id() {
    use prost::Message;
    use steward_proto::auth::v1::SignInRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start(Backend::Sqlite).await;
    let owner = stack.owner().await;
    // A sign-in hashes a password: far longer than a millisecond.
    let message = SignInRequest {
        email: owner.email.clone(),
        password: crate::harness::PASSWORD.into(),
        organization: String::new(),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&message);
    let addr = stack.url(ServiceKind::Auth).trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /steward.auth.v1.AuthService/SignIn HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\ngrpc-timeout: 1m\r\n\
         x-request-id: req-deadline-1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.contains("grpc-status: 4") || text.contains("grpc-status:4"), "{text}");
    assert!(text.contains("x-request-id: req-deadline-1"), "{text}");
}

// Auth down, and the admin and commands services restarted: they still verify the tokens of the
// keys they fetched before (kept in their cache file), so signed-in callers keep working.
crate::backend_test!(
    restarted_services_verify_tokens_while_auth_is_down,
    start = |backend| Stack::start_split(backend),
    |stack| async move {
        use steward_proto::admin::v1::GetProfileRequest;
        use steward_proto::commands::v1::ListCommandsRequest;
        let mut stack: Stack = stack;
        let owner = stack.owner().await;
        // Each fetches the token keys once while auth is up.
        owner.client.admin().get_profile(GetProfileRequest {}).await.unwrap();
        let commands = stack
            .client_for(ServiceKind::Commands)
            .await
            .with_token(&owner.tokens.access_token)
            .unwrap();
        let list = || ListCommandsRequest { parent: owner.org.clone(), ..Default::default() };
        commands.commands().list_commands(list()).await.unwrap();
        stack.stop_auth().await;
        for kind in [ServiceKind::Admin, ServiceKind::Commands] {
            stack.stop(kind).await;
            stack.restart(kind).await;
        }
        let profile = owner.client.admin().get_profile(GetProfileRequest {}).await;
        assert!(profile.is_ok(), "admin after its restart: {profile:?}");
        let commands = stack
            .client_for(ServiceKind::Commands)
            .await
            .with_token(&owner.tokens.access_token)
            .unwrap();
        let listed = commands.commands().list_commands(list()).await;
        assert!(listed.is_ok(), "commands after its restart: {listed:?}");
    }
);
