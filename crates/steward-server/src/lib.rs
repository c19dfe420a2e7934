//! Composition of Steward's services into a process: one service per Kubernetes deployment
//! (`auth`, `admin`, `commands`), or all of them in one process for `dev` and for tests. The
//! binary in `main.rs` is a thin command-line layer over this library.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use steward_runtime::authn::{
    AuthLayer, AuthOptions, DenialSink, DeniedCall, KeySource, RemoteJwks, TokenVerifier,
};
use steward_runtime::config::Config;
use steward_runtime::server::{
    peer_readiness, serve, Dependency, Listeners, ReadinessCheck, ServeError, ServeOptions,
};
use steward_runtime::service::{Clock, Peers, ServiceContext};
use steward_runtime::ApiError;
use steward_storage::sea_orm::DatabaseConnection;
use steward_storage::StorageError;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

pub mod bootstrap;
pub mod dev_tls;

/// One of Steward's three services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Sign-in, sessions, MFA, tokens.
    Auth,
    /// Organizations, administrators, billing, audit.
    Admin,
    /// Commands, grants, checks, runs, systems, agents.
    Commands,
}

impl ServiceKind {
    /// All three, in start-up order.
    pub const ALL: [ServiceKind; 3] =
        [ServiceKind::Auth, ServiceKind::Admin, ServiceKind::Commands];

    /// The service's name (SQLite file, table prefix, subcommand).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => steward_auth::SERVICE,
            Self::Admin => steward_admin::SERVICE,
            Self::Commands => steward_commands::SERVICE,
        }
    }

    /// Fully-qualified names of the gRPC services it serves, internal ones included.
    pub fn services(self) -> &'static [&'static str] {
        match self {
            Self::Auth => steward_auth::SERVICES,
            Self::Admin => steward_admin::SERVICES,
            Self::Commands => steward_commands::SERVICES,
        }
    }

    /// The peers whose answer calls of `self` wait for (synchronous internal calls, not outbox
    /// deliveries), each with the services of `self` that make such calls: those health names
    /// are NOT_SERVING while the peer does not answer. ARCHITECTURE.md ("Which calls need which
    /// service") lists the calls. Token keys fetched from auth are not among them: they are
    /// kept on disk and refetched only for an unknown key.
    pub fn needs(self) -> &'static [(ServiceKind, &'static [&'static str])] {
        match self {
            // SignIn, VerifyMfa, RefreshSession (LookupAdministrator), AcceptInvite
            // (ActivateAdministrator), ExchangeApiKey (VerifyApiKey).
            Self::Auth => &[(Self::Admin, &["steward.auth.v1.AuthService"])],
            Self::Admin => &[],
            // Every call of an administrator or service account re-checks its caller
            // (LookupAdministrator, LookupServiceAccount); agents' calls do not.
            Self::Commands => &[(
                Self::Admin,
                &["steward.commands.v1.CommandService", "steward.commands.v1.SystemService"],
            )],
        }
    }

    async fn migrate(self, db: &DatabaseConnection) -> Result<(), StorageError> {
        match self {
            Self::Auth => steward_storage::migrate::<steward_auth::Migrator>(db).await,
            Self::Admin => steward_storage::migrate::<steward_admin::Migrator>(db).await,
            Self::Commands => steward_storage::migrate::<steward_commands::Migrator>(db).await,
        }
    }

    async fn start(
        self,
        ctx: &ServiceContext,
        routes: &mut RoutesBuilder,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ApiError> {
        match self {
            Self::Auth => steward_auth::start(ctx, routes).await,
            Self::Admin => steward_admin::start(ctx, routes).await,
            Self::Commands => steward_commands::start(ctx, routes).await,
        }
    }
}

/// The file under `database.data_dir` where services other than auth keep the token keys they
/// fetched from it.
pub const JWKS_CACHE_FILE: &str = "jwks-cache.json";

/// A process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Database connection or migration.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Server transport or reflection.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Service start-up.
    #[error("service start-up failed: {0:?}")]
    Start(ApiError),
    /// Invalid settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Socket errors.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// The first organization could not be created.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
}

