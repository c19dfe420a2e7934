//! The server every Steward service runs in: the public and internal listeners
//! ([`crate::routing`]), health (readiness NOT_SERVING until the database answers, each service's
//! name also while a peer its calls need does not answer; liveness always SERVING), reflection v1
//! and v1alpha listing what each listener serves, gRPC-Web and CORS on the public listener,
//! request ids ([`crate::request_id`]), the authentication layer, transport limits, per-RPC spans
//! and metrics (`telemetry::rpc`), and a graceful shutdown that lets in-flight calls finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::authn::AuthLayer;
use crate::config::ServerConfig;
use crate::deadline::DeadlineLayer;
use crate::request_id::RequestIdLayer;
use crate::routing::{Listener, RoutingLayer};
use crate::telemetry::rpc::RpcMetricsLayer;
use crate::tls::ServerTls;

/// Answers whether the service's dependencies (its database) are reachable.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync + 'static>;

/// How often readiness is re-checked.
const READINESS_INTERVAL: Duration = Duration::from_secs(2);

/// The health name of liveness: SERVING for as long as the process serves calls, whatever its
/// database or its peers do (Kubernetes' liveness probe; restarting a pod brings neither back).
/// The empty name is readiness: NOT_SERVING while the database does not answer and from the start
/// of a shutdown. Each service's name is that, and also NOT_SERVING while a peer its calls need
/// does not answer ([`Dependency`]).
pub const LIVENESS: &str = "liveness";

/// How long a peer's health check may take before the peer counts as not answering.
pub const PEER_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// A peer service that some of the process's services call while serving a call (synchronously,
/// not through an outbox, which waits for the peer by itself). Their health names say
/// NOT_SERVING while the peer does not answer; the empty name (the probes' readiness) and
/// `liveness` never depend on a peer, so a peer's outage never takes pods out of rotation.
pub struct Dependency {
    /// The peer's name in logs, e.g. `admin`.
    pub peer: String,
    /// Fully-qualified names of the process's services whose calls need the peer.
    pub needed_by: Vec<String>,
    /// Whether the peer answers now, e.g. [`peer_readiness`].
    pub check: ReadinessCheck,
}

/// Asks the peer behind `channel` (the channel its calls go through) for its readiness: true
/// when `grpc.health.v1` answers SERVING for the empty name within [`PEER_HEALTH_TIMEOUT`]. The
/// empty name depends on the peer's database only, never on the peer's own peers, so services
/// that need each other cannot keep each other NOT_SERVING.
pub fn peer_readiness(channel: Channel) -> ReadinessCheck {
    use tonic_health::pb::health_check_response::ServingStatus as Answer;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    Arc::new(move || {
        let mut client = HealthClient::new(channel.clone());
        Box::pin(async move {
            let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
            request.set_timeout(PEER_HEALTH_TIMEOUT);
            // The timeout bounds connecting too, which the request's deadline does not.
            let answer = tokio::time::timeout(PEER_HEALTH_TIMEOUT, client.check(request)).await;
            matches!(answer, Ok(Ok(reply)) if reply.get_ref().status == Answer::Serving as i32)
        })
    })
}

/// The server could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS material named by `server.tls` does not load.
    #[error("server.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// `server.cors_allowed_origins` holds something that is not an origin.
    #[error(
        "server.cors_allowed_origins: {0:?} is not an origin such as https://console.example.com"
    )]
    CorsOrigin(String),
}

/// Everything `serve` needs besides the services themselves.
pub struct ServeOptions {
    /// Limits, timeouts, TLS and CORS.
    pub server: ServerConfig,
    /// Fully-qualified names of the process's gRPC services, internal ones included: reported by
    /// the health service and, per listener, by reflection.
    pub services: Vec<String>,
    /// Encoded `FileDescriptorSet`s served by reflection.
    pub descriptor_sets: Vec<&'static [u8]>,
    /// Readiness probe of the process's own dependencies (its databases).
    pub readiness: ReadinessCheck,
    /// The peers some of its services need while serving, each checked as often as readiness.
    pub dependencies: Vec<Dependency>,
    /// Authentication and the role table, applied to every call. The service credential is
    /// accepted on the internal listener only.
    pub auth: AuthLayer,
}

/// The sockets a process serves on.
pub struct Listeners {
    /// `server.listen`: public services, gRPC-Web.
    pub public: TcpListener,
    /// `server.internal_listen`: every service, the service credential.
    pub internal: TcpListener,
    /// `server.health_listen`: plaintext, `grpc.health.v1` only (Kubernetes' probes).
    pub health: Option<TcpListener>,
    /// `telemetry.metrics_listen`: plaintext HTTP, `GET /metrics` only ([`crate::metrics`]).
    pub metrics: Option<TcpListener>,
}

