//! The caller's deadline, carried to the calls a handler makes to other Steward services.
//!
//! [`DeadlineLayer`] runs each call inside [`scope`] with its deadline: the sooner of its
//! `grpc-timeout` and `server.request_timeout_secs`. [`crate::authn::ServiceCredential`], the interceptor of every internal
//! call, then gives the peer call the time left less a margin ([`peer_timeout`]), so the peer
//! gives up, and this service answers `UNAVAILABLE`, before the caller's own deadline passes.
//! A call whose deadline has already passed is not sent at all.
//!
//! [`DeadlineLayer`] enforces the deadline of each call itself: the sooner of the caller's
//! `grpc-timeout` and `server.request_timeout_secs`, until the response starts (a stream is not
//! cut once it has begun). A call past it is answered `DEADLINE_EXCEEDED`, inside the
//! request-id, CORS and gRPC-Web layers, so the answer carries the request id and reaches a
//! browser like any other.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The longest an internal call may take, whatever the caller allows.
pub const MAX_PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// Time kept back from the caller's deadline for this service to answer after a peer failed.
const MARGIN: Duration = Duration::from_millis(250);

/// How much sooner than the caller's `grpc-timeout` this layer answers. tonic's transport
/// enforces that header too, outside every layer of Steward's, with a timer started a moment
/// earlier; timers fire on whole milliseconds, so without a lead the transport's could fire a
/// tick before this one and answer `CANCELLED` without the request id.
const TRANSPORT_LEAD: Duration = Duration::from_millis(2);

/// The `grpc-timeout` header (`<1 to 8 digits><H|M|S|m|u|n>`) as a duration.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs `future` with the deadline `timeout` from now, when there is one.
pub async fn scope<F: Future>(timeout: Option<Duration>, future: F) -> F::Output {
    match timeout.and_then(|timeout| Instant::now().checked_add(timeout)) {
        Some(deadline) => DEADLINE.scope(deadline, future).await,
        None => future.await,
    }
}

/// The timeout of an internal call made now: [`MAX_PEER_TIMEOUT`], or less when the caller's
/// deadline is nearer; `None` when that deadline leaves no time for the call at all.
pub fn peer_timeout() -> Option<Duration> {
    let Ok(deadline) = DEADLINE.try_with(|deadline| *deadline) else {
        return Some(MAX_PEER_TIMEOUT);
    };
    let left = deadline.checked_duration_since(Instant::now())?.checked_sub(MARGIN)?;
    (!left.is_zero()).then(|| left.min(MAX_PEER_TIMEOUT))
}

/// The tower layer answering calls past their deadline with `DEADLINE_EXCEEDED`.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    /// Calls get at most `limit` (`server.request_timeout_secs`) to start answering.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, limit: self.limit }
    }
}

/// The service produced by [`DeadlineLayer`].
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let asked = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout =
            asked.map_or(self.limit, |asked| asked.saturating_sub(TRANSPORT_LEAD).min(self.limit));
        // From now, not from the first poll of the answer.
        let deadline = Instant::now().checked_add(timeout);
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return scope(Some(timeout), response).await;
            };
            // The handler runs in the scope, so its internal calls get the time left.
            match tokio::time::timeout_at(deadline, scope(Some(timeout), response)).await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::info!(
                        timeout_ms = timeout.as_millis() as u64,
                        "call past its deadline"
                    );
                    let status = tonic::Status::deadline_exceeded(
                        "the call's deadline passed before it was answered",
                    );
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "5 S", "x5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn peer_calls_get_the_time_left_less_a_margin() {
        assert_eq!(peer_timeout(), Some(MAX_PEER_TIMEOUT), "no caller deadline");
        scope(Some(Duration::from_secs(60)), async {
            assert_eq!(peer_timeout(), Some(MAX_PEER_TIMEOUT), "capped");
        })
        .await;
        scope(Some(Duration::from_secs(2)), async {
            let left = peer_timeout().unwrap();
            assert!(
                left <= Duration::from_millis(1750) && left > Duration::from_secs(1),
                "{left:?}"
            );
        })
        .await;
        scope(Some(Duration::from_millis(100)), async {
            assert_eq!(peer_timeout(), None, "no time for a peer call");
        })
        .await;
    }
}
