//! The foundation's promises, checked from outside: health, reflection, the role table's
//! default-deny, unimplemented RPCs answering clearly, and internal RPCs refusing non-services.

use std::collections::BTreeSet;

use prost::Message;
use steward_storage::testing::Backend;
use tonic::Code;

use crate::harness::{reason, Stack};

/// Every `/package.Service/Method` in Steward's descriptor set.
pub fn all_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(steward_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in set.file {
        let package = file.package().to_string();
        for service in file.service {
            let name = service.name().to_string();
            for method in service.method {
                methods.push(format!("/{package}.{name}/{}", method.name()));
            }
        }
    }
    methods
}

#[test]
fn every_rpc_has_an_access_rule() {
    let methods = all_methods();
    assert!(methods.len() > 50, "descriptor set looks incomplete: {}", methods.len());
    let missing: Vec<_> =
        methods.iter().filter(|m| steward_runtime::roles::rule_for(m).is_none()).collect();
    assert!(missing.is_empty(), "RPCs without an access rule: {missing:?}");
}

#[test]
fn the_generated_rules_are_exactly_the_rpcs_sorted_for_lookup() {
    // The build script decodes the options with its own descriptor structs; this reads the
    // same descriptor set with prost-types, so a method the build skipped shows here.
    let methods: BTreeSet<String> = all_methods().into_iter().collect();
    let paths: Vec<&str> = steward_proto::authz::RULES.iter().map(|rule| rule.path).collect();
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "RULES must be sorted and unique for lookup");
    assert_eq!(paths.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>(), methods);
    for path in &paths {
        assert_eq!(steward_proto::authz::rule(path).map(|r| r.path), Some(*path));
    }
    for (key, _) in steward_runtime::roles::INFRASTRUCTURE {
        assert!(key.starts_with("/grpc.") && key.ends_with('/'), "{key}");
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut long = Vec::new();
    let mut stack = vec![crates];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.components().any(|c| c.as_os_str() == "src")
            {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                if lines > 800 {
                    long.push(format!("{} ({lines})", path.display()));
                }
            }
        }
    }
    assert!(long.is_empty(), "split these along their resources: {long:?}");
}

#[test]
fn every_permission_is_needed_by_an_rpc_and_named_once() {
    let mut names = BTreeSet::new();
    for entry in steward_proto::authz::PERMISSIONS {
        assert!(names.insert(entry.name), "{} is declared twice", entry.name);
        assert!(!entry.description.is_empty(), "{} has no description", entry.name);
        assert!(
            steward_proto::authz::methods(entry.permission).next().is_some(),
            "no RPC needs {}",
            entry.name
        );
    }
}

