//! Starts Steward for a test: all three services in one server (like `dev`), or split into three
//! servers (like Kubernetes), on 127.0.0.1:0 with a fresh database, file mail and a controllable
//! clock; plus shortcuts for the common steps (bootstrap an organization, accept an invite, sign in).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, CreateOrganizationRequest, Organization, Role,
};
use steward_proto::auth::v1::{sign_in_response, AcceptInviteRequest, SignInRequest, TokenSet};
use steward_proto::client::Steward;
use steward_runtime::authn::ServiceCredential;
use steward_runtime::config::Config;
use steward_runtime::service::{Clock, InternalChannel};
use steward_server::ServiceKind;
use steward_storage::testing::{Backend, TestDatabase, POSTGRES_ENV};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

/// A password every test administrator uses; strong enough for the strength estimator.
pub const PASSWORD: &str = "correct horse battery staple 42!";

/// True when PostgreSQL tests should run; panics when they are required but not configured.
pub fn postgres_available() -> bool {
    let configured = std::env::var(POSTGRES_ENV).is_ok_and(|v| !v.is_empty());
    if !configured && std::env::var("STEWARD_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        panic!("{POSTGRES_ENV} must be set when STEWARD_TEST_REQUIRE_POSTGRES=1");
    }
    if !configured {
        eprintln!("skipping: {POSTGRES_ENV} not set");
    }
    configured
}

/// A clock that follows real time plus an offset tests can advance, or stands still once
/// frozen (for tests whose outcome must not depend on how fast a loaded machine runs them).
#[derive(Clone, Debug, Default)]
pub struct TestClock {
    offset_ms: Arc<AtomicI64>,
    /// The frozen instant (Unix milliseconds), zero while the clock follows real time.
    frozen_ms: Arc<AtomicI64>,
}

impl TestClock {
    /// Stops the clock where it is; only [`TestClock::advance`] moves it from now on.
    pub fn freeze(&self) {
        let now = self.now().timestamp_millis();
        self.offset_ms.store(0, Ordering::SeqCst);
        self.frozen_ms.store(now, Ordering::SeqCst);
    }

    /// Moves time forward for every service of the stack.
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    /// The current (shifted) time.
    pub fn now(&self) -> chrono::DateTime<Utc> {
        let offset = chrono::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst));
        match self.frozen_ms.load(Ordering::SeqCst) {
            0 => Utc::now() + offset,
            frozen => {
                chrono::DateTime::from_timestamp_millis(frozen).unwrap_or_else(Utc::now) + offset
            }
        }
    }

    fn as_clock(&self) -> Clock {
        let this = self.clone();
        Arc::new(move || this.now())
    }
}

/// One running server process (in-process task).
struct Running {
    kinds: Vec<ServiceKind>,
    addr: SocketAddr,
    /// The internal listener (`server.internal_listen`).
    internal: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), steward_server::ServerError>>,
}

/// A running Steward for one test.
pub struct Stack {
    pub backend: Backend,
    pub clock: TestClock,
    config: Config,
    database: Arc<TestDatabase>,
    data_dir: Arc<tempfile::TempDir>,
    servers: Vec<Running>,
    stopped: Vec<(ServiceKind, SocketAddr, SocketAddr)>,
    /// With TLS: the dev CA every client trusts.
    ca_pem: Option<Vec<u8>>,
}

/// How a stack's servers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plaintext HTTP/2.
    Plain,
    /// TLS with the dev certificate set (`steward-server dev --tls`).
    Tls,
    /// TLS, and internal RPCs also need a client certificate from the dev CA.
    MutualTls,
}

/// The bootstrap owner of an organization.
pub struct Owner {
    /// `organizations/{o}`.
    pub org: String,
    /// `organizations/{o}/administrators/{a}`.
    pub admin: String,
    /// The owner's email.
    pub email: String,
    /// Signed in as the owner.
    pub client: Steward,
    /// The owner's tokens.
    pub tokens: TokenSet,
}

