//! TLS end to end: the seed walk-through over mutual TLS (the Rust client and the real agent
//! binary), clear errors for a wrong CA, an expired certificate and a name mismatch, certificates
//! reloaded without dropping established connections, mutual TLS on internal RPCs, the plaintext
//! health-only port, and client addresses through trusted proxies.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use steward_proto::admin::v1::{
    Administrator, BatchDeleteAdministratorsRequest, CreateAdministratorRequest, Role,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_proto::auth::v1::auth_internal_service_client::AuthInternalServiceClient;
use steward_proto::auth::v1::{GetJwksRequest, RevokeSessionsRequest, SignInRequest};
use steward_proto::client::Steward;
use steward_proto::commands::v1::{ListCommandsRequest, RunCommandRequest, RunState};
use steward_runtime::authn::ServiceCredential;
use steward_server::ServiceKind;
use steward_storage::testing::Backend;
use tonic::service::interceptor::InterceptedService;
use tonic::Code;

use crate::agent::{connect_key, connected_system, wait_run, AgentProcess};
use crate::harness::{Stack, Transport, PASSWORD};

crate::backend_test!(
    seed_walkthrough_over_mutual_tls,
    start = |backend| Stack::start_secure(backend, Transport::MutualTls),
    |stack| async move {
        let stack: Stack = stack;
        let url = stack.url(ServiceKind::Commands);
        assert!(url.starts_with("https://"), "{url}");
        // Sign-in and invites cross services over internal RPCs, which now need the client
        // certificate as well as the service credential.
        let owner = stack.owner().await;
        let runner = stack.member(&owner, Role::CommandRunner, false).await;

        // The real agent, verifying the server against the dev CA.
        let (_, key) = connect_key(&owner).await;
        let state = tempfile::tempdir().unwrap();
        let ca = stack.ca_file().unwrap();
        let agent = AgentProcess::spawn(
            &url,
            Some(&key),
            &state.path().join("agent"),
            &["--ca-file", ca.to_str().unwrap()],
        );
        let system = connected_system(&owner, &agent).await;

        let command = crate::agent::command(&owner, &system.name, "echo over-tls", 60).await;
        crate::commands::grant(&owner, &command, &runner.name).await;

        // The Command Runner sees and runs its command, and sees the output; nothing else.
        let listed = runner
            .client
            .commands()
            .list_commands(ListCommandsRequest { parent: owner.org.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .commands;
        assert_eq!(listed.len(), 1);
        let run = runner
            .client
            .commands()
            .run_command(RunCommandRequest {
                command: command.clone(),
                systems: vec![],
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        let done =
            wait_run(&owner, &agent, &run.name, |r| r.state == RunState::Succeeded as i32).await;
        assert_eq!(String::from_utf8_lossy(&done.results[0].stdout), "over-tls\n");
        let refused = runner
            .client
            .admin()
            .create_administrator(CreateAdministratorRequest {
                parent: owner.org.clone(),
                administrator: Some(Administrator {
                    email: "nobody@example.com".into(),
                    role: Role::Administrator as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);

        // Deletion and its safeguards hold over TLS too.
        let own = owner
            .client
            .admin()
            .batch_delete_administrators(BatchDeleteAdministratorsRequest {
                parent: owner.org.clone(),
                names: vec![owner.admin.clone()],
                validate_only: false,
            })
            .await
            .unwrap_err();
        assert_eq!(own.code(), Code::FailedPrecondition);
        owner
            .client
            .admin()
            .batch_delete_administrators(BatchDeleteAdministratorsRequest {
                parent: owner.org.clone(),
                names: vec![runner.name.clone()],
                validate_only: false,
            })
            .await
            .unwrap();
    }
);

crate::backend_test!(
    internal_rpcs_need_a_client_certificate,
    start = |backend| Stack::start_secure(backend, Transport::MutualTls),
    |stack| async move {
        let stack: Stack = stack;
        let request = || RevokeSessionsRequest {
            administrator: "organizations/o/administrators/a".into(),
            ..Default::default()
        };
        // The right service credential over TLS, but no client certificate: refused.
        let channel =
            stack.endpoint(&stack.internal_url(ServiceKind::Auth)).connect().await.unwrap();
        let credential = ServiceCredential::new(stack.service_token()).unwrap();
        let mut anonymous =
            AuthInternalServiceClient::new(InterceptedService::new(channel, credential.clone()));
        let status = anonymous.revoke_sessions(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("client certificate"), "{status:?}");
        // Public RPCs need none.
        stack.client().await.auth().get_jwks(GetJwksRequest {}).await.unwrap();
        // With the certificate from the internal CA the same call passes authentication.
        let tls = stack.config().server.tls.clone();
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(tls.cert_file.unwrap()).unwrap(),
            std::fs::read(tls.key_file.unwrap()).unwrap(),
        );
        let endpoint =
            tonic::transport::Endpoint::from_shared(stack.internal_url(ServiceKind::Auth))
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(
                            stack.ca_pem().unwrap(),
                        ))
                        .identity(identity),
                )
                .unwrap();
        let mut authenticated = AuthInternalServiceClient::new(InterceptedService::new(
            endpoint.connect().await.unwrap(),
            credential,
        ));
        if let Err(status) = authenticated.revoke_sessions(request()).await {
            assert_ne!(status.code(), Code::Unauthenticated, "{status:?}");
        }
    }
);

/// A CA, and certificates it signs.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let name = format!("test CA {}", uuid::Uuid::new_v4().simple());
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { pem, issuer: Issuer::new(params, key) }
    }

    /// (certificate, key) PEM for `names`, valid from `not_before` to `not_after`.
    fn leaf(
        &self,
        names: &[&str],
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn valid(&self) -> (String, String) {
        self.leaf(&["localhost", "127.0.0.1"], (2020, 1, 1), (2100, 1, 1))
    }
}

/// Replaces the files atomically (write aside, rename), as Kubernetes and cert-manager do.
fn install(dir: &Path, (cert, key): &(String, String)) {
    for (name, contents) in [("server.pem", cert), ("server.key", key)] {
        let staged = dir.join(format!(".{name}.new"));
        std::fs::write(&staged, contents).unwrap();
        std::fs::rename(&staged, dir.join(name)).unwrap();
    }
}

/// The error text of a fresh connection to `url` trusting `ca_pem` (`None` when it connects).
async fn connect_error(url: &str, ca_pem: &str) -> Option<String> {
    match Steward::connect_with_ca(url.to_string(), Some(ca_pem.as_bytes().to_vec())).await {
        Ok(client) => match client.auth().get_jwks(GetJwksRequest {}).await {
            Ok(_) => None,
            Err(status) => Some(format!("{status:?}")),
        },
        Err(err) => Some(steward_proto::client::error_chain(&err)),
    }
}

/// Waits (up to 15 s) until a fresh connection's outcome satisfies `done`.
async fn eventually(
    url: &str,
    ca_pem: &str,
    done: impl Fn(&Option<String>) -> bool,
) -> Option<String> {
    let mut last = None;
    for _ in 0..150 {
        last = connect_error(url, ca_pem).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never reached the expected outcome; last: {last:?}");
}

// Certificates are re-read when their files change: new connections see the new one while an
// established connection goes on; an untrusted CA, an expired certificate and a certificate for
// another name each fail with an error that says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_and_bad_ones_fail_clearly() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &ca.valid());
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let files = dir.path().to_path_buf();
    let stack = Stack::start_with(Backend::Sqlite, move |config| {
        config.server.tls.cert_file = Some(files.join("server.pem"));
        config.server.tls.key_file = Some(files.join("server.key"));
        config.server.tls.reload_interval_secs = 1;
        config.internal.ca_file = Some(files.join("ca.pem"));
    })
    .await;
    let url = stack.url(ServiceKind::Auth);
    let established = stack.client().await;
    established.auth().get_jwks(GetJwksRequest {}).await.unwrap();

    // A client that trusts another CA.
    let stranger = TestCa::new();
    let err = connect_error(&url, &stranger.pem).await.expect("refused");
    assert!(err.contains("invalid peer certificate") && err.contains("UnknownIssuer"), "{err}");

    // The certificate expires (a rotation gone wrong): new connections say so.
    install(dir.path(), &ca.leaf(&["localhost", "127.0.0.1"], (2020, 1, 1), (2021, 1, 1)));
    let err = eventually(&url, &ca.pem, |e| e.is_some()).await.unwrap();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    // The connection opened before the rotation keeps working.
    established.auth().get_jwks(GetJwksRequest {}).await.unwrap();

    // A certificate for another name.
    install(dir.path(), &ca.leaf(&["steward.example.com"], (2020, 1, 1), (2100, 1, 1)));
    let err =
        eventually(&url, &ca.pem, |e| e.as_deref().is_some_and(|e| !e.contains("expired"))).await;
    let err = err.unwrap();
    assert!(err.contains("not valid for name"), "{err}");

    // A file that does not parse keeps the previous certificate in use.
    std::fs::write(dir.path().join("server.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = connect_error(&url, &ca.pem).await.unwrap();
    assert!(err.contains("not valid for name"), "{err}");

    // A good certificate again: new connections succeed, and the old one never dropped.
    install(dir.path(), &ca.valid());
    eventually(&url, &ca.pem, Option::is_none).await;
    established.auth().get_jwks(GetJwksRequest {}).await.unwrap();
}

// Kubernetes' gRPC probes speak plaintext: the health port answers them and carries nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_health_port_serves_only_health() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let health_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let stack = Stack::start_secure_with(Backend::Sqlite, Transport::Tls, move |config| {
        config.server.health_listen = Some(health_addr);
    })
    .await;
    assert_eq!(stack.scheme(), "https");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let reply = health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(reply.into_inner().status, 1, "SERVING on the plaintext health port");
    let named = HealthCheckRequest { service: "steward.auth.v1.AuthService".into() };
    assert_eq!(health.check(named).await.unwrap().into_inner().status, 1);
    let mut auth = steward_proto::auth::v1::auth_service_client::AuthServiceClient::new(channel);
    let status = auth.get_jwks(GetJwksRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let signin = auth
        .sign_in(SignInRequest {
            email: "a@example.com".into(),
            password: PASSWORD.into(),
            organization: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(signin.code(), Code::Unimplemented);
}

// The client address comes from X-Forwarded-For only when the peer is a trusted proxy; the
// audit log records the address the throttles use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    for trusted in [true, false] {
        let stack = Stack::start_with(Backend::Sqlite, move |config| {
            if trusted {
                config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            }
        })
        .await;
        let owner = stack.owner().await;
        let mut request = tonic::Request::new(SignInRequest {
            email: owner.email.clone(),
            password: PASSWORD.into(),
            organization: String::new(),
        });
        let forwarded = "198.51.100.23, 127.0.0.1".parse().unwrap();
        request.metadata_mut().insert("x-forwarded-for", forwarded);
        stack.client().await.auth().sign_in(request).await.unwrap();
        // Two sign-ins are audited (the harness's and this one); wait for both.
        let mut events = Vec::new();
        for _ in 0..100 {
            events = owner
                .client
                .audit()
                .list_audit_events(ListAuditEventsRequest {
                    parent: owner.org.clone(),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .audit_events;
            events.retain(|e| e.action.ends_with("/SignIn"));
            if events.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(events.len(), 2, "{events:?}");
        let addresses: Vec<&str> = events.iter().map(|e| e.client_address.as_str()).collect();
        let believed = addresses.contains(&"198.51.100.23");
        assert_eq!(believed, trusted, "trusted={trusted}: {addresses:?}");
        assert!(addresses.iter().all(|a| !a.is_empty()), "{addresses:?}");
    }
}

// The real agent pointed at a server it cannot verify stops at once with one clear line, and its
// connect key was never presented: no system registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_server_it_cannot_verify() {
    let stack = Stack::start_secure(Backend::Sqlite, Transport::Tls).await;
    let owner = stack.owner().await;
    let (_, key) = connect_key(&owner).await;
    let state = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::spawn(
        &stack.url(ServiceKind::Commands),
        Some(&key),
        &state.path().join("a"),
        &[],
    );
    let (status, log) = agent.exits_within(Duration::from_secs(30)).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("not trusted") && log.contains("--ca-file"), "{log}");
    let systems = owner
        .client
        .systems()
        .list_systems(steward_proto::commands::v1::ListSystemsRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .systems;
    assert!(systems.is_empty(), "{systems:?}");
    // Plaintext to a server that is not on this machine is refused before any connection.
    let mut plain =
        AgentProcess::spawn("http://192.0.2.1:50051", Some(&key), &state.path().join("b"), &[]);
    let (status, log) = plain.exits_within(Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(log.contains("--insecure-plaintext"), "{log}");
}

// gRPC-Web over HTTP/1.1 and TLS: a client offering only `http/1.1` in ALPN (Node's fetch,
// HTTP/1.1 proxies) is served, not refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_over_http1_is_served_over_tls() {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start_secure(Backend::Sqlite, Transport::Tls).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(stack.ca_pem().unwrap()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = stack.url(ServiceKind::Auth).trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the handshake accepts an HTTP/1.1-only client");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // An empty HealthCheckRequest in one gRPC-Web frame.
    let body = [0u8, 0, 0, 0, 0];
    let head = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("application/grpc-web"), "{text}");
    assert!(text.contains("grpc-status:0"), "a gRPC-Web trailer frame with OK: {text}");
}
