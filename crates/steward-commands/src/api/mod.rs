//! The gRPC services: only the tonic trait impls, each a thin adapter that decodes the call
//! (typed caller, message), calls one domain function of the module named after the resource
//! (`command`, `grant`, `access`, `run`, `watch`, `system`, `connect_key`, `agent`) and answers
//! through [`steward_runtime::answer`].

pub mod agent;
pub mod commands;
pub mod internal;
pub mod systems;
