//! The gRPC services: only the tonic trait impls, each a thin adapter (take the request context
//! or the typed caller and the message, call one domain function, answer through
//! [`steward_runtime::answer`]). The work is in the modules named after what it acts on:
//! [`crate::invite`], [`crate::session`], [`crate::credential`] and [`crate::mfa`].

pub mod auth;
pub mod internal;
