//! Audit events of this service, queued in the service's outbox inside the transaction of the
//! change they describe (or alone, for denials) and relayed to
//! `AdminInternalService.RecordAuditEvents`. Each event's name (`organizations/{o}/auditEvents/{id}`)
//! is chosen here, so a redelivered event is recorded once.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr};
use serde::{Deserialize, Serialize};
use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::RecordAuditEventsRequest;
use steward_proto::audit::v1::audit_event::Result as AuditResult;
use steward_proto::audit::v1::AuditEvent;
use steward_runtime::authn::RequestContext;
use steward_runtime::service::Peers;
use steward_runtime::ApiError;
use steward_storage::outbox::{Deliver, OutboxMessage};

use crate::OUTBOX;

/// Outbox topic of an audit event.
pub const TOPIC: &str = "audit.record";

/// The stored form of one event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
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
    /// Why (for denials and failures).
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

/// The outcome of an audited call: `Ok` or the error it returned.
pub fn outcome(result: Result<(), &ApiError>) -> (i32, i32, String) {
    match result {
        Ok(()) => (AuditResult::Allowed as i32, 0, String::new()),
        Err(err) => {
            let kind = match err {
                ApiError::PermissionDenied { .. } | ApiError::FailedPrecondition(_) => {
                    AuditResult::Denied
                }
                _ => AuditResult::Failed,
            };
            let message = match err {
                ApiError::Internal(_) => "internal error".to_string(),
                other => other.to_string(),
            };
            (kind as i32, err.code() as i32, message)
        }
    }
}

/// Queues an audit event on `conn` (the transaction of the change, when there is one).
#[allow(clippy::too_many_arguments)]
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    organization: &str,
    context: &RequestContext,
    actor: &str,
    target: &str,
    result: Result<(), &ApiError>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let (result, status_code, reason) = outcome(result);
    let id = steward_runtime::names::new_id();
    let event = Event {
        name: format!("{organization}/auditEvents/{id}"),
        actor: actor.to_string(),
        action: context.method.clone(),
        target: target.to_string(),
        result,
        status_code,
        reason,
        request_id: context.request_id.clone(),
        client_address: context.client_address.clone(),
        create_seconds: now.timestamp(),
        create_nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
    };
    let payload = serde_json::to_value(&event).map_err(|e| DbErr::Custom(e.to_string()))?;
    OUTBOX.enqueue(conn, TOPIC, &event.name, &payload, now).await
}

/// The relay's delivery function: audit events go to the admin service.
pub fn deliver(peers: Peers) -> Deliver {
    std::sync::Arc::new(move |message: OutboxMessage| {
        let peers = peers.clone();
        Box::pin(async move {
            if message.topic != TOPIC {
                return Err(format!("unknown outbox topic {}", message.topic));
            }
            let event: Event =
                serde_json::from_value(message.payload).map_err(|e| format!("bad payload: {e}"))?;
            let proto = AuditEvent {
                name: event.name,
                actor: event.actor,
                action: event.action,
                target: event.target,
                result: event.result,
                status_code: event.status_code,
                reason: event.reason,
                request_id: event.request_id,
                client_address: event.client_address,
                create_time: Some(prost_types::Timestamp {
                    seconds: event.create_seconds,
                    nanos: event.create_nanos,
                }),
            };
            let mut client = AdminInternalServiceClient::new(peers.internal(&peers.admin));
            client
                .record_audit_events(RecordAuditEventsRequest { events: vec![proto] })
                .await
                .map(|_| ())
                .map_err(|status| format!("{}: {}", status.code(), status.message()))
        })
    })
}
