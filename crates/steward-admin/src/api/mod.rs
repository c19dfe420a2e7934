//! The gRPC services: only the tonic trait impls, each method a thin adapter (take the typed
//! caller and the message, build the call's [`crate::audit::Auditor`] when it is audited, call
//! one domain function, answer through [`crate::audit::finish`]). The work is in the modules
//! named after what it acts on: [`crate::administrator`], [`crate::organization`],
//! [`crate::billing`], [`crate::audit_log`], [`crate::role`] and [`crate::service_account`].

pub mod admin;
pub mod audit;
pub mod billing;
pub mod internal;
pub mod organization;
pub mod role;
pub mod service_account;