/// An administrator created, activated and signed in by a test.
pub struct Member {
    /// `organizations/{o}/administrators/{a}`.
    pub name: String,
    /// Email.
    pub email: String,
    /// Signed in as this administrator.
    pub client: Steward,
    /// Its tokens.
    pub tokens: TokenSet,
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A public and an internal listener on free ports.
async fn bind_pair() -> (TcpListener, TcpListener) {
    (bind().await, bind().await)
}

/// Binds `addr` again once the server that held it has released it.
async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("port {addr} never became free again");
}

impl Stack {
    /// All three services in one server.
    pub async fn start(backend: Backend) -> Self {
        Self::launch(backend, false, Transport::Plain, |_| {}).await
    }

    /// All three services in one server over `transport`.
    pub async fn start_secure(backend: Backend, transport: Transport) -> Self {
        Self::launch(backend, false, transport, |_| {}).await
    }

    /// All three services in one server over `transport`, with settings changed by `configure`.
    pub async fn start_secure_with(
        backend: Backend,
        transport: Transport,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        Self::launch(backend, false, transport, configure).await
    }

    /// Three servers over `transport`, with settings changed by `configure`.
    pub async fn start_split_secure(
        backend: Backend,
        transport: Transport,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        Self::launch(backend, true, transport, configure).await
    }

    /// All three services in one server, with settings changed by `configure` (e.g. SMTP).
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Self {
        Self::launch(backend, false, Transport::Plain, configure).await
    }

    /// The three services as three servers (as deployed), so one can be stopped.
    pub async fn start_split(backend: Backend) -> Self {
        Self::launch(backend, true, Transport::Plain, |_| {}).await
    }

    /// Three servers, as [`Stack::start_split`], with settings changed by `configure`.
    pub async fn start_split_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Self {
        Self::launch(backend, true, Transport::Plain, configure).await
    }

    async fn launch(
        backend: Backend,
        split: bool,
        transport: Transport,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let database = Arc::new(TestDatabase::create(backend).await.unwrap());
        let data_dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = Config::default();
        // SQLite: an empty URL gives each service its own file under the data directory, as in
        // dev mode. PostgreSQL: all services share the test database, as in production.
        match backend {
            Backend::Sqlite => config.database.data_dir = database.dir().unwrap(),
            Backend::Postgres => {
                config.database.data_dir = data_dir.path().to_path_buf();
                config.database.url = database.url("all");
            }
        }
        let key = steward_auth::keys::ensure_dev_signing_key(&config.database.data_dir).unwrap();
        config.database.max_connections = 8;
        config.auth.signing_keys = vec![key];
        config.auth.mfa_keys =
            vec![steward_auth::sealed::ensure_dev_mfa_key(&config.database.data_dir).unwrap()];
        config.internal.service_token = steward_server::random_secret();
        config.server.shutdown_grace_secs = 5;
        let mut ca_pem = None;
        if transport != Transport::Plain {
            let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let tls = steward_server::dev_tls::ensure(data_dir.path(), loopback).unwrap();
            ca_pem = Some(std::fs::read(&tls.ca_file).unwrap());
            config.server.tls.cert_file = Some(tls.cert_file.clone());
            config.server.tls.key_file = Some(tls.key_file.clone());
            config.server.tls.reload_interval_secs = 1;
            config.internal.ca_file = Some(tls.ca_file.clone());
            if transport == Transport::MutualTls {
                config.server.tls.client_ca_file = Some(tls.ca_file.clone());
                config.internal.client_cert_file = Some(tls.cert_file);
                config.internal.client_key_file = Some(tls.key_file);
            }
        }
        configure(&mut config);
        // A test that brings its own certificates names its CA as the peers' CA file.
        if ca_pem.is_none() && config.server.tls.enabled() {
            ca_pem = config.internal.ca_file.as_ref().map(|ca| std::fs::read(ca).unwrap());
        }
        let clock = TestClock::default();
        let mut stack = Self {
            backend,
            clock,
            config,
            database,
            data_dir,
            servers: Vec::new(),
            stopped: Vec::new(),
            ca_pem,
        };
        let scheme = stack.scheme();
        // Peers dial each other's internal listener, as deployed.
        if split {
            let listeners = [bind_pair().await, bind_pair().await, bind_pair().await];
            let internal: Vec<SocketAddr> =
                listeners.iter().map(|(_, i)| i.local_addr().unwrap()).collect();
            stack.config.internal.auth_url = format!("{scheme}://{}", internal[0]);
            stack.config.internal.admin_url = format!("{scheme}://{}", internal[1]);
            stack.config.internal.commands_url = format!("{scheme}://{}", internal[2]);
            for (listeners, kind) in listeners.into_iter().zip(ServiceKind::ALL) {
                stack.spawn(vec![kind], listeners);
            }
        } else {
            let listeners = bind_pair().await;
            let url = format!("{scheme}://{}", listeners.1.local_addr().unwrap());
            stack.config.internal.auth_url = url.clone();
            stack.config.internal.admin_url = url.clone();
            stack.config.internal.commands_url = url;
            stack.spawn(ServiceKind::ALL.to_vec(), listeners);
        }
        for i in 0..stack.servers.len() {
            stack.wait_serving(stack.servers[i].addr).await;
        }
        stack
    }