type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serves `router` on `listener` (TLS when `tls` is set) until `signal` resolves.
macro_rules! serve_on {
    ($router:expr, $listener:expr, $tls:expr, $signal:expr, $tasks:expr) => {{
        let serving: Serving = match $tls {
            Some(tls) => {
                let (incoming, accept) = ServerTls::incoming(tls, $listener);
                $tasks.push(accept);
                Box::pin($router.serve_with_incoming_shutdown(incoming, $signal))
            }
            None => Box::pin($router.serve_with_incoming_shutdown(no_delay($listener), $signal)),
        };
        serving
    }};
}

/// Serves `routes` on `listeners` until `shutdown` resolves, then shuts down gracefully: health
/// says NOT_SERVING at once while both listeners go on serving for `shutdown_drain` (load
/// balancers notice), then the public listener stops accepting (HTTP/2 GOAWAY) and its in-flight
/// calls finish, then the internal one likewise (in-flight calls of the process's own services
/// may still call each other through it); all within `shutdown_grace` of the listeners closing.
#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
pub async fn serve(
    routes: Routes,
    options: ServeOptions,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let ServeOptions { server: limits, services, descriptor_sets, readiness, dependencies, auth } =
        options;
    // Loaded before anything listens, so a bad certificate stops the start with its reason.
    let tls = if limits.tls.enabled() { Some(ServerTls::load(limits.tls.clone())?) } else { None };
    let cors = cors_layer(&limits.cors_allowed_origins)?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_all(&reporter, &services, ServingStatus::NotServing).await;
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;

    let public_routing = RoutingLayer::new(Listener::Public, &services);
    let internal_routing = RoutingLayer::new(Listener::Internal, &services);
    let (public_v1, public_v1alpha) = reflection(&public_routing.served(), &descriptor_sets)?;
    let (internal_v1, internal_v1alpha) = reflection(&internal_routing.served(), &descriptor_sets)?;

    let mut tasks = Vec::new();
    if let Some(listener) = listeners.health {
        // Kubernetes' gRPC probes speak plaintext: this listener carries health and nothing else.
        let health = Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming(no_delay(listener));
        tasks.push(tokio::spawn(async move {
            if let Err(err) = health.await {
                tracing::error!(error = %err, "health listener failed");
            }
        }));
    }
    if let Some(listener) = listeners.metrics {
        tasks.push(crate::metrics::serve_http(listener));
    }
    let public_routes = routes
        .clone()
        .add_service(health_service.clone())
        .add_service(public_v1)
        .add_service(public_v1alpha);
    let internal_routes =
        routes.add_service(health_service).add_service(internal_v1).add_service(internal_v1alpha);

    let readiness_task =
        tokio::spawn(watch_readiness(reporter.clone(), services.clone(), readiness, dependencies));
    let readiness_abort = readiness_task.abort_handle();
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };

    // The public listener closes after the drain; the internal one once the public one has no
    // call left (`stop_internal`, below).
    let (stop_public, stop_public_rx) = watch::channel(false);
    let (stop_internal, stop_internal_rx) = watch::channel(false);
    let grace = limits.shutdown_grace();
    let drain = limits.shutdown_drain();
    let signal = {
        let reporter = reporter.clone();
        let names = services.clone();
        async move {
            shutdown.await;
            // The watcher is gone before readiness flips, so it cannot flip it back.
            readiness_task.abort();
            let _ = readiness_task.await;
            // Readiness first, so load balancers stop sending calls while these finish.
            set_all(&reporter, &names, ServingStatus::NotServing).await;
            if !drain.is_zero() {
                tracing::info!(
                    drain_secs = drain.as_secs(),
                    "shutdown requested: NOT_SERVING, still serving while load balancers notice"
                );
                tokio::time::sleep(drain).await;
            }
            tracing::info!("shutdown: listeners closing, finishing in-flight calls");
            let _ = stop_public.send(true);
        }
    };
    tasks.push(tokio::spawn(signal));

    // A budget of concurrent calls per listener, so slow public calls (a burst of sign-ins
    // waiting for hashing) never hold up the internal calls of the other services.
    let public_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests));
    let internal_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests));
    let public = builder(&limits)
        // gRPC-Web arrives over HTTP/1.1 as well as HTTP/2.
        .accept_http1(true)
        .layer(tower::util::option_layer(cors))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(RequestIdLayer)
        .layer(DeadlineLayer::new(limits.request_timeout()))
        .layer(public_routing)
        // Outside `auth`, so calls refused by it are measured too (the time a call waits for a
        // concurrency slot is not: that wait happens before the call starts).
        .layer(RpcMetricsLayer::new(limits.request_timeout()))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(public_slots))
        .layer(auth.public())
        .add_routes(public_routes);
    let internal = builder(&limits)
        .layer(RequestIdLayer)
        .layer(DeadlineLayer::new(limits.request_timeout()))
        .layer(internal_routing)
        .layer(RpcMetricsLayer::new(limits.request_timeout()))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(internal_slots))
        .layer(auth)
        .add_routes(internal_routes);
    if let Some(tls) = &tls {
        tasks.push(tls.clone().watch(limits.tls.reload_interval()));
    }
    let public =
        serve_on!(public, listeners.public, tls.clone(), stopped(stop_public_rx.clone()), tasks);
    let internal = serve_on!(internal, listeners.internal, tls, stopped(stop_internal_rx), tasks);
    // A call in flight on the public listener may still call another service of this process
    // (dev, tests) through the internal one: that closes only once the public one is done.
    let public = async move {
        let result = public.await;
        let _ = stop_internal.send(true);
        result
    };

    // In-flight unary calls finish; long-lived streams are cut once the grace period is over.
    let result = tokio::select! {
        result = async { tokio::try_join!(public, internal) } => result.map(|_| ()).map_err(ServeError::from),
        () = async {
            stopped(stop_public_rx).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace period over, dropping remaining calls");
            Ok(())
        }
    };
    readiness_abort.abort();
    for task in tasks {
        task.abort();
    }
    result
}

