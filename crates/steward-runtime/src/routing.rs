//! What each listener serves, and the answer to a call for anything else.
//!
//! A process serves the services of its kinds (`auth`, `admin`, `commands`, or all three in
//! `dev`) on two listeners:
//!
//! * the **public** listener (`server.listen`) serves the public services, health and
//!   reflection;
//! * the **internal** listener (`server.internal_listen`) serves the same plus the
//!   `*InternalService`s (the naming convention is the rule: a service whose name ends in
//!   `InternalService` is internal).
//!
//! In front of the authentication layer, [`RoutingLayer`] answers a call for a service this
//! listener does not serve, or for a method its service does not have, with `UNIMPLEMENTED`, a
//! message naming what was asked for and where it is served, and an `ErrorInfo` reason
//! (`INTERNAL_LISTENER_ONLY`, `SERVICE_NOT_SERVED`, `UNKNOWN_SERVICE`, `UNKNOWN_METHOD`). Such
//! calls never reach authentication or metrics, so a caller cannot inflate either.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::ApiError;

/// The health service's name (served on every listener).
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Services every listener serves besides the process's own: health and reflection.
pub const STANDARD_SERVICES: &[&str] = &[
    HEALTH_SERVICE,
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Methods of [`STANDARD_SERVICES`].
const STANDARD_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Every service of Steward's descriptor set with its methods.
static STEWARD_SERVICES: LazyLock<BTreeMap<String, BTreeSet<String>>> = LazyLock::new(|| {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(steward_proto::FILE_DESCRIPTOR_SET) else {
        return BTreeMap::new();
    };
    let mut services = BTreeMap::new();
    for file in set.file {
        for service in &file.service {
            let methods: BTreeSet<String> =
                service.method.iter().map(|m| m.name().to_string()).collect();
            services.insert(format!("{}.{}", file.package(), service.name()), methods);
        }
    }
    services
});

/// Every `/package.Service/Method` of Steward's descriptor set.
static STEWARD_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    STEWARD_SERVICES
        .iter()
        .flat_map(|(service, methods)| methods.iter().map(move |m| format!("/{service}/{m}")))
        .collect()
});

/// Whether `path` (`/package.Service/Method`) is a method of Steward's contract, health or
/// reflection.
pub fn known_method(path: &str) -> bool {
    STANDARD_METHODS.contains(&path) || STEWARD_METHODS.contains(path)
}

/// Whether `service` (a fully-qualified name) is one of the internal, service-to-service APIs.
pub fn is_internal(service: &str) -> bool {
    service.ends_with("InternalService")
}

/// The two listeners of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `server.listen`: public services only.
    Public,
    /// `server.internal_listen`: every service of the process.
    Internal,
}

/// The tower layer that refuses calls for services or methods a listener does not serve.
#[derive(Clone)]
pub struct RoutingLayer {
    state: Arc<RoutingState>,
}

struct RoutingState {
    listener: Listener,
    /// Every service of the process (both listeners), Steward's own only.
    process: BTreeSet<String>,
}

impl RoutingLayer {
    /// The layer of `listener` in a process serving `services` (fully-qualified names, internal
    /// ones included).
    pub fn new(listener: Listener, services: &[String]) -> Self {
        Self {
            state: Arc::new(RoutingState { listener, process: services.iter().cloned().collect() }),
        }
    }

    /// The services `listener` serves, standard ones first: what its reflection lists.
    pub fn served(&self) -> Vec<String> {
        let own = self.state.process.iter().filter(|s| self.state.serves(s)).cloned();
        STANDARD_SERVICES.iter().map(|s| s.to_string()).chain(own).collect()
    }
}

impl RoutingState {
    fn serves(&self, service: &str) -> bool {
        self.process.contains(service)
            && (self.listener == Listener::Internal || !is_internal(service))
    }

