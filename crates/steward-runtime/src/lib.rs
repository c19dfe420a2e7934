//! What every Steward service shares: configuration, telemetry, the server builder (health,
//! reflection, limits, graceful shutdown), the error type and its mapping to `tonic::Status`,
//! authentication, and the role table.

pub mod audit;
pub mod authn;
pub mod claims;
pub mod coalesce;
pub mod config;
pub mod deadline;
pub mod error;
pub mod jwks;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod peer;
pub mod request_id;
pub mod roles;
pub mod routing;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod wire;

pub use error::{answer, ApiError, ApiResult};
