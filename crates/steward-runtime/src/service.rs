//! What a service crate receives to start: configuration, its database, channels to its peers
//! and the clock. Each service crate exposes `start(&ServiceContext, &mut RoutesBuilder)`, which
//! registers its gRPC services and spawns its background tasks; the binary does the rest.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::authn::ServiceCredential;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};

/// The current time. Injected so that expiry and throttling are tested without sleeping.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The real clock: the one place the service reads the wall clock.
#[allow(clippy::disallowed_methods)]
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// `clock` at the precision both databases store (microseconds): an answer built from the time
/// a row was written then equals the row read back later (PostgreSQL would otherwise drop the
/// nanoseconds the create answer showed).
pub fn at_stored_precision(clock: Clock) -> Clock {
    Arc::new(move || chrono::SubsecRound::trunc_subsecs(clock(), 6))
}

/// A channel to a peer service with the service credential attached.
pub type InternalChannel = InterceptedService<Channel, ServiceCredential>;

/// Channels to the other services. Connections are lazy: a peer that is down delays the calls
/// that need it (outbox relays retry), it never blocks start-up.
#[derive(Clone, Debug)]
pub struct Peers {
    /// The auth service.
    pub auth: Channel,
    /// The admin service.
    pub admin: Channel,
    /// The command-authorization service.
    pub commands: Channel,
    /// Credential for internal RPCs.
    pub credential: ServiceCredential,
}

impl Peers {
    /// Lazy channels to the URLs in `config.internal`.
    pub fn from_config(config: &Config) -> ApiResult<Self> {
        let internal = &config.internal;
        // One set of TLS material for the three peers: loaded (and later re-read) once.
        let any_https = [&internal.auth_url, &internal.admin_url, &internal.commands_url]
            .iter()
            .any(|url| url.starts_with("https://"));
        let tls = if any_https {
            Some(
                crate::tls::PeerTls::load(internal)
                    .map_err(|e| ApiError::internal(format!("internal TLS: {e}")))?,
            )
        } else {
            None
        };
        let channel = |url: &str| connect_peer(url, tls.as_ref());
        Ok(Self {
            auth: channel(&internal.auth_url)?,
            admin: channel(&internal.admin_url)?,
            commands: channel(&internal.commands_url)?,
            credential: ServiceCredential::new(&internal.service_token)?,
        })
    }

    /// Wraps `channel` so that calls carry the service credential.
    pub fn internal(&self, channel: &Channel) -> InternalChannel {
        InterceptedService::new(channel.clone(), self.credential.clone())
    }
}

/// A channel that connects on first use and reconnects after failures.
pub fn lazy_channel(url: &str) -> ApiResult<Channel> {
    peer_channel(url, &crate::config::InternalConfig::default())
}

/// A lazy channel to another Steward service: `https://` URLs are verified against
/// `internal.ca_file` (the system roots when unset), presenting `internal.client_cert_file` when
/// configured (mutual TLS for internal RPCs).
pub fn peer_channel(url: &str, internal: &crate::config::InternalConfig) -> ApiResult<Channel> {
    let tls = if url.starts_with("https://") {
        Some(
            crate::tls::PeerTls::load(internal)
                .map_err(|e| ApiError::internal(format!("TLS to {url}: {e}")))?,
        )
    } else {
        None
    };
    connect_peer(url, tls.as_ref())
}

/// A lazy channel to `url`; `https://` URLs connect through `tls`.
fn connect_peer(url: &str, tls: Option<&Arc<crate::tls::PeerTls>>) -> ApiResult<Channel> {
    let configure = |endpoint: Endpoint| {
        endpoint
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(15))
    };
    let uri: http::Uri =
        url.parse().map_err(|e| ApiError::internal(format!("bad peer url {url}: {e}")))?;
    if let (Some("https"), Some(tls)) = (uri.scheme_str(), tls) {
        return tls
            .channel(&uri, configure)
            .map_err(|e| ApiError::internal(format!("TLS to {url}: {e}")));
    }
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ApiError::internal(format!("bad peer url {url}: {e}")))?;
    Ok(configure(endpoint).connect_lazy())
}

/// Everything a service needs to start.
#[derive(Clone)]
pub struct ServiceContext {
    /// The whole configuration.
    pub config: Config,
    /// The service's own database, already migrated.
    pub db: DatabaseConnection,
    /// The other services.
    pub peers: Peers,
    /// The clock.
    pub clock: Clock,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext").field("peers", &self.peers).finish_non_exhaustive()
    }
}
