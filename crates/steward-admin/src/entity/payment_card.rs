//! `admin_payment_cards`: at most one card per organization. Only brand, last four digits,
//! expiry and cardholder name are stored; the number and CVC never reach this table.

use sea_orm::entity::prelude::*;

/// A stored card.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_payment_cards")]
pub struct Model {
    /// The organization id (one card each).
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: String,
    /// Brand name, see `card::Brand::as_str`.
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month, 1 to 12.
    pub exp_month: i32,
    /// Expiry year, four digits.
    pub exp_year: i32,
    /// Name printed on the card.
    pub cardholder_name: String,
    /// Resource name of the administrator who last set the card.
    pub updated_by: String,
    /// Bumped on every change; the etag is derived from it.
    pub revision: i64,
    /// When the card was first set.
    pub created_at: DateTimeUtc,
    /// When the card was last changed.
    pub updated_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
