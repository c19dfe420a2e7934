//! The one error type every Steward handler returns, and its single mapping to `tonic::Status`
//! with `google.rpc` details. Handlers never build a `Status` by hand.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every Steward error.
pub const ERROR_DOMAIN: &str = steward_proto::codec::ERROR_DOMAIN;

/// One invalid request field (`google.rpc.BadRequest.FieldViolation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `administrator.email`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// One broken precondition (`google.rpc.PreconditionFailure.Violation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreconditionViolation {
    /// Machine-readable rule, e.g. `LAST_ADMINISTRATOR`.
    pub kind: String,
    /// The resource the rule is about.
    pub subject: String,
    /// Sentence for people.
    pub description: String,
}

/// Every failure a handler can report, with the information clients need to react.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; each violation names a field.
    #[error("invalid argument: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named resource does not exist (or is invisible to the caller).
    #[error("{0} not found")]
    NotFound(String),
    /// A resource with the same identity exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the system state forbids it (safeguards).
    #[error("{}", .0.first().map(|v| v.description.as_str()).unwrap_or("failed precondition"))]
    FailedPrecondition(Vec<PreconditionViolation>),
    /// Optimistic concurrency failure: the `etag` is stale.
    #[error("{0}")]
    Aborted(String),
    /// A request with the same `request_id` is being served at the same time; retrying returns
    /// its answer.
    #[error("{0}")]
    Concurrent(String),
    /// Authenticated, but not allowed. `reason` is a stable machine-readable code.
    #[error("{message}")]
    PermissionDenied {
        /// Stable code for programs, e.g. `ROLE_REQUIRED`.
        reason: &'static str,
        /// Sentence for people.
        message: String,
    },
    /// Missing, malformed, expired or revoked credentials. The message stays vague on purpose.
    #[error("{0}")]
    Unauthenticated(String),
    /// Throttled; retry after the delay.
    #[error("too many attempts, retry in {}s", .retry_after.as_secs().max(1))]
    ResourceExhausted {
        /// When the client may retry.
        retry_after: Duration,
    },
    /// A dependency (database, another service) is unreachable; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// The RPC exists in the contract but its behaviour has not shipped yet.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// The listener does not serve the service or method asked for ([`crate::routing`]).
    #[error("{message}")]
    NotServed {
        /// Stable reason code, e.g. `INTERNAL_LISTENER_ONLY`.
        reason: &'static str,
        /// Names what was asked for and where it is served.
        message: String,
    },
    /// A bug or an unexpected failure. Logged with its detail; the client sees a generic message.
    #[error("internal error")]
    Internal(String),
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// One broken precondition.
    pub fn precondition(
        kind: impl Into<String>,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self::FailedPrecondition(vec![PreconditionViolation {
            kind: kind.into(),
            subject: subject.into(),
            description: description.into(),
        }])
    }

    /// Permission denied with a stable reason code.
    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::PermissionDenied { reason, message: message.into() }
    }

    /// Wraps an unexpected failure; the detail is logged, never sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) | Self::Concurrent(_) => Code::Aborted,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Unimplemented(_) | Self::NotServed { .. } => Code::Unimplemented,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The stable reason code of its `ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Self::Aborted(_) => "ETAG_MISMATCH",
            Self::Concurrent(_) => "CONCURRENT_REQUEST",
            Self::PermissionDenied { reason, .. } => reason,
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::ResourceExhausted { .. } => "THROTTLED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Unimplemented(_) => "NOT_IMPLEMENTED",
            Self::NotServed { reason, .. } => reason,
            Self::Internal(_) => "INTERNAL",
        }
    }
}

/// A domain function's result as the gRPC answer: the one place an API adapter turns
/// [`ApiResult`] into what tonic returns.
pub fn answer<T>(result: ApiResult<T>) -> Result<tonic::Response<T>, Status> {
    result.map(tonic::Response::new).map_err(Status::from)
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        if let ApiError::Internal(detail) = &err {
            tracing::error!(error = %detail, "internal error");
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(err.reason(), ERROR_DOMAIN, std::collections::HashMap::new());
        match &err {
            ApiError::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
            }
            ApiError::FailedPrecondition(violations) => {
                for v in violations {
                    details.add_precondition_failure_violation(
                        v.kind.clone(),
                        v.subject.clone(),
                        v.description.clone(),
                    );
                }
            }
            ApiError::ResourceExhausted { retry_after } => {
                details.set_retry_info(Some(*retry_after));
            }
            ApiError::Unavailable(_) => {
                details.set_retry_info(Some(UNAVAILABLE_RETRY));
            }
            _ => {}
        }
        Status::with_error_details(err.code(), err.to_string(), details)
    }
}

