//! The admin service's tables, as sea-orm entities. Every table is prefixed `admin_` because in
//! production all services may share one PostgreSQL database.

pub mod administrator;
pub mod audit_event;
pub mod organization;
pub mod payment_card;
pub mod role;
pub mod service_account;
pub mod service_account_key;
