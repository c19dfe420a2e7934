//! Configuration: built-in defaults, then an optional TOML file, then `STEWARD_*` environment
//! variables (nested keys joined by `__`, e.g. `STEWARD_SERVER__LISTEN`). Unknown keys are
//! rejected at every level so a typo never silently falls back to a default.
//!
//! Every setting lives in a section, so only variables with a `__` after the prefix are
//! configuration. Others (`STEWARD_CONFIG_FILE`, `STEWARD_TEST_POSTGRES_URL`, the
//! `STEWARD_AUTH_SERVICE_HOST` that Kubernetes service links inject) are left alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything a Steward process can be configured with. Each service reads the sections it needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening address and transport limits.
    pub server: ServerConfig,
    /// The service's own database.
    pub database: DatabaseConfig,
    /// Token issuance and verification.
    pub auth: AuthConfig,
    /// Addresses of the other services and the credential used to call their internal RPCs.
    pub internal: InternalConfig,
    /// Outgoing email.
    pub email: EmailConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Limits of the command service's streams (WatchRun, agents).
    pub streams: StreamsConfig,
    /// Delivery of the services' outboxes (cross-service side effects, mail).
    pub outbox: OutboxConfig,
}

/// Delivery of outbox messages (`steward_storage::outbox`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// How long a replica's claim on a message lasts, in seconds (at least 2). Each delivery is
    /// abandoned after half of it, so no two replicas ever deliver one message at once; a
    /// message whose replica died mid-delivery is taken again when the lease has passed.
    pub lease_secs: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { lease_secs: 120 }
    }
}

impl OutboxConfig {
    /// The lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(2))
    }
}

/// Limits of long-lived streams. Watcher counts are per replica.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Open `WatchRun` streams one administrator may hold at once.
    pub max_watchers_per_caller: usize,
    /// Open `WatchRun` streams one run may have at once.
    pub max_watchers_per_run: usize,
    /// How often an open `WatchRun` re-checks that its caller may still see the run, in seconds;
    /// the stream ends with PERMISSION_DENIED when it no longer may.
    pub watch_recheck_secs: u64,
    /// Messages per second an agent stream may send (sustained); faster agents are slowed down
    /// (HTTP/2 flow control pushes back on them), nothing is dropped.
    pub agent_messages_per_sec: u32,
    /// Messages an agent stream may send in a burst above the sustained rate.
    pub agent_message_burst: u32,
    /// How often each commands replica looks for work its agents have not been woken for, in
    /// seconds: the safety net of event-driven dispatch, and the way a run created by another
    /// process sharing a SQLite file reaches its agents. Costs two queries per replica,
    /// whatever the number of agents.
    pub dispatch_sweep_secs: u64,
    /// How often the service sends a heartbeat on each agent stream, in seconds. Keep it below
    /// the read timeout of any proxy between agents and the service; HTTP/2 keepalive pings
    /// find dead connections independently.
    pub agent_heartbeat_secs: u64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            max_watchers_per_caller: 8,
            max_watchers_per_run: 32,
            watch_recheck_secs: 30,
            agent_messages_per_sec: 200,
            agent_message_burst: 400,
            dispatch_sweep_secs: 2,
            agent_heartbeat_secs: 60,
        }
    }
}