/// The transport settings both listeners share.
fn builder(limits: &ServerConfig) -> Server {
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(limits.max_concurrent_streams_per_connection as usize)
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_secs.max(1))))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // One `rpc` span per call, joined to the caller's W3C trace context.
        .trace_fn(crate::telemetry::rpc::server_span);
    // GOAWAY only: tonic's age *grace* closes the connection abruptly after age + grace, without
    // any GOAWAY. Streams that outlive the age keep the old connection; the commands service
    // ends idle agent streams past the same age itself.
    if let Some(age) = connection_age(limits.max_connection_age_secs) {
        builder = builder.max_connection_age(age);
    }
    builder
}

/// `max_connection_age_secs` less up to 10%, drawn per listener so that replicas do not all
/// send GOAWAY at the same moment (tonic applies one age to every connection of a listener).
fn connection_age(secs: u64) -> Option<Duration> {
    use rand::Rng;
    (secs > 0).then(|| {
        let max = Duration::from_secs(secs);
        max.mul_f64(1.0 - rand::thread_rng().gen_range(0.0..0.1))
    })
}

/// Reflection (v1, v1alpha) listing `served`.
#[allow(clippy::type_complexity)]
fn reflection(
    served: &[String],
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    // google.rpc error details too, so grpcurl and other reflection clients can decode the
    // BadRequest / PreconditionFailure / ErrorInfo / RetryInfo details of every error.
    let configure = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        for set in descriptor_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for name in served {
            builder = builder.with_service_name(name.clone());
        }
        builder
    };
    Ok((configure().build_v1()?, configure().build_v1alpha()?))
}

/// CORS for gRPC-Web from `origins`; `None` (no CORS headers at all) when there are none.
fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, ServeError> {
    use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|origin| {
            // A browser's Origin is lower case, without userinfo, path or default port: anything
            // else would never match, so it is refused here rather than ignored silently.
            let valid = origin.parse::<http::Uri>().is_ok_and(|uri| {
                let default_port = matches!(
                    (uri.scheme_str(), uri.port_u16()),
                    (Some("https"), Some(443)) | (Some("http"), Some(80))
                );
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some()
                    && !uri.authority().is_some_and(|a| a.as_str().contains('@'))
                    && !default_port
                    && uri.path_and_query().is_none_or(|p| p.as_str().is_empty() || p == "/")
            }) && *origin == origin.to_ascii_lowercase()
                && !origin.ends_with('/');
            valid
                .then(|| http::HeaderValue::from_str(origin).ok())
                .flatten()
                .ok_or_else(|| ServeError::CorsOrigin(origin.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = HeaderName::from_static;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([http::Method::POST, http::Method::OPTIONS])
            .allow_headers([
                CONTENT_TYPE,
                AUTHORIZATION,
                header("x-grpc-web"),
                header("x-user-agent"),
                header("grpc-timeout"),
                header("x-request-id"),
                header("connect-protocol-version"),
                header("connect-timeout-ms"),
            ])
            .expose_headers([
                header("grpc-status"),
                header("grpc-message"),
                header("grpc-status-details-bin"),
                header("x-request-id"),
            ])
            .max_age(Duration::from_secs(24 * 3600)),
    ))
}

async fn set_all(reporter: &HealthReporter, names: &[String], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(name, status).await;
    }
}

