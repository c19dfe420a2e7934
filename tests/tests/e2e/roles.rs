//! The role matrix: every RPC of every service's descriptor, called as anonymous, as an
//! Administrator with and without billing, as a Command Runner with and without billing, as a
//! service, and as an Administrator of another organization; each outcome is checked against the
//! role table (`steward_runtime::roles`).

use prost::bytes::{Buf, BufMut};
use prost::Message;
use steward_proto::admin::v1::Role;
use steward_runtime::roles::{rule_for, Access};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::harness::Stack;

/// Sends and receives undecoded protobuf bytes, so any method can be called.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

struct Method {
    path: String,
    name: String,
    input: String,
    client_streaming: bool,
    server_streaming: bool,
}

struct Descriptors {
    methods: Vec<Method>,
    messages: std::collections::HashMap<String, prost_types::DescriptorProto>,
}

fn descriptors() -> Descriptors {
    let set = prost_types::FileDescriptorSet::decode(steward_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    let mut messages = std::collections::HashMap::new();
    for file in set.file {
        let package = file.package().to_string();
        for message in &file.message_type {
            messages.insert(format!(".{package}.{}", message.name()), message.clone());
        }
        for service in &file.service {
            for method in &service.method {
                methods.push(Method {
                    path: format!("/{package}.{}/{}", service.name(), method.name()),
                    name: method.name().to_string(),
                    input: method.input_type().to_string(),
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    Descriptors { methods, messages }
}

/// A well-formed resource name of `org` for the `name` / `parent` field of `method`.
fn resource_for(method: &str, field: &str, org: &str) -> String {
    let collection = [
        ("Grant", "commands/c1/grants/g1"),
        ("ConnectKey", "connectKeys/k1"),
        ("System", "systems/s1"),
        ("Run", "runs/r1"),
        ("Role", "roles/r1"),
        ("Command", "commands/c1"),
        ("PaymentCard", "paymentCard"),
        ("Administrator", "administrators/a1"),
        ("ResendInvite", "administrators/a1"),
    ]
    .iter()
    .find(|(key, _)| method.contains(key))
    .map(|(_, c)| *c);
    match (field, collection) {
        ("parent", Some(c)) if c.starts_with("commands/c1/grants") => format!("{org}/commands/c1"),
        ("parent", _) => org.to_string(),
        ("name", Some(c)) => format!("{org}/{c}"),
        _ => org.to_string(),
    }
}

/// Encodes a request whose `name` or `parent` (possibly inside the resource message of an update)
/// names a resource of `org`; `None` when the request has no such field.
fn request_in(d: &Descriptors, method: &Method, org: &str) -> Option<Vec<u8>> {
    let input = d.messages.get(&method.input)?;
    let string_field = |message: &prost_types::DescriptorProto| {
        message
            .field
            .iter()
            .find(|f| {
                (f.name() == "name" || f.name() == "parent")
                    && f.r#type() == prost_types::field_descriptor_proto::Type::String
                    && f.label() != prost_types::field_descriptor_proto::Label::Repeated
            })
            .cloned()
    };
    let mut buf = Vec::new();
    if let Some(field) = string_field(input) {
        let value = resource_for(&method.name, field.name(), org);
        prost::encoding::string::encode(field.number() as u32, &value, &mut buf);
        return Some(buf);
    }
    for field in &input.field {
        if field.r#type() != prost_types::field_descriptor_proto::Type::Message {
            continue;
        }
        let Some(inner) = d.messages.get(field.type_name()) else { continue };
        if let Some(inner_field) = string_field(inner) {
            let mut nested = Vec::new();
            let value = resource_for(&method.name, inner_field.name(), org);
            prost::encoding::string::encode(inner_field.number() as u32, &value, &mut nested);
            prost::encoding::bytes::encode(field.number() as u32, &nested, &mut buf);
            return Some(buf);
        }
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    Service,
    AdminBilling,
    AdminNoBilling,
    RunnerBilling,
    RunnerNoBilling,
}

async fn call(
    channel: &tonic::transport::Channel,
    method: &Method,
    body: Vec<u8>,
    auth: Option<(&'static str, String)>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path: http::uri::PathAndQuery = method.path.parse().unwrap();
    fn decorate<T>(
        mut request: tonic::Request<T>,
        auth: &Option<(&'static str, String)>,
    ) -> tonic::Request<T> {
        if let Some((key, value)) = auth {
            request.metadata_mut().insert(*key, MetadataValue::try_from(value.as_str()).unwrap());
        }
        request.set_timeout(std::time::Duration::from_secs(10));
        request
    }
    match (method.client_streaming, method.server_streaming) {
        (false, false) => {
            grpc.unary(decorate(tonic::Request::new(body), &auth), path, RawCodec).await.map(|_| ())
        }
        (false, true) => {
            let mut stream = grpc
                .server_streaming(decorate(tonic::Request::new(body), &auth), path, RawCodec)
                .await?
                .into_inner();
            stream.message().await.map(|_| ())
        }
        (true, _) => {
            let requests = futures::stream::iter(vec![body]);
            let mut stream = grpc
                .streaming(decorate(tonic::Request::new(requests), &auth), path, RawCodec)
                .await?
                .into_inner();
            stream.message().await.map(|_| ())
        }
    }
}

const LAYER_UNAUTHENTICATED: &[&str] = &[
    "missing bearer access token",
    "invalid or expired access token",
    "this RPC accepts only a service credential",
    "invalid service credential",
];

fn layer_reason(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    if status.code() == Code::Unauthenticated && LAYER_UNAUTHENTICATED.contains(&status.message()) {
        return Some("UNAUTHENTICATED".into());
    }
    if status.code() == Code::PermissionDenied {
        let reason = status.get_error_details().error_info().map(|i| i.reason.clone())?;
        if [
            "ROLE_REQUIRED",
            "BILLING_REQUIRED",
            "NO_ACCESS_RULE",
            "MFA_ENROLLMENT_REQUIRED",
            "SERVICE_CREDENTIAL_REQUIRED",
        ]
        .contains(&reason.as_str())
        {
            return Some(reason);
        }
    }
    None
}

/// What the layer must answer for `who` calling an RPC with rule `access`: `None` means the call
/// must get past the layer (the handler then answers whatever it answers).
fn expected(access: Access, who: Who) -> Option<&'static str> {
    use Who::*;
    match (access, who) {
        (Access::Public | Access::Agent, _) => None,
        (Access::Internal, Service) => None,
        (Access::Internal, Anonymous) => Some("UNAUTHENTICATED"),
        (Access::Internal, _) => Some("SERVICE_CREDENTIAL_REQUIRED"),
        (_, Anonymous | Service) => Some("UNAUTHENTICATED"),
        (Access::Enrollment | Access::AnyRole, _) => None,
        (Access::Administrator, AdminBilling | AdminNoBilling) => None,
        (Access::Administrator, RunnerBilling | RunnerNoBilling) => Some("ROLE_REQUIRED"),
        (Access::Billing, AdminBilling | RunnerBilling) => None,
        (Access::Billing, AdminNoBilling | RunnerNoBilling) => Some("BILLING_REQUIRED"),
    }
}

backend_test!(every_rpc_follows_the_role_table, |stack| async move {
    let stack: Stack = stack;
    let owner = stack.owner().await; // Administrator with billing.
    let admin_plain = stack.member(&owner, Role::Administrator, false).await;
    let runner_billing = stack.member(&owner, Role::CommandRunner, true).await;
    let runner_plain = stack.member(&owner, Role::CommandRunner, false).await;
    let stranger = stack.owner().await; // Administrator (with billing) of another organization.

    let channel =
        tonic::transport::Channel::from_shared(stack.url(steward_server::ServiceKind::Admin))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let bearer = |t: &str| Some(("authorization", format!("Bearer {t}")));
    let service = Some((
        steward_runtime::authn::SERVICE_CREDENTIAL_HEADER,
        stack.service_token().to_string(),
    ));
    let callers = [
        (Who::Anonymous, None),
        (Who::Service, service),
        (Who::AdminBilling, bearer(&owner.tokens.access_token)),
        (Who::AdminNoBilling, bearer(&admin_plain.tokens.access_token)),
        (Who::RunnerBilling, bearer(&runner_billing.tokens.access_token)),
        (Who::RunnerNoBilling, bearer(&runner_plain.tokens.access_token)),
    ];

    let d = descriptors();
    let mut failures = Vec::new();
    for method in &d.methods {
        let access = rule_for(&method.path).unwrap();
        // Requests name a resource of the owner's organization where the request has a name.
        let body = request_in(&d, method, &owner.org).unwrap_or_default();
        for (who, auth) in &callers {
            let outcome = call(&channel, method, body.clone(), auth.clone()).await;
            let got = outcome.as_ref().err().and_then(layer_reason);
            let want = expected(access, *who);
            if got.as_deref() != want {
                failures.push(format!(
                    "{} as {who:?}: expected {want:?}, got {outcome:?}",
                    method.path
                ));
            }
            // The agent API passes the layer but answers only agents: nobody of the matrix holds
            // a connect key or a system credential, so every call is refused by the handler.
            if access == Access::Agent {
                let code = outcome.as_ref().err().map(|s| s.code());
                let refused = match who {
                    // RegisterAgent may first refuse the empty connect key as invalid.
                    Who::Anonymous | Who::Service if method.name == "RegisterAgent" => {
                        matches!(code, Some(Code::Unauthenticated | Code::InvalidArgument))
                    }
                    Who::Anonymous | Who::Service => code == Some(Code::Unauthenticated),
                    _ => code == Some(Code::PermissionDenied),
                };
                if !refused {
                    failures.push(format!(
                        "{} as {who:?}: the agent API must refuse, got {outcome:?}",
                        method.path
                    ));
                }
            }
        }
        // An Administrator of another organization naming this organization's resources.
        if matches!(access, Access::AnyRole | Access::Administrator | Access::Billing) {
            if let Some(body) = request_in(&d, method, &owner.org) {
                let outcome =
                    call(&channel, method, body, bearer(&stranger.tokens.access_token)).await;
                let denied = outcome.as_ref().err().is_some_and(|s| {
                    use tonic_types::StatusExt;
                    s.code() == Code::PermissionDenied
                        && s.get_error_details()
                            .error_info()
                            .is_some_and(|i| i.reason == "WRONG_ORGANIZATION")
                });
                if !denied {
                    failures.push(format!(
                        "{} by another organization's Administrator: expected WRONG_ORGANIZATION, got {outcome:?}",
                        method.path
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} role-table violations:\n{}",
        failures.len(),
        failures.join("\n")
    );
});

backend_test!(the_permission_catalog_is_served_from_the_contract, |stack| async move {
    use steward_proto::admin::v1::ListPermissionsRequest;
    let owner = stack.owner().await;
    let runner = stack.member(&owner, Role::CommandRunner, false).await;
    for client in [&owner.client, &runner.client] {
        let served =
            client.roles().list_permissions(ListPermissionsRequest {}).await.unwrap().into_inner();
        let names: Vec<&str> = served.permissions.iter().map(|p| p.name.as_str()).collect();
        let declared: Vec<&str> =
            steward_proto::authz::PERMISSIONS.iter().map(|entry| entry.name).collect();
        assert_eq!(names, declared);
        let create = served.permissions.iter().find(|p| p.name == "administrators.create").unwrap();
        assert_eq!(create.methods, ["/steward.admin.v1.AdminService/CreateAdministrator"]);
        assert!(!create.description.is_empty());
        // Every administrator-facing RPC needs exactly one permission of the catalog.
        let needed: usize = served.permissions.iter().map(|p| p.methods.len()).sum();
        let principal_rpcs =
            steward_proto::authz::RULES.iter().filter(|rule| rule.permission.is_some()).count();
        assert_eq!(needed, principal_rpcs);
    }
    let anonymous =
        steward_proto::client::Steward::connect(&stack.url(steward_server::ServiceKind::Admin))
            .await
            .unwrap();
    let refused = anonymous.roles().list_permissions(ListPermissionsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
});

backend_test!(built_in_roles_are_served_with_their_permissions, |stack| async move {
    use steward_proto::admin::v1::{GetRoleRequest, ListRolesRequest};
    let owner = stack.owner().await;
    let runner = stack.member(&owner, Role::CommandRunner, false).await;
    let roles = runner.client.roles().list_roles(ListRolesRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = roles.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["roles/administrator", "roles/command-runner"]);
    let administrator = &roles.roles[0];
    assert_eq!(administrator.role, Role::Administrator as i32);
    assert!(administrator.permissions.iter().any(|p| p == "administrators.delete"));
    assert!(!administrator.permissions.iter().any(|p| p.starts_with("billing.")));
    let got = owner
        .client
        .roles()
        .get_role(GetRoleRequest { name: "roles/command-runner".into() })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert_eq!(got, roles.roles[1]);
    assert!(got.permissions.iter().any(|p| p == "commands.run"));
    assert!(!got.permissions.iter().any(|p| p == "commands.create"));
    // What a role lists is what the layer lets it do: a Command Runner lacks commands.create.
    let refused = runner
        .client
        .commands()
        .create_command(steward_proto::commands::v1::CreateCommandRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("commands.create"), "{}", refused.message());
    let unknown = owner
        .client
        .roles()
        .get_role(GetRoleRequest { name: "roles/auditor".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed =
        owner.client.roles().get_role(GetRoleRequest { name: "auditor".into() }).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
});