/// Listening address and transport limits shared by every service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public gRPC listener: every public service, gRPC-Web included. The
    /// service credential is not accepted here, and the `*InternalService`s are not served.
    pub listen: SocketAddr,
    /// Address of the internal gRPC listener (same TLS as `listen`): every service of the
    /// process, the `*InternalService`s included, and the only one that accepts the service
    /// credential. Peers dial it (`internal.*_url`); keep it out of public Services and ingress.
    /// Unset: port 50052 on the IP of `listen` ([`ServerConfig::internal_address`]).
    pub internal_listen: Option<SocketAddr>,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Requests processed at once, per listener; further requests wait.
    pub max_concurrent_requests: usize,
    /// Concurrent streams a single HTTP/2 connection may open.
    pub max_concurrent_streams_per_connection: u32,
    /// Deadline for unary requests, in seconds (streams are not cut by it).
    pub request_timeout_secs: u64,
    /// Seconds between HTTP/2 keepalive pings on an idle connection; a peer that does not
    /// answer within 10 s is dropped. Each connected agent costs one ping per interval.
    pub keepalive_secs: u64,
    /// How long a SIGTERM waits for in-flight calls before the process exits anyway.
    pub shutdown_grace_secs: u64,
    /// How long, on SIGTERM, readiness says NOT_SERVING while the listeners still accept and
    /// serve calls, so load balancers that poll health stop sending calls before they close.
    /// 0 (the default) closes them at once; Kubernetes' preStop sleep does this job there.
    pub shutdown_drain_secs: u64,
    /// A second, plaintext listener that carries nothing but `grpc.health.v1` (Kubernetes' gRPC
    /// probes do not speak TLS). Unset: health is served only on `listen`.
    pub health_listen: Option<SocketAddr>,
    /// TLS on `listen`. Off unless `cert_file` and `key_file` are both set.
    pub tls: TlsConfig,
    /// Proxies (CIDRs such as `10.0.0.0/8`) whose forwarding header names the client. A call
    /// from any other peer is attributed to the TCP peer address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The one header the trusted proxies append the client's address to. Only this header is
    /// read: a proxy passes other forwarding headers from the client through unchanged.
    pub forwarded_header: ForwardedHeader,
    /// Seconds after which a connection is asked to go away (HTTP/2 GOAWAY): new calls then
    /// open a new connection, to any replica, while calls in flight finish on the old one. An
    /// idle agent stream older than this is ended by the commands service (`UNAVAILABLE`; the
    /// agent reconnects at once), so fleets spread over replicas added since they connected.
    /// Each listener and each agent stream draws its age within 10% below this. 0 keeps
    /// connections for as long as they live.
    pub max_connection_age_secs: u64,
    /// Origins (`https://console.example.com`) whose browsers may call the public listener with
    /// gRPC-Web (CORS). Empty: no cross-origin browser calls; gRPC-Web from the same origin and
    /// from non-browser clients works either way.
    pub cors_allowed_origins: Vec<String>,
}

/// Which forwarding header the trusted proxies maintain.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (ingress-nginx, Envoy, most load balancers).
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// The server's TLS material, PEM files re-read when they change (cert-manager rotates them in
/// place) without dropping established connections.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain (leaf first), PEM.
    pub cert_file: Option<PathBuf>,
    /// Private key of the leaf certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA bundle, PEM. When set, internal RPCs (`*InternalService`) additionally require a client
    /// certificate issued by this CA (mutual TLS); public RPCs stay available without one.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes, in seconds.
    pub reload_interval_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { cert_file: None, key_file: None, client_ca_file: None, reload_interval_secs: 10 }
    }
}

impl TlsConfig {
    /// How often the files are checked for changes.
    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.reload_interval_secs.max(1))
    }

    /// Whether TLS is configured (both files named).
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            internal_listen: None,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 512,
            max_concurrent_streams_per_connection: 256,
            request_timeout_secs: 30,
            keepalive_secs: 60,
            shutdown_grace_secs: 25,
            shutdown_drain_secs: 0,
            health_listen: None,
            tls: TlsConfig::default(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            max_connection_age_secs: 0,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The internal listener's address: `internal_listen`, else port 50052 on the IP of
    /// `listen` (so a loopback-only public listener does not open an internal one everywhere).
    pub fn internal_address(&self) -> SocketAddr {
        self.internal_listen.unwrap_or_else(|| SocketAddr::new(self.listen.ip(), 50052))
    }

    /// The unary request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The graceful shutdown budget.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// How long a shutdown serves while NOT_SERVING before the listeners close.
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_secs)
    }
}

/// The service's database.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db?mode=rwc` or `postgres://user@host/db`. Empty means a SQLite file
    /// named after the service under `data_dir`.
    pub url: String,
    /// Directory holding SQLite files and dev-mode mail.
    pub data_dir: PathBuf,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long a call waits for a pooled connection (opening one if the pool may grow) before
    /// it fails with `UNAVAILABLE`: what bounds a call while the database is down.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            data_dir: PathBuf::from(".steward"),
            max_connections: 16,
            acquire_timeout_ms: steward_storage::DEFAULT_ACQUIRE_TIMEOUT_MS,
        }
    }
}

