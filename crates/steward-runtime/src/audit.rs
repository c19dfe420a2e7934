//! Audit events written by services other than the admin service (which owns the log): each is
//! queued in the writing service's outbox, inside the transaction of the change it describes,
//! and delivered to `AdminInternalService.RecordAuditEvents`. The event name
//! (`organizations/{o}/auditEvents/{id}`) is chosen when queued, so redelivery records it once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::RecordAuditEventsRequest;
use steward_proto::audit::v1::audit_event::Result as AuditResult;
use steward_proto::audit::v1::AuditEvent;
use steward_storage::outbox::{Deliver, Outbox, OutboxMessage};

use crate::authn::RequestContext;
use crate::error::{ApiError, ApiResult};
use crate::service::Peers;

/// Outbox topic of an audit event.
pub const TOPIC: &str = "audit.record";

/// An audit event as queued (the outbox payload).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// `organizations/{o}/auditEvents/{id}`.
    pub name: String,
    /// Who acted.
    pub actor: String,
    /// The gRPC method.
    pub action: String,
    /// What it was aimed at.
    pub target: String,
    /// `AuditEvent.Result` value.
    pub result: i32,
    /// gRPC status code returned.
    pub status_code: i32,
    /// Why, for people; never a secret.
    pub reason: String,
    /// The request id.
    pub request_id: String,
    /// The client's address.
    pub client_address: String,
    /// When: Unix seconds.
    pub create_seconds: i64,
    /// When: nanoseconds within the second.
    pub create_nanos: i32,
}

/// Result, status code and reason of an audited call that returned `result`.
pub fn outcome(result: Result<(), &ApiError>) -> (AuditResult, tonic::Code, String) {
    match result {
        Ok(()) => (AuditResult::Allowed, tonic::Code::Ok, String::new()),
        Err(err) => {
            let kind = match err {
                ApiError::PermissionDenied { .. }
                | ApiError::FailedPrecondition(_)
                | ApiError::Unauthenticated(_) => AuditResult::Denied,
                _ => AuditResult::Failed,
            };
            // Internal details are logged where they happen, never recorded; a refusal by
            // safeguards names every rule it broke.
            let reason = match err {
                ApiError::Internal(_) => "internal error".to_string(),
                ApiError::FailedPrecondition(violations) => violations
                    .iter()
                    .map(|v| format!("{}: {}", v.kind, v.description))
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.to_string(),
            };
            (kind, err.code(), reason)
        }
    }
}

impl AuditRecord {
    /// An event of `organization` for the call described by `context` (its method is the action).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        organization: &str,
        context: &RequestContext,
        action: &str,
        actor: &str,
        target: &str,
        (result, code, reason): (AuditResult, tonic::Code, String),
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            name: format!("{organization}/auditEvents/{}", crate::names::new_id()),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            result: result as i32,
            status_code: code as i32,
            reason,
            request_id: context.request_id.clone(),
            client_address: context.client_address.clone(),
            create_seconds: now.timestamp(),
            create_nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }

    /// The wire form.
    pub fn into_proto(self) -> AuditEvent {
        AuditEvent {
            name: self.name,
            actor: self.actor,
            action: self.action,
            target: self.target,
            result: self.result,
            status_code: self.status_code,
            reason: self.reason,
            request_id: self.request_id,
            client_address: self.client_address,
            create_time: Some(prost_types::Timestamp {
                seconds: self.create_seconds,
                nanos: self.create_nanos,
            }),
        }
    }

    /// Queues the event in `outbox` on `conn` (the transaction of the change, if any).
    pub async fn enqueue(
        &self,
        conn: &impl ConnectionTrait,
        outbox: &Outbox,
        now: DateTime<Utc>,
    ) -> ApiResult<()> {
        let payload = serde_json::to_value(self)
            .map_err(|e| ApiError::internal(format!("audit payload: {e}")))?;
        outbox.enqueue(conn, TOPIC, &self.name, &payload, now).await?;
        Ok(())
    }
}

/// The relay's delivery function for audit events: one `RecordAuditEvents` call per event.
pub fn deliver(peers: Peers) -> Deliver {
    Arc::new(move |message: OutboxMessage| {
        let peers = peers.clone();
        Box::pin(async move {
            if message.topic != TOPIC {
                return Err(format!("unknown outbox topic {}", message.topic));
            }
            let record: AuditRecord =
                serde_json::from_value(message.payload).map_err(|e| format!("bad payload: {e}"))?;
            AdminInternalServiceClient::new(peers.internal(&peers.admin))
                .record_audit_events(RecordAuditEventsRequest { events: vec![record.into_proto()] })
                .await
                .map(|_| ())
                .map_err(|status| format!("{}: {}", status.code(), status.message()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PreconditionViolation;

    #[test]
    fn refusals_are_denied_and_other_errors_failed() {
        let denied = [
            ApiError::denied("ROLE_REQUIRED", "only Administrators may do this"),
            ApiError::Unauthenticated("an access token is required".into()),
            ApiError::precondition("LAST_ADMINISTRATOR", "organizations/o", "would leave none"),
        ];
        for err in &denied {
            assert_eq!(outcome(Err(err)).0, AuditResult::Denied, "{err:?}");
        }
        let failed = [ApiError::NotFound("organizations/o".into()), ApiError::internal("db down")];
        for err in &failed {
            assert_eq!(outcome(Err(err)).0, AuditResult::Failed, "{err:?}");
        }
        assert_eq!(outcome(Ok(())), (AuditResult::Allowed, tonic::Code::Ok, String::new()));
    }

    #[test]
    fn reasons_name_every_broken_rule_and_never_internal_detail() {
        let (_, code, reason) = outcome(Err(&ApiError::internal("password=hunter2 in row 7")));
        assert_eq!((code, reason.as_str()), (tonic::Code::Internal, "internal error"));
        let both = ApiError::FailedPrecondition(vec![
            PreconditionViolation {
                kind: "LAST_ADMINISTRATOR".into(),
                subject: "organizations/o".into(),
                description: "keeps one Administrator".into(),
            },
            PreconditionViolation {
                kind: "LAST_BILLING_ADMINISTRATOR".into(),
                subject: "organizations/o".into(),
                description: "keeps one billing administrator".into(),
            },
        ]);
        let (_, code, reason) = outcome(Err(&both));
        assert_eq!(code, tonic::Code::FailedPrecondition);
        assert_eq!(
            reason,
            "LAST_ADMINISTRATOR: keeps one Administrator; \
             LAST_BILLING_ADMINISTRATOR: keeps one billing administrator"
        );
    }
}
