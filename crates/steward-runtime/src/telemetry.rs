//! Logs, traces and metrics.
//!
//! * Logs: structured fields, lowercase messages; JSON for collectors, pretty for people; always
//!   on stderr.
//! * Traces: one `rpc` span per call (see [`rpc::server_span`]). With `telemetry.otlp_endpoint`
//!   set, spans are exported over OTLP/gRPC through a `tracing-opentelemetry` layer, the incoming
//!   W3C `traceparent`/`tracestate` becomes the span's parent, and calls to other Steward services
//!   carry the current span's context (see [`inject_current_context`]).
//! * Metrics: `rpc.server.duration` per call (see [`rpc::RpcMetricsLayer`]), exported over
//!   OTLP/gRPC when the endpoint is set; recorded into a no-op meter otherwise.
//!
//! Without an endpoint nothing is exported, no propagator is installed and the SDK starts no
//! thread: behaviour is exactly logs plus local spans.

pub mod rpc;

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

/// Name of the OpenTelemetry tracer and meter (the instrumentation scope).
pub const SCOPE: &str = "steward";

/// Telemetry could not be set up or flushed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP/gRPC exporter needs a Tokio runtime to run its connection on.
    #[error("OTLP export must be set up inside a Tokio runtime")]
    NoRuntime,
    /// The exporter could not be built from the configured endpoint.
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The exporter's reason.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A provider failed to flush or stop.
    /// `telemetry.otlp_ca_file` cannot be read.
    #[error("{0}")]
    CaFile(String),
    /// The Prometheus exporter could not be built.
    #[error("cannot build the Prometheus exporter: {0}")]
    Prometheus(String),
    #[error("telemetry shutdown failed: {0}")]
    Shutdown(String),
}

/// The installed exporters. Keep it for the life of the process and call
/// [`Telemetry::shutdown`] on the way out so the last spans and metrics are flushed.
#[must_use = "call Telemetry::shutdown before exiting to flush exported telemetry"]
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// True when traces and metrics are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.tracer.is_some() || self.meter.is_some()
    }

    /// Flushes and stops the exporters (a no-op when nothing is exported). The SDK blocks while
    /// it flushes, so this runs on Tokio's blocking pool while the exporter's connection keeps
    /// running on the runtime.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        if !self.is_exporting() {
            return Ok(());
        }
        let Telemetry { tracer, meter } = self;
        // Both flush at once, so an unreachable collector costs one export timeout, not two.
        let traces = tokio::task::spawn_blocking(move || match tracer {
            Some(tracer) => tracer.shutdown().map_err(|err| format!("traces: {err}")),
            None => Ok(()),
        });
        let metrics = tokio::task::spawn_blocking(move || match meter {
            Some(meter) => meter.shutdown().map_err(|err| format!("metrics: {err}")),
            None => Ok(()),
        });
        let (traces, metrics) = tokio::join!(traces, metrics);
        let failures: Vec<String> = [traces, metrics]
            .into_iter()
            .filter_map(|joined| match joined {
                Ok(Ok(())) => None,
                Ok(Err(failure)) => Some(failure),
                Err(join) => Some(join.to_string()),
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(TelemetryError::Shutdown(failures.join("; ")))
        }
    }
}