impl ServerError {
    /// Whether the command line, not the service, is at fault (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Bootstrap(err) if err.is_invalid_input())
    }
}

impl From<ApiError> for ServerError {
    fn from(err: ApiError) -> Self {
        Self::Start(err)
    }
}

/// The database URL of `kind`: `database.url`, or a SQLite file named after the service under
/// `database.data_dir`.
pub fn database_url(config: &Config, kind: ServiceKind) -> Result<String, StorageError> {
    if config.database.url.is_empty() {
        steward_storage::sqlite_url(&config.database.data_dir, kind.name())
    } else {
        Ok(config.database.url.clone())
    }
}

/// Connects to and migrates the databases of `kinds`.
pub async fn migrate(config: &Config, kinds: &[ServiceKind]) -> Result<(), ServerError> {
    for kind in kinds {
        let db = connect(config, *kind).await?;
        db.close().await.map_err(StorageError::from)?;
    }
    Ok(())
}

async fn connect(config: &Config, kind: ServiceKind) -> Result<DatabaseConnection, ServerError> {
    let url = database_url(config, kind)?;
    let mut db = steward_storage::connect_with(
        &url,
        config.database.max_connections,
        Duration::from_millis(config.database.acquire_timeout_ms),
    )
    .await?;
    kind.migrate(&db).await?;
    tracing::info!(service = kind.name(), "migrations applied");
    steward_storage::count_statements(&mut db, &statements_label(config, kind)?);
    Ok(db)
}

fn statements_label(config: &Config, kind: ServiceKind) -> Result<String, ServerError> {
    Ok(format!("{}@{}", kind.name(), steward_storage::redact(&database_url(config, kind)?)))
}

/// Statements the `kind` services of this process with `config` have run on their database
/// since they started (after migrations).
pub fn statements(config: &Config, kind: ServiceKind) -> Result<u64, ServerError> {
    Ok(steward_storage::statements(&statements_label(config, kind)?))
}

/// Refuses settings that would run an insecure or broken service.
pub fn validate(config: &Config, kinds: &[ServiceKind]) -> Result<(), ServerError> {
    if config.internal.service_token.len() < 32 {
        return Err(ServerError::Config(
            "internal.service_token (STEWARD_INTERNAL__SERVICE_TOKEN) must be at least 32 characters".into(),
        ));
    }
    if kinds.contains(&ServiceKind::Auth) && config.auth.signing_keys.is_empty() {
        return Err(ServerError::Config("auth.signing_keys must name at least one key".into()));
    }
    let tls = &config.server.tls;
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(ServerError::Config(
            "server.tls.cert_file and server.tls.key_file must be set together".into(),
        ));
    }
    if tls.client_ca_file.is_some() && !tls.enabled() {
        return Err(ServerError::Config(
            "server.tls.client_ca_file (mutual TLS) needs server.tls.cert_file and key_file".into(),
        ));
    }
    let internal = &config.internal;
    if internal.client_cert_file.is_some() != internal.client_key_file.is_some() {
        return Err(ServerError::Config(
            "internal.client_cert_file and internal.client_key_file must be set together".into(),
        ));
    }
    if kinds.contains(&ServiceKind::Auth) && config.auth.mfa_keys.is_empty() {
        return Err(ServerError::Config("auth.mfa_keys must name at least one key".into()));
    }
    if config.auth.hashing_threads > steward_runtime::config::MAX_HASHING_THREADS {
        return Err(ServerError::Config(format!(
            "auth.hashing_threads must be at most {} (each thread holds 19 MiB); 0 picks one fewer than the cores",
            steward_runtime::config::MAX_HASHING_THREADS
        )));
    }
    Ok(())
}

/// Binds the listeners `config` names: `server.listen`, `server.internal_listen` and, when set,
/// `server.health_listen` and `telemetry.metrics_listen`.
pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
    Ok(Listeners {
        public: TcpListener::bind(config.server.listen).await?,
        internal: TcpListener::bind(config.server.internal_address()).await?,
        health: bind_optional(config.server.health_listen).await?,
        metrics: bind_optional(config.telemetry.metrics_listen).await?,
    })
}

