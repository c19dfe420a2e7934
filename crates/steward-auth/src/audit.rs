//! Audit events of the auth service (invite accepted, signed in, signed out, password changed or
//! reset, MFA enrolled, refresh-token reuse), written to the `auth_outbox` in the same
//! transaction as the change and delivered to `AdminInternalService.RecordAuditEvents` by the
//! relay, with retries. The event name (`organizations/{o}/auditEvents/{id}`) is chosen here and
//! makes delivery idempotent. The admin service learns of MFA enrolment from the allowed
//! `ConfirmMfaEnrollment` event. Failed sign-ins are logged but not audited: an unknown email has
//! no organization, and auditing only known ones would make their failures slower.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use steward_proto::audit::v1::audit_event;
use steward_runtime::audit::AuditRecord;
use steward_runtime::authn::RequestContext;
use steward_runtime::ApiResult;
use steward_storage::outbox::Outbox;

use crate::state::organization_of;

/// The auth service's outbox.
pub const OUTBOX: Outbox = Outbox::new("auth_outbox");

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
    let outcome = if denied {
        (audit_event::Result::Denied, tonic::Code::Unauthenticated, reason.to_string())
    } else {
        (audit_event::Result::Allowed, tonic::Code::Ok, reason.to_string())
    };
    AuditRecord::new(&organization, context, action, administrator, administrator, outcome, now)
        .enqueue(conn, &OUTBOX, now)
        .await
}