    fn spawn(&mut self, kinds: Vec<ServiceKind>, listeners: (TcpListener, TcpListener)) {
        let config = self.config.clone();
        self.spawn_with(kinds, listeners, config);
    }

    fn spawn_with(
        &mut self,
        kinds: Vec<ServiceKind>,
        (public, internal): (TcpListener, TcpListener),
        config: Config,
    ) {
        let addr = public.local_addr().unwrap();
        let internal_addr = internal.local_addr().unwrap();
        // `server.health_listen`, when a test sets it.
        let health = config.server.health_listen.map(|addr| {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            TcpListener::from_std(listener).unwrap()
        });
        let listeners =
            steward_runtime::server::Listeners { public, internal, health, metrics: None };
        let (stop, stopped) = oneshot::channel::<()>();
        let clock = self.clock.as_clock();
        let run_kinds = kinds.clone();
        let task = tokio::spawn(async move {
            steward_server::run(config, &run_kinds, clock, listeners, async {
                let _ = stopped.await;
            })
            .await
        });
        self.servers.push(Running { kinds, addr, internal: internal_addr, stop: Some(stop), task });
    }

    async fn wait_serving(&self, addr: SocketAddr) {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        for _ in 0..200 {
            if let Ok(channel) =
                self.endpoint(&format!("{}://{addr}", self.scheme())).connect().await
            {
                let mut health = HealthClient::new(channel);
                if let Ok(reply) = health.check(HealthCheckRequest { service: String::new() }).await
                {
                    if reply.into_inner().status == 1 {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server on {addr} never became SERVING");
    }

    /// A second server with all three services on the same databases, keys and credential
    /// (another replica behind the same load balancer). Returns its URL.
    pub async fn add_replica(&mut self) -> String {
        let listeners = bind_pair().await;
        let addr = listeners.0.local_addr().unwrap();
        self.spawn(ServiceKind::ALL.to_vec(), listeners);
        self.wait_serving(addr).await;
        format!("{}://{addr}", self.scheme())
    }

    /// Another server running `kinds` on the stack's databases, with the stack's settings
    /// changed by `configure` (e.g. a peer URL pointing elsewhere). Returns its public URL.
    pub async fn add_server(
        &mut self,
        kinds: Vec<ServiceKind>,
        configure: impl FnOnce(&mut Config),
    ) -> String {
        let listeners = bind_pair().await;
        let addr = listeners.0.local_addr().unwrap();
        let mut config = self.config.clone();
        configure(&mut config);
        self.spawn_with(kinds, listeners, config);
        self.wait_serving(addr).await;
        format!("{}://{addr}", self.scheme())
    }

    /// `https` when the stack serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The dev CA (PEM) clients of a TLS stack trust.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// The dev CA file of a TLS stack.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.config.internal.ca_file.clone()
    }

    /// An endpoint for `url` that trusts the stack's CA.
    pub fn endpoint(&self, url: &str) -> Endpoint {
        steward_proto::client::endpoint(url.to_string(), self.ca_pem.clone()).unwrap()
    }

    /// An anonymous client of a replica added with [`Stack::add_replica`].
    pub async fn client_at(&self, url: &str) -> Steward {
        Steward::connect_with_ca(url.to_string(), self.ca_pem.clone()).await.unwrap()
    }

    fn addr_of(&self, kind: ServiceKind) -> SocketAddr {
        self.servers.iter().find(|s| s.kinds.contains(&kind)).map(|s| s.addr).unwrap()
    }

    /// URL of the server hosting `kind` (the first one, when replicas exist).
    pub fn url(&self, kind: ServiceKind) -> String {
        format!("{}://{}", self.scheme(), self.addr_of(kind))
    }

    /// URL of the internal listener of the server added last.
    pub fn last_internal_url(&self) -> String {
        let server = self.servers.last().unwrap();
        format!("{}://{}", self.scheme(), server.internal)
    }

    /// URL of the internal listener of the server hosting `kind`.
    pub fn internal_url(&self, kind: ServiceKind) -> String {
        let server = self.servers.iter().find(|s| s.kinds.contains(&kind)).unwrap();
        format!("{}://{}", self.scheme(), server.internal)
    }

    /// Statements the `kind` services of this stack have run on their database so far.
    pub fn statements(&self, kind: ServiceKind) -> u64 {
        steward_server::statements(&self.config, kind).unwrap()
    }

    /// Anonymous client of the primary server (for split stacks, of the admin server; use
    /// [`Stack::client_for`] for the others).
    pub async fn client(&self) -> Steward {
        self.client_for(ServiceKind::Admin).await
    }

    /// Anonymous client of the server hosting `kind`.
    pub async fn client_for(&self, kind: ServiceKind) -> Steward {
        self.client_at(&self.url(kind)).await
    }

    /// A channel to the internal listener of `kind` carrying the service credential.
    pub async fn internal_for(&self, kind: ServiceKind) -> InternalChannel {
        self.internal_at(&self.internal_url(kind)).await
    }

    /// A channel to `url` carrying the service credential, dialled as the services dial each
    /// other: with the internal CA and, under mutual TLS, the client certificate.
    pub async fn internal_at(&self, url: &str) -> InternalChannel {
        let channel = steward_runtime::service::peer_channel(url, &self.config.internal).unwrap();
        InterceptedService::new(
            channel,
            ServiceCredential::new(&self.config.internal.service_token).unwrap(),
        )
    }

    /// A channel to the primary server carrying the service credential.
    pub async fn internal(&self) -> InternalChannel {
        self.internal_for(ServiceKind::Admin).await
    }

    /// The service credential (for tests that build their own metadata).
    pub fn service_token(&self) -> &str {
        &self.config.internal.service_token
    }

    /// The configuration the servers run with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the dev file mailer writes.
    pub fn mail_dir(&self) -> PathBuf {
        self.config.database.data_dir.join("mail")
    }

    /// Where SQLite files live (SQLite backend only).
    pub fn sqlite_dir(&self) -> Option<PathBuf> {
        self.database.dir()
    }

    /// The newest link token mailed to `email`, waiting up to 15 s for it to arrive.
    pub async fn wait_for_token(&self, email: &str) -> String {
        self.wait_for_new_token(email, None).await
    }

    /// Like [`Stack::wait_for_token`] but ignores `previous` (to see a resent link).
    pub async fn wait_for_new_token(&self, email: &str, previous: Option<&str>) -> String {
        for _ in 0..300 {
            if let Some(token) = steward_server::newest_token_for(&self.mail_dir(), email) {
                if Some(token.as_str()) != previous {
                    return token;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no mail with a link for {email} in {}", self.mail_dir().display());
    }

    /// Stops the server hosting `kind` (split stacks), as if its pods were gone.
    pub async fn stop(&mut self, kind: ServiceKind) {
        let index = self.servers.iter().position(|s| s.kinds == vec![kind]).expect("split stack");
        let mut server = self.servers.remove(index);
        if let Some(stop) = server.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut server.task).await;
        self.stopped.push((kind, server.addr, server.internal));
    }

    /// Restarts a server stopped with [`Stack::stop`] on the same addresses.
    pub async fn restart(&mut self, kind: ServiceKind) {
        let index = self.stopped.iter().position(|(k, _, _)| *k == kind).expect("was stopped");
        let (_, addr, internal) = self.stopped.remove(index);
        let listeners = (rebind(addr).await, rebind(internal).await);
        self.spawn(vec![kind], listeners);
        self.wait_serving(addr).await;
    }

    /// Stops the auth server of a split stack.
    pub async fn stop_auth(&mut self) {
        self.stop(ServiceKind::Auth).await;
    }

    /// Restarts the auth server of a split stack.
    pub async fn start_auth(&mut self) {
        self.restart(ServiceKind::Auth).await;
    }

    /// Creates an organization through the platform-operator RPC and signs its owner in.
    pub async fn owner(&self) -> Owner {
        let email = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
        let mut orgs = OrganizationServiceClient::new(self.internal_for(ServiceKind::Admin).await);
        let created = orgs
            .create_organization(CreateOrganizationRequest {
                organization: Some(Organization {
                    display_name: "Acme".into(),
                    ..Default::default()
                }),
                owner_email: email.clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let org = created.organization.unwrap().name;
        let admin = created.owner.unwrap().name;
        let tokens = self.accept_and_sign_in(&email).await;
        let client = self.client().await.with_token(&tokens.access_token).unwrap();
        Owner { org, admin, email, client, tokens }
    }

    /// Accepts the newest invite of `email` with [`PASSWORD`] and signs in (no MFA).
    pub async fn accept_and_sign_in(&self, email: &str) -> TokenSet {
        let token = self.wait_for_token(email).await;
        let auth = self.client_for(ServiceKind::Auth).await;
        auth.auth()
            .accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() })
            .await
            .unwrap();
        self.sign_in(email, PASSWORD).await
    }

    /// Signs in and returns the tokens; panics on an MFA challenge.
    pub async fn sign_in(&self, email: &str, password: &str) -> TokenSet {
        let auth = self.client_for(ServiceKind::Auth).await;
        let reply = auth
            .auth()
            .sign_in(SignInRequest {
                email: email.into(),
                password: password.into(),
                organization: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        match reply.result {
            Some(sign_in_response::Result::Tokens(tokens)) => tokens,
            other => panic!("expected tokens, got {other:?}"),
        }
    }

    /// Creates an administrator as `owner`, accepts its invite and signs it in.
    pub async fn member(&self, owner: &Owner, role: Role, billing: bool) -> Member {
        let email = format!("member-{}@example.com", uuid::Uuid::new_v4().simple());
        let created = owner
            .client
            .admin()
            .create_administrator(CreateAdministratorRequest {
                parent: owner.org.clone(),
                administrator: Some(Administrator {
                    email: email.clone(),
                    role: role as i32,
                    billing,
                    ..Default::default()
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .administrator
            .unwrap();
        let tokens = self.accept_and_sign_in(&email).await;
        let client = self.client().await.with_token(&tokens.access_token).unwrap();
        Member { name: created.name, email, client, tokens }
    }

    /// Enrols TOTP MFA for the administrator signed in as `client`; returns the secret.
    pub async fn enrol_mfa(&self, client: &Steward) -> String {
        use steward_proto::auth::v1::{BeginMfaEnrollmentRequest, ConfirmMfaEnrollmentRequest};
        let enrolment = client
            .auth()
            .begin_mfa_enrollment(BeginMfaEnrollmentRequest {})
            .await
            .unwrap()
            .into_inner();
        let code = steward_auth::totp::code_at(&enrolment.secret, self.clock.now()).unwrap();
        client
            .auth()
            .confirm_mfa_enrollment(ConfirmMfaEnrollmentRequest { totp_code: code })
            .await
            .unwrap();
        enrolment.secret
    }

    /// Path of a file under the stack's data directory.
    pub fn data_path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.data_dir.path().join(relative)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(stop) = server.stop.take() {
                let _ = stop.send(());
            }
            server.task.abort();
        }
    }
}

/// A refusal's reason: the violation type of a failed precondition, else the ErrorInfo reason.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    if let Some(failure) = details.precondition_failure() {
        if let Some(violation) = failure.violations.first() {
            return violation.r#type.clone();
        }
    }
    details.error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// Asserts `result` is refused with `code` and `why` ([`reason`]); answers the status.
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    why: &str,
) -> tonic::Status {
    let status = result.expect_err("must be refused");
    assert_eq!((status.code(), reason(&status).as_str()), (code, why), "{status:?}");
    status
}