/// Binds `addr` when it is set.
pub async fn bind_optional(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, ServerError> {
    Ok(match addr {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    })
}

/// Runs `kinds` in one server on `listeners` until `shutdown` resolves.
pub async fn run(
    config: Config,
    kinds: &[ServiceKind],
    clock: Clock,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    validate(&config, kinds)?;
    let clock = steward_runtime::service::at_stored_precision(clock);
    let peers = Peers::from_config(&config)?;
    let mut routes = RoutesBuilder::default();
    let mut databases = Vec::new();
    let mut background = Vec::new();
    let mut services = Vec::new();
    for kind in kinds {
        let db = connect(&config, *kind).await?;
        let ctx = ServiceContext {
            config: config.clone(),
            db: db.clone(),
            peers: peers.clone(),
            clock: clock.clone(),
        };
        background.extend(kind.start(&ctx, &mut routes).await?);
        services.extend(kind.services().iter().map(|n| n.to_string()));
        let pool = db.clone();
        let service = kind.name();
        steward_runtime::metrics::gauge_fn(
            "steward.db.pool.connections",
            "Connections of the service's database pool, idle or in use",
            move || {
                use steward_runtime::metrics::KeyValue;
                let (open, idle) = steward_storage::pool_connections(&pool);
                let labels = |state: &'static str| {
                    vec![KeyValue::new("service", service), KeyValue::new("state", state)]
                };
                vec![
                    (labels("idle"), i64::from(idle)),
                    (labels("used"), i64::from(open.saturating_sub(idle))),
                ]
            },
        );
        databases.push(db);
    }

    let keys = if kinds.contains(&ServiceKind::Auth) {
        KeySource::Static(steward_auth::keys::verifying_keys(&config.auth)?)
    } else {
        // Persisted under the data directory, so a restart while auth is down still verifies
        // the tokens of keys seen before.
        KeySource::Remote(Box::new(RemoteJwks::with_cache_file(
            peers.auth.clone(),
            config.database.data_dir.join(JWKS_CACHE_FILE),
        )))
    };
    let verifier = TokenVerifier::new(
        config.auth.issuer.clone(),
        config.auth.audience.clone(),
        Duration::from_secs(config.auth.leeway_secs),
        keys,
        clock.clone(),
    );
    let auth = AuthLayer::with_options(
        verifier,
        Some(config.internal.service_token.clone()),
        Some(audit_denials(peers.clone(), clock.clone())),
        AuthOptions::from_config(&config.server),
    );
    let readiness: ReadinessCheck = {
        let databases = Arc::new(databases);
        Arc::new(move || {
            let databases = databases.clone();
            Box::pin(async move {
                for db in databases.iter() {
                    if !steward_storage::ping(db).await {
                        return false;
                    }
                }
                true
            })
        })
    };

    let options = ServeOptions {
        server: config.server.clone(),
        services,
        descriptor_sets: vec![steward_proto::FILE_DESCRIPTOR_SET],
        readiness,
        dependencies: dependencies(kinds, &peers),
        auth,
    };
    tracing::info!(
        public = %listeners.public.local_addr()?,
        internal = %listeners.internal.local_addr()?,
        health = ?listeners.health.as_ref().map(TcpListener::local_addr).transpose()?,
        metrics = ?listeners.metrics.as_ref().map(TcpListener::local_addr).transpose()?,
        services = ?kinds,
        "steward listening"
    );
    let result = serve(routes.routes(), options, listeners, shutdown).await;
    for task in background {
        task.abort();
    }
    result.map_err(ServerError::from)
}