/// Token settings. The auth service signs; every service verifies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` claim of access tokens.
    pub issuer: String,
    /// `aud` claim of access tokens.
    pub audience: String,
    /// Access token lifetime in seconds.
    pub access_token_ttl_secs: u64,
    /// Absolute lifetime of a session's refresh tokens, in seconds.
    pub refresh_token_ttl_secs: u64,
    /// Lifetime of invite and password-reset links, in seconds (default 72 h).
    pub invite_ttl_secs: u64,
    /// Ed25519 signing keys as PKCS#8 PEM files. The first signs; all verify (rotation).
    pub signing_keys: Vec<SigningKeyConfig>,
    /// Keys sealing the stored TOTP secrets (XChaCha20-Poly1305), each a file holding 32
    /// random bytes in base64. The first seals; all open (rotation).
    pub mfa_keys: Vec<SecretKeyConfig>,
    /// Base URL of the console; links are `{console_url}/set-password?token=...`. A host under
    /// the reserved `.invalid` domain (the default, [`NO_CONSOLE_URL`]) says no console serves
    /// them: emails then lead with the `steward` command that does the same.
    pub console_url: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Threads hashing passwords (argon2id, 19 MiB each, niced). 0 (the default): one fewer than
    /// the cores, at least 1 and at most 4, so the other calls keep a core while sign-ins are
    /// saturated. At most [`MAX_HASHING_THREADS`]. Read through [`AuthConfig::hashing_threads`].
    pub hashing_threads: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "https://steward.local".into(),
            audience: "steward".into(),
            access_token_ttl_secs: 600,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            invite_ttl_secs: 72 * 3600,
            signing_keys: Vec::new(),
            mfa_keys: Vec::new(),
            console_url: NO_CONSOLE_URL.into(),
            leeway_secs: 30,
            hashing_threads: 0,
        }
    }
}

/// The default `auth.console_url`: no web console ships with Steward yet, and a host under the
/// `.invalid` domain (RFC 2606) never resolves, so a link on it is plainly a placeholder.
pub const NO_CONSOLE_URL: &str = "https://console.invalid";

/// Most password-hashing threads `auth.hashing_threads` may ask for: each holds 19 MiB once it
/// has hashed, so 16 hold about 300 MiB. The server refuses a larger value at startup.
pub const MAX_HASHING_THREADS: usize = 16;

impl AuthConfig {
    /// The password-hashing threads to run on a machine with `cores` cores: `hashing_threads`
    /// when set (at most [`MAX_HASHING_THREADS`]), else one fewer than `cores`, at least 1 and
    /// at most 4. Hashing on every core let a burst of sign-ins delay the process's other calls
    /// by a scheduler time slice; with a core's worth of CPU left to them, their latency holds.
    pub fn hashing_threads(&self, cores: usize) -> usize {
        if self.hashing_threads > 0 {
            return self.hashing_threads.min(MAX_HASHING_THREADS);
        }
        cores.saturating_sub(1).clamp(1, 4)
    }

    /// Whether `console_url` names no real console: its host is `invalid` or under `.invalid`
    /// (or the URL does not parse).
    pub fn console_is_placeholder(&self) -> bool {
        let host = self
            .console_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_ascii_lowercase));
        match host {
            Some(host) => {
                let host = host.trim_end_matches('.');
                host == "invalid" || host.ends_with(".invalid")
            }
            None => true,
        }
    }
}

/// One signing key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// Key id published in the JWKS and put in the token header.
    pub kid: String,
    /// PKCS#8 PEM file with the Ed25519 private key.
    pub path: PathBuf,
}

/// One symmetric key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyConfig {
    /// Key id, recorded with every value it seals (letters, digits, `-`, `_`).
    pub id: String,
    /// File holding the key: 32 random bytes, base64 (`openssl rand -base64 32`).
    pub path: PathBuf,
}

/// How services reach each other.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InternalConfig {
    /// Shared service credential presented on internal RPCs (at least 32 characters). Supply it
    /// from a secret; never from a committed file.
    pub service_token: String,
    /// Base URL of the auth service.
    pub auth_url: String,
    /// Base URL of the admin service.
    pub admin_url: String,
    /// Base URL of the command-authorization service.
    pub commands_url: String,
    /// CA bundle (PEM) that peers' `https://` certificates are verified against; when set it is
    /// the only trust anchor for internal calls (an internal peer is never a public site).
    /// Unset: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented on internal calls, for servers with
    /// `server.tls.client_ca_file`.
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// How long (milliseconds, at most 1,000) a service reuses its re-check of a caller on
    /// reads ([`crate::lease`]); every admin-service write that narrows what a caller holds
    /// waits as long after its commit before it answers, and each answer to the other services
    /// carries it, so no replica acts on a revoked role once that write has returned. Every
    /// admin replica must use the same value. 0 re-reads on every call and waits nothing.
    pub caller_lease_ms: u64,
}

