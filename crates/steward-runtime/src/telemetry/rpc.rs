//! Per-RPC telemetry on the server: the `rpc` span every call runs in and the
//! `rpc.server.duration` histogram.
//!
//! The histogram (milliseconds, OpenTelemetry RPC semantic conventions) carries `rpc.system`
//! (`grpc`), `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, so its count per series is
//! the call rate and the non-zero status codes are the errors. A call is recorded when its outcome
//! is known: at the response headers for a trailers-only response (every error of a unary call and
//! every refusal by the authentication layer), otherwise when the response body yields its
//! trailers, so a streaming call is measured over its whole life. A response dropped before its
//! status (the client went away, or the server's deadline cut the call) is recorded as
//! `CANCELLED`, or `DEADLINE_EXCEEDED` once the configured request timeout has passed.
//!
//! Only methods Steward serves (its descriptor set, health, reflection) are named; any other path
//! is recorded as `_OTHER` so that callers cannot inflate the number of series.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use opentelemetry::metrics::Histogram;
use opentelemetry::KeyValue;

/// The histogram's name.
pub const DURATION_METRIC: &str = "rpc.server.duration";

/// `rpc.service` and `rpc.method` of a request path; `_OTHER` for a method Steward does not serve,
/// so that callers cannot inflate the number of series.
pub fn service_and_method(path: &str) -> (&str, &str) {
    const OTHER: (&str, &str) = ("_OTHER", "_OTHER");
    let known = crate::routing::known_method(path);
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) if known => (service, method),
        _ => OTHER,
    }
}

/// The span a call runs in, made a child of the caller's W3C trace context when it sent one.
/// Named `{rpc.service}/{rpc.method}` and of kind server when exported.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = service_and_method(path);
    let span = tracing::info_span!(
        "rpc",
        method = %path,
        // Recorded by the request-id layer, which also generates one when the caller sent none.
        request_id = tracing::field::Empty,
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    super::set_remote_parent(&span, request.headers());
    span
}

/// The tower layer recording [`DURATION_METRIC`] for every call. Put it outside the
/// authentication layer so refused calls are counted too.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    duration: Histogram<f64>,
    request_timeout: Duration,
}

impl RpcMetricsLayer {
    /// A layer recording into the global meter provider as it is now (a no-op one unless
    /// [`super::init`] installed the OTLP exporter). `request_timeout` is the server's unary
    /// deadline, used to tell a deadline from a cancellation.
    pub fn new(request_timeout: Duration) -> Self {
        let duration = opentelemetry::global::meter(super::SCOPE)
            .f64_histogram(DURATION_METRIC)
            .with_unit("ms")
            .with_description("Duration of inbound RPCs, by service, method and gRPC status code")
            .build();
        Self { duration, request_timeout }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, layer: self.clone() }
    }
}

/// The service produced by [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = service_and_method(request.uri().path());
        let attributes: Arc<[KeyValue]> = Arc::from([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_string()),
            KeyValue::new("rpc.method", method.to_string()),
        ]);
        let mut recorder = Recorder {
            histogram: self.layer.duration.clone(),
            attributes,
            start: Instant::now(),
            request_timeout: self.layer.request_timeout,
            span: tracing::Span::none(),
            done: false,
            streaming: false,
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            // Polled inside the call's `rpc` span (tonic enters it around the whole future).
            recorder.span = tracing::Span::current();
            let response = match future.await {
                Ok(response) => response,
                Err(err) => {
                    recorder.record(tonic::Code::Unknown);
                    return Err(err);
                }
            };
            if let Some(code) = status_of(response.headers()) {
                // Trailers-only: the outcome is in the headers and the body is empty.
                recorder.record(code);
                return Ok(response);
            }
            recorder.streaming = true;
            Ok(response.map(|body| tonic::body::Body::new(MeteredBody { inner: body, recorder })))
        })
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// Records one call once, when its status is known or when it is abandoned.
struct Recorder {
    histogram: Histogram<f64>,
    attributes: Arc<[KeyValue]>,
    start: Instant,
    request_timeout: Duration,
    span: tracing::Span,
    done: bool,
    /// The response headers went out and the body is being sent: from here on the unary
    /// deadline no longer applies (streams may outlive it).
    streaming: bool,
}

impl Recorder {
    fn record(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let mut attributes = self.attributes.to_vec();
        attributes.push(KeyValue::new("rpc.grpc.status_code", code as i64));
        self.histogram.record(elapsed_ms, &attributes);
        self.span.record("rpc.grpc.status_code", code as i64);
        // Server-side error statuses per the OpenTelemetry gRPC conventions; the others are the
        // caller's mistakes and leave the span status unset.
        if matches!(
            code,
            tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unimplemented
                | tonic::Code::Internal
                | tonic::Code::Unavailable
                | tonic::Code::DataLoss
        ) {
            self.span.record("otel.status_code", "error");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned: a response body dropped before its trailers is the client going away;
            // a response never produced within the unary deadline is the deadline.
            let code = if !self.streaming && self.start.elapsed() >= self.request_timeout {
                tonic::Code::DeadlineExceeded
            } else {
                tonic::Code::Cancelled
            };
            self.record(code);
        }
    }
}

/// A response body that records the call when its trailers (the gRPC status) go by.
struct MeteredBody {
    inner: tonic::body::Body,
    recorder: Recorder,
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    this.recorder.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.recorder.record(status.code()),
            // A body that ends without trailers carries no status: the client sees an error.
            Poll::Ready(None) => this.recorder.record(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_named_and_others_are_not() {
        assert_eq!(
            service_and_method("/steward.auth.v1.AuthService/SignIn"),
            ("steward.auth.v1.AuthService", "SignIn")
        );
        assert_eq!(
            service_and_method("/steward.admin.v1.AdminInternalService/LookupAdministrator"),
            ("steward.admin.v1.AdminInternalService", "LookupAdministrator")
        );
        assert_eq!(
            service_and_method("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        for unknown in
            ["/grpc.health.v1.Health/Nope", "/x.Y/Z", "/", "", "/steward.auth.v1.AuthService/"]
        {
            assert_eq!(service_and_method(unknown), ("_OTHER", "_OTHER"), "{unknown}");
        }
    }
}
