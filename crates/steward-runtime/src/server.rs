//! The server every Steward service runs in: health (NOT_SERVING until its database answers),
//! reflection v1 and v1alpha, the authentication layer, transport limits, per-RPC spans and
//! metrics (`telemetry::rpc`), and a graceful shutdown that lets in-flight calls finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::authn::AuthLayer;
use crate::config::ServerConfig;
use crate::telemetry::rpc::RpcMetricsLayer;
use crate::tls::ServerTls;

/// Answers whether the service's dependencies (its database) are reachable.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync + 'static>;

/// How often readiness is re-checked.
const READINESS_INTERVAL: Duration = Duration::from_secs(2);

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
}

/// Everything `serve` needs besides the services themselves.
pub struct ServeOptions {
    /// Limits and timeouts.
    pub server: ServerConfig,
    /// Fully-qualified names of the gRPC services mounted, reported by the health service.
    pub health_names: Vec<String>,
    /// Encoded `FileDescriptorSet`s served by reflection.
    pub descriptor_sets: Vec<&'static [u8]>,
    /// Readiness probe of the service's dependencies.
    pub readiness: ReadinessCheck,
    /// Authentication and the role table, applied to every call.
    pub auth: AuthLayer,
    /// The plaintext listener serving only `grpc.health.v1` (`server.health_listen`), if any.
    pub health_listener: Option<TcpListener>,
}

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting calls, lets
/// in-flight ones finish (bounded by `shutdown_grace`) and returns.
#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
pub async fn serve(
    routes: Routes,
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let ServeOptions {
        server: limits,
        health_names,
        descriptor_sets,
        readiness,
        auth,
        health_listener,
    } = options;
    // Loaded before anything listens, so a bad certificate stops the start with its reason.
    let tls = if limits.tls.enabled() { Some(ServerTls::load(limits.tls.clone())?) } else { None };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_all(&reporter, &health_names, ServingStatus::NotServing).await;

    // google.rpc error details too, so grpcurl and other reflection clients can decode the
    // BadRequest / PreconditionFailure / ErrorInfo / RetryInfo details of every error.
    let mut reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
    for set in &descriptor_sets {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1 = reflection_v1.build_v1()?;
    let reflection_v1alpha = reflection_v1alpha.build_v1alpha()?;

    let mut tasks = Vec::new();
    if let Some(listener) = health_listener {
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
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let (stop_tx, stop_rx) = watch::channel(false);
    let readiness_task = tokio::spawn(watch_readiness(
        reporter.clone(),
        health_names.clone(),
        readiness,
        stop_rx.clone(),
    ));

    let grace = limits.shutdown_grace();
    let signal = {
        let reporter = reporter.clone();
        let names = health_names.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested, finishing in-flight calls");
            let _ = stop_tx.send(true);
            set_all(&reporter, &names, ServingStatus::NotServing).await;
        }
    };

    let router = Server::builder()
        .concurrency_limit_per_connection(limits.max_concurrent_streams_per_connection as usize)
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .timeout(limits.request_timeout())
        .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_secs.max(1))))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // One `rpc` span per call, joined to the caller's W3C trace context.
        .trace_fn(crate::telemetry::rpc::server_span)
        // Outermost, so calls refused by `auth` are measured too (the time a call waits for a
        // concurrency slot is not: that wait happens before the call starts).
        .layer(RpcMetricsLayer::new(limits.request_timeout()))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests))
        .layer(auth)
        .add_routes(routes);
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match tls {
            Some(tls) => {
                tasks.push(tls.clone().watch(limits.tls.reload_interval()));
                let (incoming, accept) = tls.incoming(listener);
                tasks.push(accept);
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(no_delay(listener), signal)),
        };

    // In-flight unary calls finish; long-lived streams are cut once the grace period is over.
    let mut stopped = stop_rx;
    let result = tokio::select! {
        result = server => result.map_err(ServeError::from),
        () = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace period over, dropping remaining calls");
            Ok(())
        }
    };
    readiness_task.abort();
    for task in tasks {
        task.abort();
    }
    result
}

async fn set_all(reporter: &HealthReporter, names: &[String], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(name, status).await;
    }
}

#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
async fn watch_readiness(
    reporter: HealthReporter,
    names: Vec<String>,
    readiness: ReadinessCheck,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let ready = readiness().await;
        if last != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            if *stop.borrow() {
                return;
            }
            tracing::info!(ready, "readiness changed");
            set_all(&reporter, &names, status).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
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
