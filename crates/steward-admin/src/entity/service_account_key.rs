//! `admin_service_account_keys`: API keys of service accounts, stored as digests.

use sea_orm::entity::prelude::*;

/// An API key row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_service_account_keys")]
pub struct Model {
    /// `organizations/{o}/serviceAccounts/{s}/keys/{k}`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The `{k}` of the name, as the API key carries it.
    pub key_id: String,
    /// The account's name.
    pub service_account: String,
    /// Hex SHA-256 of the secret (256 random bits, so a plain digest suffices).
    pub digest: String,
    /// When it stops working.
    pub expires_at: DateTimeUtc,
    /// Creation time.
    pub created_at: DateTimeUtc,
    /// Last exchange for an access token.
    pub last_used_at: Option<DateTimeUtc>,
}

/// No relations are declared; queries join by name explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
