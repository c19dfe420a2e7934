//! Audit events of the auth service (invite accepted, signed in, signed out, password changed or
//! reset, MFA enrolled, refresh-token reuse), written to the `auth_outbox` in the same
//! transaction as the change and delivered to `AdminInternalService.RecordAuditEvents` by the
//! relay, with retries. The event name (`organizations/{o}/auditEvents/{id}`) is chosen here and
//! makes delivery idempotent. The admin service learns of MFA enrolment from the allowed
//! `ConfirmMfaEnrollment` event. Failed sign-ins are logged but not audited: an unknown email has
//! no organization, and auditing only known ones would make their failures slower.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::RecordAuditEventsRequest;
use steward_proto::audit::v1::{audit_event, AuditEvent};
use steward_runtime::authn::RequestContext;
use steward_runtime::service::Peers;
use steward_runtime::{names, ApiResult};
use steward_storage::outbox::{Deliver, Outbox, OutboxMessage};

use crate::state::organization_of;

/// The auth service's outbox.
pub const OUTBOX: Outbox = Outbox::new("auth_outbox");
/// Topic of audit events in the outbox.
pub const TOPIC: &str = "audit.record";

/// `AcceptInvite`.
pub const ACCEPT_INVITE: &str = "/steward.auth.v1.AuthService/AcceptInvite";
/// `SignIn`.
pub const SIGN_IN: &str = "/steward.auth.v1.AuthService/SignIn";
/// `VerifyMfa`.
pub const VERIFY_MFA: &str = "/steward.auth.v1.AuthService/VerifyMfa";
/// `RefreshSession`.
pub const REFRESH: &str = "/steward.auth.v1.AuthService/RefreshSession";
/// `SignOut`.
pub const SIGN_OUT: &str = "/steward.auth.v1.AuthService/SignOut";
/// `ChangePassword`.
pub const CHANGE_PASSWORD: &str = "/steward.auth.v1.AuthService/ChangePassword";
/// `ResetPassword`.
pub const RESET_PASSWORD: &str = "/steward.auth.v1.AuthService/ResetPassword";
/// `ConfirmMfaEnrollment`.
pub const CONFIRM_MFA: &str = "/steward.auth.v1.AuthService/ConfirmMfaEnrollment";

/// An event as queued.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// `organizations/{o}/auditEvents/{id}`.
    pub name: String,
    /// The administrator acting.
    pub actor: String,
    /// gRPC method.
    pub action: String,
    /// The administrator concerned.
    pub target: String,
    /// `audit_event::Result` value.
    pub result: i32,
    /// gRPC code returned.
    pub status_code: i32,
    /// Sentence for people; never a secret.
    pub reason: String,
    /// Request id.
    pub request_id: String,
    /// Client address.
    pub client_address: String,
    /// Time, Unix seconds.
    pub create_seconds: i64,
    /// Time, nanoseconds.
    pub create_nanos: i32,
}

/// Queues an event about `administrator` (actor and target) on `conn`, the transaction of the
/// change. `denied` events carry UNAUTHENTICATED.
pub async fn record(
    conn: &impl ConnectionTrait,
    context: &RequestContext,
    action: &str,
    administrator: &str,
    denied: bool,
    reason: &str,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let organization = organization_of("administrator", administrator)?;
    let name = format!("{organization}/auditEvents/{}", names::new_id());
    let (result, status_code) = if denied {
        (audit_event::Result::Denied, tonic::Code::Unauthenticated as i32)
    } else {
        (audit_event::Result::Allowed, 0)
    };
    let event = Event {
        name: name.clone(),
        actor: administrator.to_string(),
        action: action.to_string(),
        target: administrator.to_string(),
        result: result as i32,
        status_code,
        reason: reason.to_string(),
        request_id: context.request_id.clone(),
        client_address: context.client_address.clone(),
        create_seconds: now.timestamp(),
        create_nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
    };
    let payload = serde_json::to_value(&event)
        .map_err(|e| steward_runtime::ApiError::internal(format!("audit payload: {e}")))?;
    OUTBOX.enqueue(conn, TOPIC, &name, &payload, now).await?;
    Ok(())
}

/// The relay's delivery: one event per call to the admin service.
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
            AdminInternalServiceClient::new(peers.internal(&peers.admin))
                .record_audit_events(RecordAuditEventsRequest { events: vec![proto] })
                .await
                .map(|_| ())
                .map_err(|status| format!("{}: {}", status.code(), status.message()))
        })
    })
}
