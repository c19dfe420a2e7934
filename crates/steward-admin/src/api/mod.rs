//! The gRPC services.

pub mod admin;
pub mod audit;
pub mod billing;
pub mod internal;
pub mod organization;
