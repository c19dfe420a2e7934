//! [`SessionChannel`]: the tower service every service client of a
//! [`Steward`](super::Steward) calls through. It attaches the session's access token (renewing
//! it first when due), renews once and retries once a call refused with `UNAUTHENTICATED`, and
//! retries idempotent calls that fail with `UNAVAILABLE` with jittered exponential backoff,
//! within the call's deadline. Only calls with one request message are retried (their request
//! is buffered); calls that stream requests are sent as they are.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::retry::backoff::{Backoff, ExponentialBackoffMaker, InvalidBackoff, MakeBackoff};
use tower::util::rng::HasherRng;
use tower::{Service, ServiceExt};

use super::session::Session;
use crate::authz::Access;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The calls that stream requests (client or bidirectional streaming): never buffered nor
/// retried. A unit test checks this list against the descriptors.
pub const REQUEST_STREAMING_METHODS: &[&str] = &["/steward.commands.v1.AgentService/OpenStream"];

/// Idempotent calls besides `Get*` and `List*`.
const IDEMPOTENT_OTHERS: &[&str] = &["CheckAccess", "BatchCheckAccess", "WatchRun"];

/// Whether the RPC at `path` (`/package.Service/Method`) has no side effects, so that the
/// client retries it on `UNAVAILABLE`: `Get*`, `List*`, `CheckAccess`, `BatchCheckAccess` and
/// `WatchRun` (the Python SDK's `IDEMPOTENT_METHODS`, TypeScript's `isIdempotent`).
pub fn is_idempotent(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    !REQUEST_STREAMING_METHODS.contains(&path)
        && (method.starts_with("Get")
            || method.starts_with("List")
            || IDEMPOTENT_OTHERS.contains(&method))
}

/// Whether the RPC at `path` is called with an administrator's or service account's session
/// (not public, not an agent's, not internal), so that a due or refused token is renewed.
fn needs_session(path: &str) -> bool {
    crate::authz::rule(path).is_none_or(|rule| {
        !matches!(rule.access, Access::Public | Access::Agent | Access::Internal)
    })
}

/// How idempotent calls failing with `UNAVAILABLE` are retried: at most `max_attempts` calls,
/// waiting `initial_backoff`, then twice as long each time (up to `max_backoff`), each wait
/// up to `jitter` (a fraction) longer at random; never past the call's deadline
/// (`tonic::Request::set_timeout`). The default: 5 attempts, 0.2 s, 0.4 s, 0.8 s, 1.6 s apart
/// (+0-20%), as the Python and TypeScript SDKs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Calls in all, the first included; 1 never retries.
    pub max_attempts: u32,
    /// The first wait.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// At most this fraction of each wait is added at random (0.0 to 100.0).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            jitter: 0.2,
        }
    }
}

/// A retry policy that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid retry policy: {0}")]
pub struct InvalidRetryPolicy(#[from] InvalidBackoff);

/// A validated [`RetryPolicy`].
#[derive(Clone, Debug)]
pub(crate) struct Retry {
    max_attempts: u32,
    backoff: ExponentialBackoffMaker<HasherRng>,
}

impl TryFrom<RetryPolicy> for Retry {
    type Error = InvalidRetryPolicy;

    fn try_from(policy: RetryPolicy) -> Result<Self, Self::Error> {
        let backoff = ExponentialBackoffMaker::new(
            policy.initial_backoff,
            policy.max_backoff,
            policy.jitter,
            HasherRng::default(),
        )?;
        Ok(Self { max_attempts: policy.max_attempts, backoff })
    }
}

/// The channel type of every service client of [`Steward`](super::Steward) (see the module).
#[derive(Clone)]
pub struct SessionChannel {
    inner: Channel,
    session: Arc<Session>,
    retry: Option<Retry>,
}

impl fmt::Debug for SessionChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionChannel")
            .field("session", &self.session)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl SessionChannel {
    pub(crate) fn new(inner: Channel, session: Arc<Session>, retry: Option<Retry>) -> Self {
        Self { inner, session, retry }
    }
}

impl Service<http::Request<Body>> for SessionChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt waits for the channel to be ready itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// How an attempt ended, as far as retrying goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Refused before any answer: `grpc-status: 16` in a trailers-only response.
    Unauthenticated,
    /// Not reached: a transport error, or `grpc-status: 14` in a trailers-only response.
    Unavailable,
    /// Anything else: the caller's.
    Final,
}

impl Outcome {
    fn of(result: &Result<http::Response<Body>, tonic::transport::Error>) -> Self {
        let Ok(response) = result else { return Self::Unavailable };
        match response.headers().get("grpc-status").map(HeaderValue::as_bytes) {
            Some(b"16") => Self::Unauthenticated,
            Some(b"14") => Self::Unavailable,
            _ => Self::Final,
        }
    }
}

