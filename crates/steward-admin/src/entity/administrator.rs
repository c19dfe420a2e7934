//! `admin_administrators`: the people managing an organization. Deleted administrators are
//! removed (the audit log keeps their history), which frees their email for a new invite.

use sea_orm::entity::prelude::*;

/// State value of an administrator that has not yet set its password.
pub const STATE_INVITED: &str = "invited";
/// State value of an administrator that has accepted its invite.
pub const STATE_ACTIVE: &str = "active";

/// An administrator row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_administrators")]
pub struct Model {
    /// The `{administrator}` id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The owning organization's id.
    pub organization_id: String,
    /// The email as entered.
    pub email: String,
    /// The email lowercased; unique per organization.
    pub email_lower: String,
    /// `administrator` or `command_runner` (`steward_runtime::claims::Role::as_str`).
    pub role: String,
    /// Billing access.
    pub billing: bool,
    /// Whether MFA is required at sign-in.
    pub mfa_required: bool,
    /// Whether the administrator has enrolled a TOTP authenticator (as far as this service knows).
    pub mfa_enrolled: bool,
    /// Receives "What's New" messages.
    pub whats_new: bool,
    /// [`STATE_INVITED`] or [`STATE_ACTIVE`].
    pub state: String,
    /// Resource name of the inviting administrator; empty for an owner.
    pub invited_by: String,
    /// Bumped on every change; the etag is derived from it.
    pub revision: i64,
    /// Creation (invite) time.
    pub created_at: DateTimeUtc,
    /// Last change.
    pub updated_at: DateTimeUtc,
    /// When the invite was accepted.
    pub activated_at: Option<DateTimeUtc>,
}

/// No relations are declared; queries join by id explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