impl InternalConfig {
    /// [`Self::caller_lease_ms`] as a duration, capped at [`crate::lease::MAX_LEASE`].
    pub fn caller_lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.caller_lease_ms).min(crate::lease::MAX_LEASE)
    }
}

impl Default for InternalConfig {
    fn default() -> Self {
        Self {
            service_token: String::new(),
            auth_url: "http://steward-auth-internal:50052".into(),
            admin_url: "http://steward-admin-internal:50052".into(),
            commands_url: "http://steward-commands-internal:50052".into(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            caller_lease_ms: 100,
        }
    }
}

/// Outgoing email.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// `smtp://host:port`, `smtps://user:pass@host:465` or `smtp://host:587?tls=required`; empty
    /// writes messages as files under `{data_dir}/mail` (dev mode).
    pub smtp_url: String,
    /// `From:` address.
    pub from: String,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self { smtp_url: String::new(), from: "Steward <no-reply@steward.local>".into() }
    }
}

/// Logs, traces and metrics.
///
/// Logs always go to stderr. Traces and metrics are exported over OTLP/gRPC only when
/// `otlp_endpoint` is set; otherwise no exporter and no background thread exists.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `pretty` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive such as `info,steward=debug`; `RUST_LOG` wins when set. It also
    /// decides which spans are exported.
    pub log_filter: String,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`, or `https://…` for TLS (the
    /// system's roots plus `otlp_ca_file`). Empty (the default) exports nothing.
    pub otlp_endpoint: OtlpEndpoint,
    /// An extra CA bundle (PEM) trusted for an `https://` collector.
    pub otlp_ca_file: Option<PathBuf>,
    /// `service.name` of exported traces and metrics. Empty means `OTEL_SERVICE_NAME` when set,
    /// otherwise the process's default (`steward-auth`, `steward-admin`, `steward-commands`,
    /// `steward-dev`).
    pub service_name: String,
    /// Seconds between metric exports. Unset means `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds)
    /// when set, otherwise 60 s.
    pub metrics_interval_secs: Option<u64>,
    /// A plaintext HTTP listener serving the process's metrics in the Prometheus text format at
    /// `/metrics`. Unset: no listener.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            otlp_endpoint: OtlpEndpoint::default(),
            otlp_ca_file: None,
            service_name: String::new(),
            metrics_interval_secs: None,
            metrics_listen: None,
        }
    }
}

/// The OTLP/gRPC endpoint, checked when the configuration is loaded: empty, or an `http://`
/// (plaintext: an in-cluster collector or a node-local agent) or `https://` URL with a host and
/// no credentials.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct OtlpEndpoint(Option<String>);

impl OtlpEndpoint {
    /// The endpoint URL, or `None` when export is off.
    pub fn url(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// Why an OTLP endpoint was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "OTLP endpoint is not an http:// or https:// URL with a host and no credentials (expected \
     something like http://otel-collector:4317)"
)]
pub struct InvalidOtlpEndpoint;

impl TryFrom<String> for OtlpEndpoint {
    type Error = InvalidOtlpEndpoint;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Ok(Self(None));
        }
        // No credentials in the URL: it is logged (headers carry them: OTEL_EXPORTER_OTLP_HEADERS).
        let valid = trimmed.parse::<http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|host| !host.is_empty())
                && !uri.authority().is_some_and(|a| a.as_str().contains('@'))
        });
        if valid {
            Ok(Self(Some(trimmed.to_string())))
        } else {
            // The refused value is not echoed: it may hold credentials.
            Err(InvalidOtlpEndpoint)
        }
    }
}