    /// `None` when the call may proceed, else the refusal.
    fn refusal(&self, path: &str) -> Option<ApiError> {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Some(ApiError::NotServed {
                reason: "UNKNOWN_SERVICE",
                message: format!("{path:?} is not a gRPC method path (/package.Service/Method)"),
            });
        };
        if STANDARD_SERVICES.contains(&service) {
            // tonic answers unknown methods of these itself.
            return None;
        }
        let listed = || {
            let served: Vec<&str> = STANDARD_SERVICES
                .iter()
                .copied()
                .chain(self.process.iter().map(String::as_str).filter(|s| self.serves(s)))
                .collect();
            served.join(", ")
        };
        if self.serves(service) {
            let has = STEWARD_SERVICES.get(service).is_some_and(|methods| methods.contains(method));
            return (!has).then(|| ApiError::NotServed {
                reason: "UNKNOWN_METHOD",
                message: format!("{service} has no method {method:?}"),
            });
        }
        let message = if self.process.contains(service) {
            ApiError::NotServed {
                reason: "INTERNAL_LISTENER_ONLY",
                message: format!(
                    "{service} is a service-to-service API, served only on the internal listener \
                     (server.internal_listen)"
                ),
            }
        } else if STEWARD_SERVICES.contains_key(service) {
            ApiError::NotServed {
                reason: "SERVICE_NOT_SERVED",
                message: format!(
                    "{service} is served by another Steward service; this one serves {}",
                    listed()
                ),
            }
        } else {
            // The name is the caller's text: bounded before it is echoed.
            let shown: String = service.chars().take(128).collect();
            ApiError::NotServed {
                reason: "UNKNOWN_SERVICE",
                message: format!("unknown service {shown:?}; this listener serves {}", listed()),
            }
        };
        Some(message)
    }
}

impl<S> tower::Layer<S> for RoutingLayer {
    type Service = Routing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Routing { inner, state: self.state.clone() }
    }
}

/// The service produced by [`RoutingLayer`].
#[derive(Clone)]
pub struct Routing<S> {
    inner: S,
    state: Arc<RoutingState>,
}

impl<S, B> tower::Service<http::Request<B>> for Routing<S>
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
        match self.state.refusal(request.uri().path()) {
            None => Box::pin(self.inner.call(request)),
            Some(err) => {
                let reason = err.reason();
                Box::pin(async move {
                    // Polled inside the call's span, so the line carries its request id.
                    tracing::info!(reason, "call for a service or method not served here");
                    let status: tonic::Status = err.into();
                    Ok(status.into_http())
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(listener: Listener) -> RoutingState {
        RoutingState {
            listener,
            process: ["steward.auth.v1.AuthService", "steward.auth.v1.AuthInternalService"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    fn reason(err: Option<ApiError>) -> Option<&'static str> {
        err.map(|err| err.reason())
    }

    #[test]
    fn each_listener_refuses_what_it_does_not_serve() {
        let public = state(Listener::Public);
        let internal = state(Listener::Internal);
        assert_eq!(reason(public.refusal("/steward.auth.v1.AuthService/SignIn")), None);
        assert_eq!(reason(public.refusal("/grpc.health.v1.Health/Check")), None);
        assert_eq!(
            reason(public.refusal("/steward.auth.v1.AuthInternalService/IssueInvite")),
            Some("INTERNAL_LISTENER_ONLY")
        );
        assert_eq!(
            reason(internal.refusal("/steward.auth.v1.AuthInternalService/IssueInvite")),
            None
        );
        assert_eq!(reason(internal.refusal("/steward.auth.v1.AuthService/SignIn")), None);
        assert_eq!(
            reason(public.refusal("/steward.auth.v1.AuthService/Nope")),
            Some("UNKNOWN_METHOD")
        );
        assert_eq!(
            reason(public.refusal("/steward.admin.v1.AdminService/ListAdministrators")),
            Some("SERVICE_NOT_SERVED")
        );
        assert_eq!(reason(public.refusal("/x.Y/Z")), Some("UNKNOWN_SERVICE"));
        assert_eq!(reason(public.refusal("garbage")), Some("UNKNOWN_SERVICE"));
    }

    #[test]
    fn the_public_listener_lists_no_internal_service() {
        let layer = RoutingLayer::new(
            Listener::Public,
            &["steward.auth.v1.AuthService".into(), "steward.auth.v1.AuthInternalService".into()],
        );
        let served = layer.served();
        assert!(served.contains(&"steward.auth.v1.AuthService".to_string()));
        assert!(!served.iter().any(|s| is_internal(s)));
        assert!(served.contains(&HEALTH_SERVICE.to_string()));
    }
}