backend_test!(health_reports_serving_for_every_service, |stack| async move {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel =
        tonic::transport::Channel::from_shared(stack.url(steward_server::ServiceKind::Admin))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = HealthClient::new(channel);
    for service in steward_admin::SERVICES
        .iter()
        .chain(steward_auth::SERVICES)
        .chain(steward_commands::SERVICES)
    {
        let status = health
            .check(HealthCheckRequest { service: service.to_string() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service} is not SERVING");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope.v1.Nope".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
});

backend_test!(internal_rpcs_refuse_administrators_and_strangers, |stack| async move {
    use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
    use steward_proto::admin::v1::LookupAdministratorRequest;
    let owner = stack.owner().await;
    let request = || LookupAdministratorRequest { name: owner.admin.clone() };

    // On the public listener, not even the real service credential is accepted.
    let public = stack.internal_at(&stack.url(steward_server::ServiceKind::Admin)).await;
    let err =
        AdminInternalServiceClient::new(public).lookup_administrator(request()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_eq!(reason(&err), "INTERNAL_LISTENER_ONLY");
    assert!(err.message().contains("server.internal_listen"), "{}", err.message());

    // On the internal listener: no credential at all.
    let channel = tonic::transport::Channel::from_shared(
        stack.internal_url(steward_server::ServiceKind::Admin),
    )
    .unwrap()
    .connect()
    .await
    .unwrap();
    let err = AdminInternalServiceClient::new(channel.clone())
        .lookup_administrator(request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // An Administrator's valid access token is not a service credential.
    let token = format!("Bearer {}", owner.tokens.access_token);
    let mut with_token = tonic::Request::new(request());
    with_token.metadata_mut().insert("authorization", token.parse().unwrap());
    let err = AdminInternalServiceClient::new(channel.clone())
        .lookup_administrator(with_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("service credential"), "{}", err.message());

    // A wrong service credential.
    let mut forged = tonic::Request::new(request());
    forged
        .metadata_mut()
        .insert(steward_runtime::authn::SERVICE_CREDENTIAL_HEADER, "x".repeat(43).parse().unwrap());
    let err =
        AdminInternalServiceClient::new(channel).lookup_administrator(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The real one works.
    let found = AdminInternalServiceClient::new(stack.internal().await)
        .lookup_administrator(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.administrator.unwrap().name, owner.admin);
});

#[tokio::test]
async fn unknown_methods_are_refused_not_routed() {
    // Split, so that the admin process does not serve the other services.
    let stack = Stack::start_split(Backend::Sqlite).await;
    let admin = stack.url(steward_server::ServiceKind::Admin);
    let call = |url: String, path: &'static str| async move {
        let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(path);
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err()
    };
    let cases = [
        ("/steward.admin.v1.AdminService/DropAllTables", "UNKNOWN_METHOD", "DropAllTables"),
        (
            "/steward.auth.v1.AuthService/SignIn",
            "SERVICE_NOT_SERVED",
            "steward.auth.v1.AuthService",
        ),
        ("/evil.v1.Backdoor/Open", "UNKNOWN_SERVICE", "evil.v1.Backdoor"),
        (
            "/steward.admin.v1.AdminInternalService/LookupAdministrator",
            "INTERNAL_LISTENER_ONLY",
            "steward.admin.v1.AdminInternalService",
        ),
    ];
    for (path, expected, named) in cases {
        let err = call(admin.clone(), path).await;
        assert_eq!(err.code(), Code::Unimplemented, "{path}: {err:?}");
        assert_eq!(reason(&err), expected, "{path}");
        assert!(err.message().contains(named), "{path}: {}", err.message());
    }
    // The internal listener serves the internal services, but still only this process's.
    let internal = stack.internal_url(steward_server::ServiceKind::Admin);
    let err = call(internal.clone(), "/steward.auth.v1.AuthInternalService/IssueInvite").await;
    assert_eq!(reason(&err), "SERVICE_NOT_SERVED");
    let err = call(internal, "/steward.admin.v1.AdminInternalService/LookupAdministrator").await;
    assert_eq!(err.code(), Code::Unauthenticated, "served, and refused without the credential");
}

/// The services reflection v1 and v1alpha list at `url` (both must agree).
async fn reflected_services(url: String) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    use tonic_reflection::pb::v1::ServerReflectionRequest as V1Message;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaMessage;

    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    let request = V1Message {
        host: String::new(),
        message_request: Some(V1Request::ListServices(String::new())),
    };
    let mut replies = V1::new(channel.clone())
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let Some(V1Response::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not list services");
    };
    let v1: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();

    let request = AlphaMessage {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut replies = V1Alpha::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let Some(AlphaResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha reflection did not list services");
    };
    let v1alpha: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(v1, v1alpha, "v1 and v1alpha reflection disagree");
    v1
}

#[tokio::test]
async fn reflection_lists_exactly_what_each_listener_serves() {
    use steward_server::ServiceKind;
    let standard: BTreeSet<String> = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let contract: BTreeSet<String> = all_methods()
        .iter()
        .map(|m| m.trim_start_matches('/').split('/').next().unwrap().to_string())
        .collect();
    let internal = |name: &String| name.ends_with("InternalService");

    // One process: the public listener lists every public service of the contract, the internal
    // one every service.
    let stack = Stack::start(Backend::Sqlite).await;
    let public = reflected_services(stack.url(ServiceKind::Admin)).await;
    let expected: BTreeSet<String> =
        standard.iter().chain(contract.iter().filter(|s| !internal(s))).cloned().collect();
    assert_eq!(public, expected);
    let everything = reflected_services(stack.internal_url(ServiceKind::Admin)).await;
    let expected: BTreeSet<String> = standard.iter().chain(&contract).cloned().collect();
    assert_eq!(everything, expected);

    // Split: each process lists its own services only.
    let split = Stack::start_split(Backend::Sqlite).await;
    for (kind, own) in [
        (ServiceKind::Auth, steward_auth::SERVICES),
        (ServiceKind::Admin, steward_admin::SERVICES),
        (ServiceKind::Commands, steward_commands::SERVICES),
    ] {
        let own: BTreeSet<String> = own.iter().map(|s| s.to_string()).collect();
        let public = reflected_services(split.url(kind)).await;
        let expected: BTreeSet<String> =
            standard.iter().chain(own.iter().filter(|s| !internal(s))).cloned().collect();
        assert_eq!(public, expected, "{kind:?} public listener");
        let all = reflected_services(split.internal_url(kind)).await;
        let expected: BTreeSet<String> = standard.iter().chain(&own).cloned().collect();
        assert_eq!(all, expected, "{kind:?} internal listener");
    }
}

#[tokio::test]
async fn oversized_messages_are_refused_before_any_handler() {
    use steward_proto::auth::v1::SignInRequest;
    let stack = Stack::start_with(Backend::Sqlite, |config| {
        config.server.max_message_bytes = 16 * 1024;
    })
    .await;
    let client = stack.client_for(steward_server::ServiceKind::Auth).await;
    let request = |size: usize| SignInRequest {
        email: "someone@example.com".into(),
        password: "p".repeat(size),
        organization: String::new(),
    };
    let err = client.auth().sign_in(request(32 * 1024)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    // Under the limit the call reaches the handler (which refuses the credentials).
    let err = client.auth().sign_in(request(100)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}
