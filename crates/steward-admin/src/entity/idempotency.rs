//! `admin_idempotency`: which resource a `request_id` created, so a retried create returns the
//! first result. Organization creations use the scope [`PLATFORM_SCOPE`].

use sea_orm::entity::prelude::*;

/// `organization_id` of entries recorded by `CreateOrganization` (not tied to a tenant).
pub const PLATFORM_SCOPE: &str = "-platform";

/// An idempotency record.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_idempotency")]
pub struct Model {
    /// The organization the request was made in, or [`PLATFORM_SCOPE`].
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: String,
    /// The client's `request_id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    /// The resource name the request created.
    pub resource: String,
    /// When the request was first served.
    pub created_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
