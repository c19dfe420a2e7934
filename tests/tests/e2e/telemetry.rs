//! Telemetry, checked against a real OTLP/gRPC receiver: a small in-process collector that
//! records what the services export. The services run as three servers (as deployed), so the
//! internal call of a sign-in crosses a real gRPC hop between two servers.
//!
//! The OpenTelemetry providers and the tracing subscriber are process-wide, so the whole check
//! is one test (nextest runs it in its own process). It runs on SQLite only: exporting does not
//! touch the database, and a second backend would install the providers twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use steward_proto::admin::v1::ListAdministratorsRequest;
use steward_proto::auth::v1::{sign_in_response, SignInRequest};
use steward_runtime::config::{OtlpEndpoint, TelemetryConfig};
use steward_server::ServiceKind;
use steward_storage::testing::Backend;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

use crate::harness::{Stack, PASSWORD};

/// A span as received: the exporting service and the fields the checks need.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    service_name: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<KeyValue>,
}

/// One data point of `rpc.server.duration`: its attributes and count.
#[derive(Clone, Debug)]
struct DurationPoint {
    attributes: HashMap<String, String>,
    count: u64,
}

/// Records everything exported to it.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    durations: Arc<Mutex<Vec<DurationPoint>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(|kv| value_text(kv.value.as_ref()))
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        name: span.name,
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span.attributes,
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_metrics in request.into_inner().resource_metrics {
            for scope in resource_metrics.scope_metrics {
                for metric in scope.metrics {
                    if metric.name != steward_runtime::telemetry::rpc::DURATION_METRIC {
                        continue;
                    }
                    assert_eq!(metric.unit, "ms");
                    let Some(metric::Data::Histogram(histogram)) = metric.data else {
                        panic!("{} is not a histogram: {:?}", metric.name, metric.data);
                    };
                    for point in histogram.data_points {
                        let attributes = point
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
                            .collect();
                        received.push(DurationPoint { attributes, count: point.count });
                    }
                }
            }
        }
        self.durations.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on an ephemeral port; returns the endpoint URL.
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        format!("http://{addr}")
    }

    /// Serves OTLP/gRPC over TLS with a certificate of the dev CA written under `dir`; returns
    /// the `https://localhost:PORT` endpoint and the CA file.
    async fn start_tls(&self, dir: &std::path::Path) -> (String, std::path::PathBuf) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = steward_server::dev_tls::ensure(dir, addr).unwrap();
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(&tls.cert_file).unwrap(),
            std::fs::read(&tls.key_file).unwrap(),
        );
        let router = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        (format!("https://localhost:{}", addr.port()), tls.ca_file)
    }

    fn spans_of(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    fn durations(&self) -> Vec<DurationPoint> {
        self.durations.lock().unwrap().clone()
    }
}