/// Each health name's status from the database's answer and each dependency's: the empty name
/// and every service's name follow the database; a service's name is also NOT_SERVING while a
/// dependency it needs does not answer. `liveness` is not among them: it never changes.
fn statuses(
    names: &[String],
    database: bool,
    dependencies: &[Dependency],
    answering: &[bool],
) -> Vec<(String, ServingStatus)> {
    let status = |serving: bool| match serving {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    };
    let mut all = vec![(String::new(), status(database))];
    for name in names {
        let peers_answer = dependencies
            .iter()
            .zip(answering)
            .all(|(dependency, answers)| *answers || !dependency.needed_by.contains(name));
        all.push((name.clone(), status(database && peers_answer)));
    }
    all
}

/// Checks the database and every dependency every [`READINESS_INTERVAL`] and reports each name
/// that changed. Runs until aborted (at shutdown, before readiness turns NOT_SERVING for good).
#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
async fn watch_readiness(
    reporter: HealthReporter,
    names: Vec<String>,
    readiness: ReadinessCheck,
    dependencies: Vec<Dependency>,
) {
    let mut last: Vec<Option<ServingStatus>> = vec![None; names.len() + 1];
    let mut ready_last = None;
    let mut peers_last: Vec<Option<bool>> = vec![None; dependencies.len()];
    loop {
        let (database, answering) = tokio::join!(
            readiness(),
            futures::future::join_all(dependencies.iter().map(|d| (d.check)()))
        );
        for ((dependency, answers), before) in
            dependencies.iter().zip(&answering).zip(peers_last.iter_mut())
        {
            if *before != Some(*answers) {
                match answers {
                    true => tracing::info!(peer = %dependency.peer, "peer answers"),
                    false => tracing::warn!(
                        peer = %dependency.peer,
                        services = ?dependency.needed_by,
                        "peer does not answer: the services that need it report NOT_SERVING"
                    ),
                }
                *before = Some(*answers);
            }
        }
        if ready_last != Some(database) {
            tracing::info!(ready = database, "readiness changed");
            ready_last = Some(database);
        }
        let now = statuses(&names, database, &dependencies, &answering);
        for ((name, status), before) in now.into_iter().zip(last.iter_mut()) {
            if *before != Some(status) {
                reporter.set_service_status(&name, status).await;
                *before = Some(status);
            }
        }
        tokio::time::sleep(READINESS_INTERVAL).await;
    }
}

/// Resolves on SIGTERM or SIGINT: the shutdown future for production binaries.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The connections `listener` accepts, with Nagle's algorithm off as tonic's own `serve` sets it
/// (`serve_with_incoming` leaves sockets as accepted). With it on, a small response waits for
/// the client's delayed ACK: one call in ten took 40 ms more at low concurrency.
fn no_delay(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_name_follows_the_database_and_the_peers_it_needs_only() {
        let names: Vec<String> =
            ["commands.CommandService", "commands.AgentService"].map(String::from).to_vec();
        let admin = Dependency {
            peer: "admin".into(),
            needed_by: vec!["commands.CommandService".into()],
            check: Arc::new(|| Box::pin(async { true })),
        };
        let (serving, not) = (ServingStatus::Serving, ServingStatus::NotServing);
        let of = |database, answers| {
            statuses(&names, database, std::slice::from_ref(&admin), &[answers])
                .into_iter()
                .map(|(_, status)| status)
                .collect::<Vec<_>>()
        };
        // Order: "", CommandService, AgentService.
        assert_eq!(of(true, true), [serving, serving, serving]);
        assert_eq!(of(true, false), [serving, not, serving], "the peer: its dependents only");
        assert_eq!(of(false, true), [not, not, not], "the database: every name");
        assert_eq!(statuses(&names, true, &[], &[])[0].0, "", "the empty name comes first");
    }

    #[test]
    fn cors_origins_must_be_written_as_browsers_send_them() {
        for good in ["https://console.example.com", "http://localhost:5173"] {
            assert!(cors_layer(&[good.to_string()]).is_ok(), "{good}");
        }
        for bad in [
            "https://Console.example.com",
            "https://console.example.com/",
            "https://console.example.com:443",
            "http://console.example.com:80",
            "https://user@console.example.com",
            "https://console.example.com/app",
            "console.example.com",
            "*",
            "null",
        ] {
            assert!(cors_layer(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
