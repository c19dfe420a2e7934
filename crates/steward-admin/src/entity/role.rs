//! `admin_roles`: an organization's own roles, each a set of catalog permissions.

use sea_orm::entity::prelude::*;

/// A custom role row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_roles")]
pub struct Model {
    /// `organizations/{o}/roles/{r}`, as administrators' `role` column stores it.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The owning organization's id.
    pub organization_id: String,
    /// For people.
    pub display_name: String,
    /// What the role is for.
    pub description: String,
    /// Permission names from the catalog, space-separated, in catalog order.
    pub permissions: String,
    /// Bumped on every change; the etag is derived from it.
    pub revision: i64,
    /// Creation time.
    pub created_at: DateTimeUtc,
    /// Last change.
    pub updated_at: DateTimeUtc,
}

/// No relations are declared; queries join by id explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
