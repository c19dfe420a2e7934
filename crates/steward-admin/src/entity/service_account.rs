//! `admin_service_accounts`: an organization's machine identities.

use sea_orm::entity::prelude::*;

/// A service account row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_service_accounts")]
pub struct Model {
    /// `organizations/{o}/serviceAccounts/{s}`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The owning organization's id.
    pub organization_id: String,
    /// For people.
    pub display_name: String,
    /// The role, as administrators' `role` column stores it.
    pub role: String,
    /// Billing access.
    pub billing: bool,
    /// Who created it.
    pub creator: String,
    /// Creation time.
    pub created_at: DateTimeUtc,
}

/// No relations are declared; queries join by name explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
