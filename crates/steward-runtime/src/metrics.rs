//! Metrics beyond the per-RPC histogram ([`crate::telemetry::rpc`]), and the Prometheus
//! endpoint (`telemetry.metrics_listen`).
//!
//! Every metric goes through the OpenTelemetry meter, so it is exported the same way over OTLP
//! and scraped at `/metrics` (the Prometheus text format, names converted by the exporter:
//! `steward.outbox.pending` becomes `steward_outbox_pending`). Gauges are read when metrics are
//! collected: cheap in-memory ones directly ([`gauge_fn`]); those that need the database from
//! the last run of a sampler ([`spawn_sampler`]) that queries every [`SAMPLE_INTERVAL`], and only
//! when metrics are exported at all, so that a process without metrics runs no such statement.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `rpc.server.duration` (ms) | histogram | `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | `steward.db.pool.connections` | gauge | `service`, `state` (`idle`, `used`) |
//! | `steward.outbox.pending` | gauge | `outbox` (the table; `auth_mail_outbox` is the mail backlog) |
//! | `steward.agents.connected` | gauge | |
//! | `steward.run_targets.active` | gauge | `state` (each non-terminal run state) |
//! | `steward.auth.throttled` | counter | |
//! | `steward.runtime.tasks` | gauge | (tokio tasks alive in the process: a leak shows as growth) |

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use opentelemetry::metrics::ObservableGauge;
pub use opentelemetry::metrics::{Counter, Meter};
pub use opentelemetry::KeyValue;

/// Connections the `/metrics` listener serves at once.
const METRICS_CONNECTIONS: usize = 16;

/// How often samplers query the database.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// One measurement: its labels and value.
pub type Sample = (Vec<KeyValue>, i64);

type Callback = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The Prometheus registry the `/metrics` endpoint renders, when `telemetry.metrics_listen` is
/// set.
static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// Callbacks of each gauge name: one instrument per name, however many services of the process
/// report into it.
static GAUGES: LazyLock<Mutex<HashMap<&'static str, Gauge>>> = LazyLock::new(Mutex::default);

struct Gauge {
    callbacks: Arc<Mutex<Vec<Callback>>>,
    _instrument: ObservableGauge<i64>,
}

/// Marks metrics as exported (OTLP or Prometheus); samplers start only then.
pub(crate) fn enable(registry: Option<prometheus::Registry>) {
    ENABLED.store(true, Ordering::Relaxed);
    if let Some(registry) = registry {
        let _ = REGISTRY.set(registry);
    }
    // Read on the collector's thread through a handle taken here, inside the runtime.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        gauge_fn("steward.runtime.tasks", "Tokio tasks alive in the process", move || {
            let alive = runtime.metrics().num_alive_tasks();
            vec![(Vec::new(), i64::try_from(alive).unwrap_or(i64::MAX))]
        });
    }
}

/// Whether metrics are exported by this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Steward's meter.
pub fn meter() -> Meter {
    opentelemetry::global::meter(crate::telemetry::SCOPE)
}

/// Reports `read()` under the gauge `name` whenever metrics are collected. `read` must be cheap
/// and must not block: it runs on the collector's thread.
pub fn gauge_fn(
    name: &'static str,
    description: &'static str,
    read: impl Fn() -> Vec<Sample> + Send + Sync + 'static,
) {
    let mut gauges = GAUGES.lock().unwrap_or_else(PoisonError::into_inner);
    let gauge = gauges.entry(name).or_insert_with(|| {
        let callbacks: Arc<Mutex<Vec<Callback>>> = Arc::default();
        let reading = callbacks.clone();
        let instrument = meter()
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                let callbacks = reading.lock().unwrap_or_else(PoisonError::into_inner);
                for callback in callbacks.iter() {
                    for (labels, value) in callback() {
                        observer.observe(value, &labels);
                    }
                }
            })
            .build();
        Gauge { callbacks, _instrument: instrument }
    });
    gauge.callbacks.lock().unwrap_or_else(PoisonError::into_inner).push(Box::new(read));
}

/// When metrics are exported, runs `sample` now and every [`SAMPLE_INTERVAL`], reporting its
/// last answer under the gauge `name`; `None` (nothing runs) otherwise. A failed sample keeps
/// the previous values.
pub fn spawn_sampler<F, Fut, E>(
    name: &'static str,
    description: &'static str,
    sample: F,
) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<Sample>, E>> + Send,
    E: std::fmt::Display,
{
    if !enabled() {
        return None;
    }
    let last: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let reading = last.clone();
    gauge_fn(name, description, move || {
        reading.lock().unwrap_or_else(PoisonError::into_inner).clone()
    });
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match sample().await {
                Ok(values) => *last.lock().unwrap_or_else(PoisonError::into_inner) = values,
                Err(err) => tracing::debug!(metric = name, error = %err, "metric sample failed"),
            }
        }
    }))
}

/// When metrics are exported, reports how many messages `outbox` holds undelivered as
/// `steward.outbox.pending{outbox=<table>}`.
pub fn spawn_outbox_backlog(
    outbox: steward_storage::outbox::Outbox,
    db: sea_orm::DatabaseConnection,
) -> Option<tokio::task::JoinHandle<()>> {
    spawn_sampler(
        "steward.outbox.pending",
        "Messages waiting in an outbox (auth_mail_outbox: mail not yet handed to SMTP)",
        move || {
            let db = db.clone();
            async move {
                let pending = outbox.pending(&db).await?;
                Ok::<_, sea_orm::DbErr>(vec![(
                    vec![KeyValue::new("outbox", outbox.table())],
                    pending,
                )])
            }
        },
    )
}

/// The Prometheus text rendering of every metric, or `None` without `telemetry.metrics_listen`.
pub fn render() -> Option<String> {
    use prometheus::Encoder;
    let registry = REGISTRY.get()?;
    let mut text = Vec::new();
    if let Err(err) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut text) {
        tracing::warn!(error = %err, "cannot render metrics");
    }
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// Serves `GET /metrics` over plaintext HTTP/1.1 on `listener` until the task is aborted.
#[allow(clippy::disallowed_methods)] // wall-clock pause after a failed accept (e.g. no fds left)
pub fn serve_http(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;

    async fn answer(
        request: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<Full<bytes::Bytes>>, std::convert::Infallible> {
        let (status, content_type, body) = match (request.method(), request.uri().path()) {
            (&http::Method::GET, "/metrics") => match render() {
                Some(text) => {
                    (http::StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
                }
                None => (
                    http::StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    "metrics are not exported by this process\n".to_string(),
                ),
            },
            (_, "/metrics") => (
                http::StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "GET only\n".to_string(),
            ),
            _ => (
                http::StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: metrics are at /metrics\n".to_string(),
            ),
        };
        let mut response = http::Response::new(Full::new(bytes::Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        Ok(response)
    }

    // Scrapers are few: a bounded number of connections, each with a deadline for its request
    // headers and for its whole life, so slow or idle clients cannot hold file descriptors.
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let _permit = permit;
                let io = hyper_util::rt::TokioIo::new(stream);
                let connection = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .keep_alive(false)
                    .serve_connection(io, service_fn(answer));
                match tokio::time::timeout(Duration::from_secs(30), connection).await {
                    Ok(Err(err)) => tracing::debug!(error = %err, "metrics connection ended"),
                    Err(_) => tracing::debug!("metrics connection over its 30 s"),
                    Ok(Ok(())) => {}
                }
            });
        }
    })
}
