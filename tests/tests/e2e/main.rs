//! End-to-end tests: real servers on ephemeral ports, real gRPC, fresh SQLite and PostgreSQL
//! databases. One binary for the whole suite (one link); one module per area.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

mod harness;

/// Defines one test per backend: `name::sqlite` always runs; `name::postgres` runs when
/// `STEWARD_TEST_POSTGRES_URL` is set and fails when `STEWARD_TEST_REQUIRE_POSTGRES=1` but it
/// is not, so CI cannot silently skip PostgreSQL. The stack is `Stack::start(backend)` unless
/// `start = |backend| ...` says how to start it (over TLS, with other limits).
#[macro_export]
macro_rules! backend_test {
    ($name:ident, |$stack:ident| $body:expr) => {
        $crate::backend_test!(
            $name,
            start = |backend| $crate::harness::Stack::start(backend),
            |$stack| $body
        );
    };
    ($name:ident, start = |$backend:ident| $start:expr, |$stack:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $backend = steward_storage::testing::Backend::Sqlite;
                let $stack = $start.await;
                $body.await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if !$crate::harness::postgres_available() {
                    return;
                }
                let $backend = steward_storage::testing::Backend::Postgres;
                let $stack = $start.await;
                $body.await;
            }
        }
    };
}

mod admin;
mod agent;
mod auth;
mod bench;
mod built_in_roles;
mod bursts;
mod client;
mod coalescing;
mod commands;
mod custom_roles;
mod email;
mod faults;
mod foundation;
mod health;
mod hostile;
mod leases;
mod operations;
mod races;
mod roles;
mod security;
mod service_accounts;
mod telemetry;
mod tls;
mod upgrade;
