//! The request id that joins a call's log lines, its audit event and its error.
//!
//! [`RequestIdLayer`] runs first on every call. It keeps the caller's `x-request-id` when it is
//! 1 to 128 visible ASCII characters, and otherwise generates a UUID and puts it on the request,
//! so the authentication layer and handlers (which copy it into audit events) read the same
//! value. It records the id in the call's `rpc` span, so every log line of the call carries it,
//! returns it in the `x-request-id` response header, and adds a `google.rpc.RequestInfo` with it
//! to the details of every error answered in the response headers (every unary error and every
//! refusal before a stream starts). Internal calls made while serving it carry the same id.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderValue;
use tonic_types::StatusExt;

use crate::authn::REQUEST_ID_HEADER;

tokio::task_local! {
    /// The request id of the call being served, for the calls it makes to other services.
    static CURRENT: HeaderValue;
}

/// The request id of the call this task is serving, if any: internal calls carry it on
/// (`authn::ServiceCredential`), so the peer's log lines join the caller's.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// The longest request id kept from a caller.
const MAX_LEN: usize = 128;

/// The caller's request id when it is usable.
fn from_caller(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(REQUEST_ID_HEADER)?;
    let bytes = value.as_bytes();
    let usable =
        !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_graphic());
    usable.then(|| value.clone())
}

/// The tower layer giving every call a request id.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// The service produced by [`RequestIdLayer`].
#[derive(Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestId<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let id = from_caller(request.headers()).unwrap_or_else(|| {
            // A UUID's text is always a valid header value.
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        });
        request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            // Polled inside the call's `rpc` span.
            let text = id.to_str().unwrap_or_default().to_string();
            tracing::Span::current().record("request_id", text.as_str());
            let mut response = CURRENT.scope(id.clone(), response).await?;
            let headers = response.headers_mut();
            if let Some(status) = tonic::Status::from_header_map(headers) {
                if status.code() != tonic::Code::Ok {
                    let mut details = status.get_error_details();
                    details.set_request_info(text, String::new());
                    let with_id =
                        tonic::Status::with_error_details(status.code(), status.message(), details);
                    // Only fails for a message that cannot be a header, which it already was.
                    let _ = with_id.add_header(headers);
                }
            }
            headers.insert(REQUEST_ID_HEADER, id);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &[u8]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    #[tokio::test]
    async fn internal_calls_carry_the_request_id_of_the_call_being_served() {
        use tonic::service::Interceptor;
        let mut credential =
            crate::authn::ServiceCredential::new("a-service-credential-of-sufficient-length")
                .unwrap();
        let outside = credential.call(tonic::Request::new(())).unwrap();
        assert!(outside.metadata().get(REQUEST_ID_HEADER).is_none());
        let inside = CURRENT
            .scope(HeaderValue::from_static("req-joined"), async {
                credential.call(tonic::Request::new(())).unwrap()
            })
            .await;
        assert_eq!(inside.metadata().get(REQUEST_ID_HEADER).unwrap(), "req-joined");
    }

    #[test]
    fn only_short_visible_ids_are_kept() {
        assert!(from_caller(&headers(b"req-42")).is_some());
        assert!(from_caller(&headers(&[b'a'; 128])).is_some());
        assert!(from_caller(&headers(&[b'a'; 129])).is_none());
        assert!(from_caller(&headers(b"with space")).is_none());
        assert!(from_caller(&headers(b"")).is_none());
        assert!(from_caller(&headers(b"caf\xc3\xa9")).is_none());
        assert!(from_caller(&http::HeaderMap::new()).is_none());
    }
}
