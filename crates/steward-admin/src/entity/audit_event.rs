//! `admin_audit_events`: the append-only audit log. Rows are only ever inserted.

use sea_orm::entity::prelude::*;
use steward_proto::audit::v1::audit_event::Result as AuditResult;

/// `result` of an allowed action.
pub const RESULT_ALLOWED: &str = "allowed";
/// `result` of an action refused by authorization or a safeguard.
pub const RESULT_DENIED: &str = "denied";
/// `result` of an action that failed otherwise.
pub const RESULT_FAILED: &str = "failed";

/// The stored `result` of `result`; `None` for `RESULT_UNSPECIFIED` and unknown values.
pub fn stored_result(result: AuditResult) -> Option<&'static str> {
    match result {
        AuditResult::Allowed => Some(RESULT_ALLOWED),
        AuditResult::Denied => Some(RESULT_DENIED),
        AuditResult::Failed => Some(RESULT_FAILED),
        AuditResult::Unspecified => None,
    }
}

/// One recorded action.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_audit_events")]
pub struct Model {
    /// Full resource name, `organizations/{o}/auditEvents/{e}`; unique, makes recording idempotent.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The organization id whose log holds the event.
    pub organization_id: String,
    /// Who acted (administrator or service name); may be empty.
    pub actor: String,
    /// Full gRPC method.
    pub action: String,
    /// Resource aimed at; may be empty.
    pub target: String,
    /// [`RESULT_ALLOWED`], [`RESULT_DENIED`] or [`RESULT_FAILED`].
    pub result: String,
    /// gRPC status code returned.
    pub status_code: i32,
    /// Explanation, never secret.
    pub reason: String,
    /// Request id.
    pub request_id: String,
    /// Client network address.
    pub client_address: String,
    /// When it happened.
    pub created_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
