//! The role matrix: every RPC of every service's descriptor, called as anonymous, as a service,
//! as a member of every built-in role with and without billing and of an organization's own
//! role, as service accounts, and as an Administrator of another organization; each outcome is checked against the
//! permissions the roles are served with (`RoleService`) and the rule each RPC declares.

use prost::bytes::{Buf, BufMut};
use prost::Message;
use steward_proto::admin::v1::Role;
use steward_runtime::roles::{rule_for, Access};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::harness::{reason, Stack};

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
        ("ServiceAccountKey", "serviceAccounts/s1/keys/k1"),
        ("ServiceAccount", "serviceAccounts/s1"),
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
        ("parent", Some(c)) if c.starts_with("serviceAccounts/s1/keys") => {
            format!("{org}/serviceAccounts/s1")
        }
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
    /// A signed-in member holding a built-in role, with or without billing access.
    Member(Role, bool),
    /// A service account holding a role (without billing access), signed in with an API key.
    ServiceAccount(Role),
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
            "PEOPLE_ONLY",
        ]
        .contains(&reason.as_str())
        {
            return Some(reason);
        }
    }
    None
}

/// What the layer must answer for `who` calling `path`: `None` means the call must get past the
/// layer (the handler then answers whatever it answers). For members the answer follows from
/// the permissions their role is *served* with (`RoleService.ListRoles`) and the billing flag,
/// not from the Rust table the layer reads: the contract and the enforcement are compared.
fn expected(
    path: &str,
    who: Who,
    served: &std::collections::HashMap<i32, Vec<String>>,
) -> Option<&'static str> {
    let access = rule_for(path).unwrap();
    match (access, who) {
        (Access::Public | Access::Agent, _) => None,
        (Access::Internal, Who::Service) => None,
        (Access::Internal, Who::Anonymous) => Some("UNAUTHENTICATED"),
        (Access::Internal, Who::Member(..) | Who::ServiceAccount(_)) => {
            Some("SERVICE_CREDENTIAL_REQUIRED")
        }
        (_, Who::Anonymous | Who::Service) => Some("UNAUTHENTICATED"),
        (Access::Enrollment, Who::ServiceAccount(_)) => Some("PEOPLE_ONLY"),
        (_, Who::ServiceAccount(role)) => {
            let permission = steward_proto::authz::rule(path).and_then(|r| r.permission).unwrap();
            if steward_runtime::roles::PEOPLE_ONLY.contains(&permission) {
                return Some("PEOPLE_ONLY");
            }
            expected(path, Who::Member(role, false), served)
        }
        (_, Who::Member(role, billing)) => {
            let permission = steward_proto::authz::rule(path).and_then(|r| r.permission).unwrap();
            let name = steward_runtime::roles::permission_name(permission);
            if name.starts_with("billing.") {
                return (!billing).then_some("BILLING_REQUIRED");
            }
            let held = served[&(role as i32)].iter().any(|p| p == name);
            (!held).then_some("ROLE_REQUIRED")
        }
    }
}

/// The access token an API key is exchanged for.
async fn exchange_token(stack: &Stack, api_key: &str) -> String {
    use steward_proto::auth::v1::ExchangeApiKeyRequest;
    let client = stack.client().await;
    let request = ExchangeApiKeyRequest { api_key: api_key.to_string() };
    let answer = client.auth().exchange_api_key(request).await.unwrap().into_inner();
    answer.tokens.unwrap().access_token
}

