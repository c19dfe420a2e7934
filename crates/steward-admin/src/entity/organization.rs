//! `admin_organizations`: one row per tenant. `revision` is bumped by every create, update and
//! delete of the organization's administrators; that `UPDATE` is the lock that serializes
//! invariant-bearing writes across replicas.

use sea_orm::entity::prelude::*;

/// An organization row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_organizations")]
pub struct Model {
    /// The `{organization}` id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Human-readable name, shown in invite emails.
    pub display_name: String,
    /// Lock counter; bumped under the organization lock.
    pub revision: i64,
    /// Creation time.
    pub created_at: DateTimeUtc,
    /// Last change of the organization itself.
    pub updated_at: DateTimeUtc,
}

/// No relations are declared; queries join by id explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