/// Waits (generously: the batch exporter sends every few seconds) until `ready` holds.
async fn eventually<T>(
    collector: &Collector,
    what: &str,
    mut ready: impl FnMut() -> Option<T>,
) -> T {
    for _ in 0..600 {
        if let Some(value) = ready() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans: Vec<String> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| format!("{} {} {}<-{}", s.name, s.trace_id, s.span_id, s.parent_span_id))
        .collect();
    panic!(
        "the collector never received {what}; spans: {spans:#?}; durations: {:#?}",
        collector.durations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_export_joined_traces_and_duration_metrics_over_otlp() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let telemetry_config = TelemetryConfig {
        otlp_endpoint: OtlpEndpoint::try_from(endpoint).unwrap(),
        metrics_interval_secs: Some(1),
        ..TelemetryConfig::default()
    };
    let telemetry = steward_runtime::telemetry::init(&telemetry_config, "steward-e2e").unwrap();
    assert!(telemetry.is_exporting());
    let stack = Stack::start_split_with(Backend::Sqlite, |config| {
        config.telemetry = telemetry_config.clone();
    })
    .await;
    let owner = stack.owner().await;

    // (a) A sign-in carrying the caller's W3C trace context. The auth server asks the admin
    // server (another server, over gRPC) for the administrator; both calls join the trace.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let mut request = tonic::Request::new(SignInRequest {
        email: owner.email.clone(),
        password: PASSWORD.into(),
        organization: String::new(),
    });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{caller_span_id}-01").parse().unwrap());
    let auth = stack.client_for(ServiceKind::Auth).await;
    let reply = auth.auth().sign_in(request).await.unwrap().into_inner();
    assert!(matches!(reply.result, Some(sign_in_response::Result::Tokens(_))), "{reply:?}");

    let sign_in_name = "steward.auth.v1.AuthService/SignIn";
    let lookup_name = "steward.admin.v1.AdminInternalService/LookupAdministrator";
    let spans = eventually(&collector, "both server spans of the sign-in trace", || {
        let spans = collector.spans_of(&trace_id);
        let has = |name: &str| spans.iter().any(|s| s.name == name);
        (has(sign_in_name) && has(lookup_name)).then_some(spans)
    })
    .await;
    let sign_in = spans.iter().find(|s| s.name == sign_in_name).unwrap();
    let lookup = spans.iter().find(|s| s.name == lookup_name).unwrap();
    for span in [sign_in, lookup] {
        assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
        assert_eq!(span.service_name, "steward-e2e", "{span:?}");
        assert_eq!(attribute(&span.attributes, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attribute(&span.attributes, "rpc.grpc.status_code").as_deref(), Some("0"));
    }
    assert_eq!(
        attribute(&sign_in.attributes, "rpc.service").as_deref(),
        Some("steward.auth.v1.AuthService")
    );
    assert_eq!(attribute(&lookup.attributes, "rpc.method").as_deref(), Some("LookupAdministrator"));
    // The receiving server's span is the child of the caller's span...
    assert_eq!(sign_in.parent_span_id, caller_span_id);
    // ...and the callee's span descends from it through the propagated context.
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = vec![lookup.name.clone()];
    let mut parent = lookup.parent_span_id.as_str();
    while parent != sign_in.span_id {
        let Some(span) = by_id.get(parent) else {
            panic!("the callee's parent chain {chain:?} stops at {parent} before the sign-in span");
        };
        chain.push(span.name.clone());
        parent = span.parent_span_id.as_str();
    }

    // (b) A refused call: no token on an Administrator RPC is UNAUTHENTICATED.
    let anonymous = stack.client().await;
    let refused = anonymous
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let series = |method: &str, code: Code| {
        let code = (code as i32).to_string();
        let method = method.to_string();
        move |point: &DurationPoint| {
            point.attributes.get("rpc.system").map(String::as_str) == Some("grpc")
                && point.attributes.get("rpc.method") == Some(&method)
                && point.attributes.get("rpc.grpc.status_code") == Some(&code)
                && point.count > 0
        }
    };
    let durations =
        eventually(&collector, "the sign-in and the refused call in rpc.server.duration", || {
            let durations = collector.durations();
            let refused = durations.iter().any(series("ListAdministrators", Code::Unauthenticated));
            let signed_in = durations.iter().any(series("SignIn", Code::Ok));
            (refused && signed_in).then_some(durations)
        })
        .await;
    let refused_point =
        durations.iter().find(|p| series("ListAdministrators", Code::Unauthenticated)(p)).unwrap();
    assert_eq!(
        refused_point.attributes.get("rpc.service").map(String::as_str),
        Some("steward.admin.v1.AdminService")
    );

    // Shutdown flushes and stops the exporters cleanly.
    telemetry.shutdown().await.unwrap();
}

// An https:// collector: traces and metrics go over TLS, trusting telemetry.otlp_ca_file (a
// private CA, as in-cluster collectors have). Its own test, so its own process and providers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_over_tls_trusts_the_configured_ca() {
    let collector = Collector::default();
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, ca_file) = collector.start_tls(dir.path()).await;
    let telemetry_config = TelemetryConfig {
        otlp_endpoint: OtlpEndpoint::try_from(endpoint).unwrap(),
        otlp_ca_file: Some(ca_file),
        metrics_interval_secs: Some(1),
        ..TelemetryConfig::default()
    };
    let telemetry = steward_runtime::telemetry::init(&telemetry_config, "steward-e2e").unwrap();
    assert!(telemetry.is_exporting());
    let stack = Stack::start_with(Backend::Sqlite, |config| {
        config.telemetry = telemetry_config.clone();
    })
    .await;
    let refused = stack
        .client()
        .await
        .admin()
        .list_administrators(ListAdministratorsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    eventually(&collector, "a span and a duration point over TLS", || {
        let spans = collector.spans.lock().unwrap().len();
        let refused = collector.durations().iter().any(|point| {
            point.attributes.get("rpc.method").map(String::as_str) == Some("ListAdministrators")
        });
        (spans > 0 && refused).then_some(())
    })
    .await;
}