backend_test!(every_rpc_follows_the_role_table, |stack| async move {
    use steward_proto::admin::v1::ListRolesRequest;
    let stack: Stack = stack;
    let owner = stack.owner().await; // Administrator with billing.
    let stranger = stack.owner().await; // Administrator (with billing) of another organization.
    let mut served: std::collections::HashMap<i32, Vec<String>> = owner
        .client
        .roles()
        .list_roles(ListRolesRequest {})
        .await
        .unwrap()
        .into_inner()
        .roles
        .into_iter()
        .map(|r| (r.role, r.permissions))
        .collect();
    assert_eq!(served.len(), 5, "five built-in roles: {served:?}");
    // And an organization's own role, mixing reads and mutations of several services.
    let custom = crate::custom_roles::create_role(
        &owner.client,
        &owner.org,
        "matrix",
        &["audit.read", "systems.update", "commands.create", "administrators.invite"],
    )
    .await
    .unwrap();
    served.insert(Role::Custom as i32, custom.permissions.clone());

    // The internal listener serves every RPC (the public one refuses the internal ones before
    // authentication: checked after the matrix).
    let channel = tonic::transport::Channel::from_shared(
        stack.internal_url(steward_server::ServiceKind::Admin),
    )
    .unwrap()
    .connect()
    .await
    .unwrap();
    let public =
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
    let mut callers = vec![(Who::Anonymous, None), (Who::Service, service)];
    for role in
        [Role::Administrator, Role::Manager, Role::HelpDesk, Role::ReadOnly, Role::CommandRunner]
    {
        for billing in [true, false] {
            let member = stack.member(&owner, role, billing).await;
            callers.push((Who::Member(role, billing), bearer(&member.tokens.access_token)));
        }
    }
    let (_, holder) = crate::custom_roles::holder_tokens(&stack, &owner, &custom.name).await;
    callers.push((Who::Member(Role::Custom, false), bearer(&holder.access_token)));
    // And service accounts: a Manager and one of the organization's own role.
    for (role, name) in [(Role::Manager, "roles/manager"), (Role::Custom, custom.name.as_str())] {
        let sa = crate::service_accounts::create_account(&owner.client, &owner.org, name, false)
            .await
            .unwrap();
        let (_, key) =
            crate::service_accounts::create_key(&stack, &owner.client, &sa.name, 30).await.unwrap();
        let token = exchange_token(&stack, &key).await;
        callers.push((Who::ServiceAccount(role), bearer(&token)));
    }

    let d = descriptors();
    let mut failures = Vec::new();
    for method in &d.methods {
        let access = rule_for(&method.path).unwrap();
        // Requests name a resource of the owner's organization where the request has a name.
        let body = request_in(&d, method, &owner.org).unwrap_or_default();
        for (who, auth) in &callers {
            let outcome = call(&channel, method, body.clone(), auth.clone()).await;
            let got = outcome.as_ref().err().and_then(layer_reason);
            let want = expected(&method.path, *who, &served);
            if got.as_deref() != want {
                failures.push(format!(
                    "{} as {who:?}: expected {want:?}, got {outcome:?}",
                    method.path
                ));
            }
            // The agent API passes the layer but answers only agents: nobody of the matrix holds
            // a connect key or a system credential, so every call is refused by the handler.
            // On the public listener, no internal RPC is served, whoever calls.
            if access == Access::Internal {
                let outcome = call(&public, method, body.clone(), auth.clone()).await;
                let not_served = outcome.as_ref().err().is_some_and(|s| {
                    s.code() == Code::Unimplemented && reason(s) == "INTERNAL_LISTENER_ONLY"
                });
                if !not_served {
                    failures.push(format!(
                        "{} as {who:?} on the public listener: expected INTERNAL_LISTENER_ONLY, got {outcome:?}",
                        method.path
                    ));
                }
            }
            if access == Access::Agent {
                let code = outcome.as_ref().err().map(|s| s.code());
                let refused = match who {
                    // RegisterAgent may first refuse the empty connect key as invalid.
                    Who::Anonymous | Who::Service if method.name == "RegisterAgent" => {
                        matches!(code, Some(Code::Unauthenticated | Code::InvalidArgument))
                    }
                    Who::Anonymous | Who::Service => code == Some(Code::Unauthenticated),
                    Who::Member(..) | Who::ServiceAccount(_) => {
                        code == Some(Code::PermissionDenied)
                    }
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
    assert_eq!(
        names,
        [
            "roles/administrator",
            "roles/manager",
            "roles/help-desk",
            "roles/read-only",
            "roles/command-runner"
        ]
    );
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
    assert_eq!(&got, roles.roles.last().unwrap());
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