/// What the services of `kinds` need from peers in other processes (a peer in this process is
/// this process's own readiness), one [`Dependency`] per peer.
fn dependencies(kinds: &[ServiceKind], peers: &Peers) -> Vec<Dependency> {
    let mut dependencies: Vec<Dependency> = Vec::new();
    for (peer, needed_by) in kinds.iter().flat_map(|kind| kind.needs()) {
        if kinds.contains(peer) {
            continue;
        }
        let needed_by = needed_by.iter().map(|name| name.to_string());
        match dependencies.iter_mut().find(|d| d.peer == peer.name()) {
            Some(dependency) => dependency.needed_by.extend(needed_by),
            None => dependencies.push(Dependency {
                peer: peer.name().to_string(),
                needed_by: needed_by.collect(),
                check: peer_readiness(match peer {
                    ServiceKind::Auth => peers.auth.clone(),
                    ServiceKind::Admin => peers.admin.clone(),
                    ServiceKind::Commands => peers.commands.clone(),
                }),
            }),
        }
    }
    dependencies
}

/// Sends calls refused by the authentication layer to the admin service's audit log. Delivery is
/// best effort with a few retries: the call itself was refused, so nothing else depends on it.
#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
fn audit_denials(peers: Peers, clock: Clock) -> DenialSink {
    use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
    use steward_proto::admin::v1::RecordAuditEventsRequest;
    use steward_proto::audit::v1::audit_event::Result as AuditResult;
    use steward_runtime::audit::AuditRecord;
    Arc::new(move |denied: DeniedCall| {
        let event = AuditRecord::new(
            &denied.principal.organization,
            &denied.context,
            &denied.context.method,
            &denied.principal.administrator,
            "",
            (
                AuditResult::Denied,
                tonic::Code::PermissionDenied,
                format!("{}: {}", denied.reason, denied.message),
            ),
            clock(),
        )
        .into_proto();
        let mut client = AdminInternalServiceClient::new(peers.internal(&peers.admin));
        tokio::spawn(async move {
            for attempt in 0..5u32 {
                let request = RecordAuditEventsRequest { events: vec![event.clone()] };
                match client.record_audit_events(request).await {
                    Ok(_) => return,
                    Err(status) => {
                        tracing::warn!(attempt, error = %status, "could not record a denied call");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
        });
    })
}

/// A random secret suitable for `internal.service_token` (dev mode generates one per start).
pub fn random_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Settings of `steward-server dev`: every service on `addr` (public) and `internal` (the
/// internal listener, which the services dial), SQLite files, a generated signing key and file
/// mail under `data_dir`; with `tls`, the dev certificate set ([`dev_tls`]) on both listeners and
/// for the internal calls.
pub fn dev_config(
    base: Config,
    addr: SocketAddr,
    internal: SocketAddr,
    data_dir: &Path,
    tls: Option<&dev_tls::DevTls>,
) -> Result<Config, ServerError> {
    let mut config = base;
    // TLS from `--tls`, or from `server.tls` settings (then `internal.ca_file` names their CA).
    let scheme = if tls.is_some() || config.server.tls.enabled() { "https" } else { "http" };
    // The services call each other on the internal listener; an unspecified address (0.0.0.0,
    // ::) is dialled on loopback, a name the dev certificate holds.
    let dial = match internal.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, internal.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, internal.port()))
        }
        _ => internal,
    };
    let url = format!("{scheme}://{dial}");
    if let Some(tls) = tls {
        config.server.tls.cert_file = Some(tls.cert_file.clone());
        config.server.tls.key_file = Some(tls.key_file.clone());
        config.internal.ca_file = Some(tls.ca_file.clone());
    }
    config.server.listen = addr;
    config.server.internal_listen = Some(internal);
    config.database.data_dir = data_dir.to_path_buf();
    config.internal.auth_url = url.clone();
    config.internal.admin_url = url.clone();
    config.internal.commands_url = url;
    if config.internal.service_token.is_empty() {
        config.internal.service_token = random_secret();
    }
    if config.auth.signing_keys.is_empty() {
        config.auth.signing_keys = vec![steward_auth::keys::ensure_dev_signing_key(data_dir)?];
    }
    if config.auth.mfa_keys.is_empty() {
        config.auth.mfa_keys = vec![steward_auth::sealed::ensure_dev_mfa_key(data_dir)?];
    }
    Ok(config)
}

/// Directory where the dev file mailer writes messages.
pub fn mail_dir(config: &Config) -> PathBuf {
    config.database.data_dir.join("mail")
}