impl From<OtlpEndpoint> for String {
    fn from(endpoint: OtlpEndpoint) -> Self {
        endpoint.0.unwrap_or_default()
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Loads defaults, then `file` (if given), then `STEWARD_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed("STEWARD_").filter(|key| key.as_str().contains("__")).split("__");
        figment = figment.merge(env);
        figment.extract().map_err(|e| ConfigError(Box::new(e)))
    }
}

#[cfg(test)]
// figment's Jail closures return its (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn console_placeholders_are_recognised() {
        let mut auth = AuthConfig::default();
        assert!(auth.console_is_placeholder(), "the default names no console");
        for (url, placeholder) in [
            ("https://console.example.com", false),
            ("http://localhost:8080", false),
            ("https://steward.INVALID/", true),
            ("https://console.invalid.:8443", true),
            ("https://invalid.example.com", false),
            ("not a url", true),
        ] {
            auth.console_url = url.into();
            assert_eq!(auth.console_is_placeholder(), placeholder, "{url}");
        }
    }

    #[test]
    fn hashing_leaves_a_core_to_the_other_calls_unless_told_otherwise() {
        let mut auth = AuthConfig::default();
        let automatic: Vec<usize> =
            [1, 2, 3, 4, 8, 64].map(|cores| auth.hashing_threads(cores)).into();
        assert_eq!(automatic, [1, 1, 2, 3, 4, 4], "one fewer than the cores, 1 to 4");
        auth.hashing_threads = 2;
        assert_eq!(auth.hashing_threads(2), 2, "as configured, even on every core");
        auth.hashing_threads = 10_000;
        assert_eq!(auth.hashing_threads(2), MAX_HASHING_THREADS, "capped (startup refuses it)");
        figment::Jail::expect_with(|jail| {
            jail.set_env("STEWARD_AUTH__HASHING_THREADS", "3");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.auth.hashing_threads(2), 3);
            Ok(())
        });
    }

    // Every test runs in a figment Jail: it serializes tests touching the environment and gives
    // each a scratch directory.

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("steward.toml", "[server]\nlisen = \"127.0.0.1:1\"\n")?;
            let err = Config::load(Some(Path::new("steward.toml"))).unwrap_err().to_string();
            assert!(err.contains("lisen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_and_unknown_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STEWARD_SERVER__LISTEN", "127.0.0.1:9");
            jail.set_env("STEWARD_CONFIG_FILE", "/not/a/setting");
            jail.set_env("STEWARD_AUTH_SERVICE_HOST", "10.0.0.1");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.server.listen.port(), 9);
            jail.set_env("STEWARD_SERVER__LISTN", "127.0.0.1:9");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn telemetry_is_off_by_default_and_reads_the_otlp_settings() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.telemetry.otlp_endpoint.url(), None);
            assert_eq!(config.telemetry.metrics_interval_secs, None);
            jail.set_env("STEWARD_TELEMETRY__OTLP_ENDPOINT", "http://otel-collector:4317");
            jail.set_env("STEWARD_TELEMETRY__SERVICE_NAME", "steward-auth");
            jail.set_env("STEWARD_TELEMETRY__METRICS_INTERVAL_SECS", "5");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.telemetry.otlp_endpoint.url(), Some("http://otel-collector:4317"));
            assert_eq!(config.telemetry.service_name, "steward-auth");
            assert_eq!(config.telemetry.metrics_interval_secs, Some(5));
            Ok(())
        });
    }

    #[test]
    fn a_malformed_otlp_endpoint_is_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("steward.toml", "[telemetry]\notlp_endpoint = \"localhost\"\n")?;
            let err = Config::load(Some(Path::new("steward.toml"))).unwrap_err().to_string();
            assert!(err.contains("not an http:// or https:// URL"), "{err}");
            for bad in [
                "otel-collector:4317",
                "ftp://collector:21",
                "https://user:secret@c:4317",
                "http://",
                "not a url",
                "http://user:secret@collector:4317",
            ] {
                jail.set_env("STEWARD_TELEMETRY__OTLP_ENDPOINT", bad);
                let err = Config::load(None).unwrap_err().to_string();
                assert!(err.contains("OTLP endpoint"), "{bad}: {err}");
                assert!(!err.contains("secret"), "the refused value is not echoed: {err}");
                let named = err.to_ascii_lowercase().contains("telemetry.otlp_endpoint");
                assert!(named, "{bad}: the key is named: {err}");
            }
            jail.set_env("STEWARD_TELEMETRY__OTLP_ENDPOINT", "https://collector.example.com:4317");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                config.telemetry.otlp_endpoint.url(),
                Some("https://collector.example.com:4317"),
                "TLS to the collector"
            );
            jail.set_env("STEWARD_TELEMETRY__OTLP_ENDPOINT", "");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.telemetry.otlp_endpoint.url(), None);
            Ok(())
        });
    }

    #[test]
    fn file_values_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "steward.toml",
                "[server]\nlisten = \"127.0.0.1:7\"\n[auth]\naccess_token_ttl_secs = 60\n",
            )?;
            let config =
                Config::load(Some(Path::new("steward.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.server.listen.port(), 7);
            assert_eq!(config.auth.access_token_ttl_secs, 60);
            assert_eq!(config.server.max_message_bytes, ServerConfig::default().max_message_bytes);
            Ok(())
        });
    }
}