impl SessionChannel {
    async fn send(self, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let path = request.uri().path().to_owned();
        // A call with its own credentials (an agent's) is left as it is.
        let own_authorization = request.headers().contains_key(http::header::AUTHORIZATION);
        let session = needs_session(&path) && !own_authorization;
        let mut token = match own_authorization {
            true => None,
            false => self.session.token(&self.inner, session).await?,
        };
        if REQUEST_STREAMING_METHODS.contains(&path.as_str()) {
            let mut request = request;
            authorize(request.headers_mut(), token.as_ref());
            return self.inner.clone().oneshot(request).await.map_err(unreached);
        }

        let (mut parts, body) = request.into_parts();
        let body: Bytes = body.collect().await?.to_bytes();
        let deadline = grpc_timeout(&parts.headers).map(|t| tokio::time::Instant::now() + t);
        let retry = self.retry.as_ref().filter(|_| is_idempotent(&path));
        let mut backoff = retry.map(|retry| retry.backoff.clone().make_backoff());
        let mut attempts = 1;
        let mut renewed = false;
        loop {
            if let Some(deadline) = deadline {
                // Later attempts get what is left of the call's deadline.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                parts.headers.insert("grpc-timeout", timeout_header(left));
            }
            authorize(&mut parts.headers, token.as_ref());
            let attempt =
                http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
            let result = self.inner.clone().oneshot(attempt).await;
            match Outcome::of(&result) {
                Outcome::Unauthenticated if session && !renewed => {
                    renewed = true;
                    let Some(refused) = token.as_ref() else { return result.map_err(unreached) };
                    match self.session.renew_after_refusal(&self.inner, refused).await {
                        Some(fresh) => token = Some(fresh),
                        None => return result.map_err(unreached),
                    }
                }
                Outcome::Unavailable => {
                    let (Some(retry), Some(backoff)) = (retry, backoff.as_mut()) else {
                        return result.map_err(unreached);
                    };
                    if attempts >= retry.max_attempts {
                        return result.map_err(unreached);
                    }
                    let wait = backoff.next_backoff();
                    if deadline.is_some_and(|deadline| wait.deadline() >= deadline) {
                        return result.map_err(unreached);
                    }
                    wait.await;
                    attempts += 1;
                }
                Outcome::Unauthenticated | Outcome::Final => return result.map_err(unreached),
            }
        }
    }
}

/// A call that got no answer (connection refused, reset or closed) is `UNAVAILABLE`, as in
/// gRPC, rather than tonic's `CANCELLED`/`UNKNOWN` for a closed connection; tonic's own
/// timeouts keep their code.
fn unreached(err: tonic::transport::Error) -> BoxError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(cause) = source {
        if cause.is::<tonic::TimeoutExpired>() {
            return err.into();
        }
        source = cause.source();
    }
    let mut status = tonic::Status::unavailable(super::error_chain(&err));
    status.set_source(Arc::new(err));
    Box::new(status)
}

fn authorize(headers: &mut HeaderMap, token: Option<&HeaderValue>) {
    if let Some(token) = token {
        headers.insert(http::header::AUTHORIZATION, token.clone());
    }
}

/// The call's `grpc-timeout` (`tonic::Request::set_timeout`), if any.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit = value.chars().last()?;
    let amount: u64 = value.strip_suffix(unit)?.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount.saturating_mul(3600)),
        'M' => Duration::from_secs(amount.saturating_mul(60)),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value (milliseconds, at most 8 digits as the protocol allows).
fn timeout_header(left: Duration) -> HeaderValue {
    let millis = left.as_millis().min(99_999_999);
    HeaderValue::try_from(format!("{millis}m")).unwrap_or(HeaderValue::from_static("0m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_calls_are_those_without_side_effects() {
        for path in [
            "/steward.admin.v1.AdminService/ListAdministrators",
            "/steward.admin.v1.AdminService/GetProfile",
            "/steward.commands.v1.CommandService/CheckAccess",
            "/steward.commands.v1.CommandService/BatchCheckAccess",
            "/steward.commands.v1.CommandService/WatchRun",
        ] {
            assert!(is_idempotent(path), "{path}");
        }
        for path in [
            "/steward.admin.v1.AdminService/CreateAdministrator",
            "/steward.commands.v1.CommandService/RunCommand",
            "/steward.auth.v1.AuthService/RefreshSession",
            "/steward.commands.v1.AgentService/OpenStream",
        ] {
            assert!(!is_idempotent(path), "{path}");
        }
    }

    #[test]
    fn sessions_are_renewed_for_callers_calls_only() {
        assert!(needs_session("/steward.admin.v1.AdminService/GetProfile"));
        assert!(!needs_session("/steward.auth.v1.AuthService/SignIn"));
        assert!(!needs_session("/steward.auth.v1.AuthService/RefreshSession"));
        assert!(!needs_session("/steward.commands.v1.AgentService/OpenStream"));
    }

    #[test]
    fn request_streaming_methods_match_the_descriptors() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let mut streaming: Vec<String> = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    if method.client_streaming() {
                        streaming.push(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        assert_eq!(streaming, REQUEST_STREAMING_METHODS);
    }

    #[test]
    fn grpc_timeouts_round_trip() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_timeout(&headers), None);
        for (value, expected) in [
            ("1500m", Duration::from_millis(1500)),
            ("2S", Duration::from_secs(2)),
            ("3M", Duration::from_secs(180)),
            ("7u", Duration::from_micros(7)),
        ] {
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            assert_eq!(grpc_timeout(&headers), Some(expected), "{value}");
        }
        headers.insert("grpc-timeout", timeout_header(Duration::from_millis(1234)));
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(1234)));
        headers.insert("grpc-timeout", HeaderValue::from_static("12x"));
        assert_eq!(grpc_timeout(&headers), None);
    }

    #[test]
    fn a_retry_policy_is_validated() {
        assert!(Retry::try_from(RetryPolicy::default()).is_ok());
        let inverted = RetryPolicy {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert!(Retry::try_from(inverted).is_err());
    }
}