/// Installs the global subscriber, writing logs to stderr (stdout is left to command output such
/// as the `dev` banner). `RUST_LOG` overrides the configured filter, which applies to exported
/// spans too.
///
/// With `config.otlp_endpoint` set (this must then run inside a Tokio runtime), it also installs
/// the OTLP trace and metric exporters as the global OpenTelemetry providers and the W3C trace
/// context propagator. `service.name` is `config.service_name`, else `OTEL_SERVICE_NAME`, else
/// `default_service_name`. The SDK also honours `OTEL_RESOURCE_ATTRIBUTES`,
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_COMPRESSION`,
/// `OTEL_BSP_*` and (when `metrics_interval_secs` is unset) `OTEL_METRIC_EXPORT_INTERVAL`.
///
/// Calling it twice is harmless: the second call keeps the first subscriber and exports nothing,
/// which suits tests.
pub fn init(
    config: &TelemetryConfig,
    default_service_name: &str,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => {
            // Colours only for a terminal: escapes are noise in files and log collectors.
            use std::io::IsTerminal;
            tracing_subscriber::fmt::layer()
                .compact()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);

    let resource =
        Resource::builder().with_service_name(service_name(config, default_service_name)).build();
    // Metrics: scraped at /metrics (telemetry.metrics_listen), exported over OTLP, or both.
    let prometheus = match config.metrics_listen {
        Some(_) => {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|err| TelemetryError::Prometheus(err.to_string()))?;
            Some((registry, exporter))
        }
        None => None,
    };
    let endpoint = config.otlp_endpoint.url();
    if endpoint.is_some() && tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let meter_provider = if prometheus.is_some() || endpoint.is_some() {
        let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
        let registry = match prometheus {
            Some((registry, exporter)) => {
                builder = builder.with_reader(exporter);
                Some(registry)
            }
            None => None,
        };
        if let Some(endpoint) = endpoint {
            let metric_exporter = otlp_exporter(
                opentelemetry_otlp::MetricExporter::builder().with_tonic(),
                endpoint,
                config,
            )?
            .build()
            .map_err(|source| TelemetryError::Exporter { signal: "metrics", source })?;
            let mut reader = PeriodicReader::builder(metric_exporter);
            if let Some(secs) = config.metrics_interval_secs {
                reader = reader.with_interval(Duration::from_secs(secs.max(1)));
            }
            builder = builder.with_reader(reader.build());
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        crate::metrics::enable(registry);
        Some(provider)
    } else {
        None
    };

    let Some(endpoint) = endpoint else {
        let _ = registry.try_init();
        return Ok(Telemetry { tracer: None, meter: meter_provider });
    };

    let span_exporter =
        otlp_exporter(opentelemetry_otlp::SpanExporter::builder().with_tonic(), endpoint, config)?
            .build()
            .map_err(|source| TelemetryError::Exporter { signal: "traces", source })?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(span_exporter)
        .with_resource(resource)
        .build();

    // The exporter's own transport (h2, hyper, tonic, tower) and the SDK are never exported,
    // whatever RUST_LOG says: exporting them would feed on itself.
    let own_transport = tracing_subscriber::filter::filter_fn(|metadata| {
        let target = metadata.target();
        !["h2", "hyper", "tonic", "tower", "opentelemetry"]
            .iter()
            .any(|prefix| target.starts_with(prefix))
    });
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer_provider.tracer(SCOPE))
        .with_threads(false)
        .with_filter(own_transport);
    if registry.with(traces).try_init().is_err() {
        // Another subscriber is already installed (a second call in tests): it has no layer for
        // these providers, so stop them rather than export nothing forever.
        let _ = tracer_provider.shutdown();
        if let Some(meter_provider) = meter_provider {
            let _ = meter_provider.shutdown();
        }
        return Ok(Telemetry::default());
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    tracing::info!(endpoint, "exporting traces and metrics over OTLP");
    Ok(Telemetry { tracer: Some(tracer_provider), meter: meter_provider })
}

/// `builder` dialling `endpoint`; over TLS for an `https://` endpoint, trusting the system's
/// roots plus `telemetry.otlp_ca_file` when set.
fn otlp_exporter<B>(
    builder: B,
    endpoint: &str,
    config: &TelemetryConfig,
) -> Result<B, TelemetryError>
where
    B: WithExportConfig + opentelemetry_otlp::WithTonicConfig,
{
    let builder = builder.with_endpoint(endpoint);
    if !endpoint.starts_with("https://") {
        return Ok(builder);
    }
    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(path) = &config.otlp_ca_file {
        let pem = std::fs::read(path).map_err(|err| {
            TelemetryError::CaFile(format!("telemetry.otlp_ca_file {}: {err}", path.display()))
        })?;
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    Ok(builder.with_tls_config(tls))
}

fn service_name(config: &TelemetryConfig, default_service_name: &str) -> String {
    if !config.service_name.is_empty() {
        return config.service_name.clone();
    }
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| default_service_name.to_string())
}

/// Makes `span` a child of the W3C trace context in `headers` (`traceparent`, `tracestate`),
/// when there is a valid one and a propagator is installed (OTLP export on).
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract_with_context(&Context::new(), &HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: then there is nothing to join.
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's W3C trace context into `metadata` of an outgoing call, when a
/// propagator is installed (OTLP export on); otherwise writes nothing.
pub fn inject_current_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// Reads propagation fields from HTTP/2 request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes propagation fields into gRPC metadata; a field that is not valid metadata is skipped.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()) else { return };
        let Ok(value) = tonic::metadata::MetadataValue::try_from(value) else { return };
        self.0.insert(key, value);
    }
}