impl From<steward_storage::idempotency::RecordError> for ApiError {
    fn from(err: steward_storage::idempotency::RecordError) -> Self {
        match err {
            steward_storage::idempotency::RecordError::Conflict => Self::Concurrent(
                "a request with this request_id is being served concurrently; retry to get its \
                 answer"
                    .into(),
            ),
            steward_storage::idempotency::RecordError::Db(err) => err.into(),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    /// A database that cannot be reached, or whose connection broke, is `UNAVAILABLE` (retry
    /// later); any other database error is a bug, `INTERNAL`. Neither sends the driver's text.
    fn from(err: sea_orm::DbErr) -> Self {
        if database_unreachable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            Self::Unavailable("database unavailable, retry later".into())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

/// Whether `err` says the database could not be reached or the connection failed (as opposed
/// to a statement the database refused): no pooled connection within the acquire timeout, a
/// connection that could not be opened, an I/O or TLS failure mid-statement, or PostgreSQL's
/// connection-exception (`08…`) and operator-intervention (`57P…`: shutdown, restart) codes.
pub fn database_unreachable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    use sea_orm::{DbErr, RuntimeErr};
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)) => {
            match err {
                Sqlx::Io(_)
                | Sqlx::Tls(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Protocol(_) => true,
                Sqlx::Database(db) => db.code().is_some_and(|code| {
                    code.starts_with("08") || code.starts_with("57P") || code == "53300"
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

/// How soon a client may retry an `UNAVAILABLE` call (its `RetryInfo`).
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

impl From<tonic::Status> for ApiError {
    /// A failed call to another Steward service. A peer that is down, hung past the call's
    /// timeout (tonic's client reports its own timeout as `CANCELLED`) or out of time is
    /// `UNAVAILABLE`, retryable; anything else is reported as internal, since a peer's error
    /// says nothing useful to this caller.
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                // The peer's message can name hosts, certificates and transport details: logged
                // here, not sent to the caller.
                tracing::warn!(code = ?status.code(), message = status.message(), "peer call unavailable");
                Self::Unavailable("a service this call needs is unavailable, retry later".into())
            }
            _ => Self::Internal(format!("peer call failed: {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_never_reach_the_client() {
        let status: Status = ApiError::internal("password hash table exploded at 0xdead").into();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn precondition_failure_names_the_rule() {
        let status: Status = ApiError::precondition(
            "LAST_ADMINISTRATOR",
            "organizations/o/administrators/a",
            "at least one activated Administrator must remain",
        )
        .into();
        let details = status.get_error_details();
        let failure = details.precondition_failure().unwrap();
        assert_eq!(failure.violations[0].r#type, "LAST_ADMINISTRATOR");
        assert_eq!(details.error_info().unwrap().domain, ERROR_DOMAIN);
    }

    #[test]
    fn unshipped_behaviour_is_unimplemented_and_says_what() {
        let status: Status =
            ApiError::Unimplemented("steward.commands.v1.CommandService/WatchRun").into();
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "steward.commands.v1.CommandService/WatchRun is not implemented yet"
        );
        assert_eq!(status.get_error_details().error_info().unwrap().reason, "NOT_IMPLEMENTED");
    }

    #[test]
    fn throttling_carries_retry_info() {
        let status: Status =
            ApiError::ResourceExhausted { retry_after: Duration::from_secs(4) }.into();
        let retry = status.get_error_details().retry_info().cloned().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(4)));
    }

    #[test]
    fn a_concurrent_duplicate_request_is_aborted_not_internal() {
        let err: ApiError = steward_storage::idempotency::RecordError::Conflict.into();
        let status: Status = err.into();
        assert_eq!(status.code(), Code::Aborted);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "CONCURRENT_REQUEST");
    }
}