/// The newest set-password token mailed to `email` under `mail_dir`, if any.
pub fn newest_token_for(mail_dir: &Path, email: &str) -> Option<String> {
    let mut newest: Option<(std::time::SystemTime, String)> = None;
    let needle = email.to_ascii_lowercase();
    for entry in std::fs::read_dir(mail_dir).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let addressed = text.lines().any(|line| {
            let lower = line.to_ascii_lowercase();
            lower.starts_with("to:") && lower.contains(&needle)
        });
        if !addressed {
            continue;
        }
        let Some(token) = extract_token(&text) else { continue };
        let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
        if newest.as_ref().is_none_or(|(t, _)| modified >= *t) {
            newest = Some((modified, token));
        }
    }
    newest.map(|(_, token)| token)
}

/// The `token=...` value of the first link in `text`.
pub fn extract_token(text: &str) -> Option<String> {
    let start = text.find("token=")? + "token=".len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!token.is_empty()).then_some(token)
}

/// Display name of the organization `dev` creates on its first start.
pub const DEV_ORGANIZATION: &str = "Dev Organization";

/// On the first start of dev mode (no organization yet), creates one whose owner is
/// `owner_email` (as `steward-server bootstrap` does) and returns the owner's set-password token
/// once its invite email is written.
#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
pub async fn bootstrap_dev(
    config: &Config,
    owner_email: &str,
) -> Result<Option<String>, ServerError> {
    let wanted = bootstrap::FirstOrganization::new(DEV_ORGANIZATION, owner_email)?;
    let outcome = bootstrap::first_organization(config, &wanted, Duration::from_secs(10)).await?;
    if let bootstrap::Bootstrapped::Existing(_) = outcome {
        return Ok(None);
    }
    let dir = mail_dir(config);
    for _ in 0..100 {
        if let Some(token) = newest_token_for(&dir, owner_email) {
            return Ok(Some(token));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// The set-password link of `token` under `auth.console_url`.
pub fn set_password_link(config: &Config, token: &str) -> String {
    format!("{}/set-password?token={token}", config.auth.console_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Kubernetes configuration files load (unknown keys are rejected) and pass the checks
    // every service runs at start, once the secrets arrive from the environment.
    #[test]
    fn deploy_configuration_files_are_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        for file in ["base/steward.toml", "overlays/production/steward.toml"] {
            let mut config =
                Config::load(Some(&root.join(file))).unwrap_or_else(|e| panic!("{file}: {e}"));
            config.internal.service_token = random_secret();
            validate(&config, &[ServiceKind::Auth, ServiceKind::Admin, ServiceKind::Commands])
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(config.auth.mfa_keys[0].path.starts_with("/etc/steward/mfa-keys"), "{file}");
        }
    }

    #[test]
    fn too_many_hashing_threads_are_refused_at_startup() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let mut config = Config::load(Some(&root.join("base/steward.toml"))).unwrap();
        config.internal.service_token = random_secret();
        let max = steward_runtime::config::MAX_HASHING_THREADS;
        config.auth.hashing_threads = max;
        validate(&config, &[ServiceKind::Auth]).unwrap();
        config.auth.hashing_threads = max + 1;
        let err = validate(&config, &[ServiceKind::Auth]).unwrap_err().to_string();
        assert!(err.contains("auth.hashing_threads must be at most"), "{err}");
    }

    #[test]
    fn what_a_service_needs_names_its_own_services_and_another_service() {
        for kind in ServiceKind::ALL {
            for (peer, needed_by) in kind.needs() {
                assert_ne!(*peer, kind, "{kind:?} does not need itself");
                for name in *needed_by {
                    assert!(kind.services().contains(name), "{kind:?} serves no {name}");
                }
            }
        }
    }

    #[test]
    fn tokens_are_found_in_links() {
        let text = "Hello\r\nhttp://x/set-password?token=Ab-_9z&x=1\r\n";
        assert_eq!(extract_token(text).as_deref(), Some("Ab-_9z"));
        assert_eq!(extract_token("no link"), None);
    }
}
