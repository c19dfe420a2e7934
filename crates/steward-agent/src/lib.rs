//! The Steward agent: runs on a managed system, registers it with a connect key, holds an
//! authenticated stream to the command service's `AgentService`, executes the commands it is
//! assigned and reports their start, output and end.
//!
//! - [`config`]: the command line and the credential file (`{state-dir}/credential.json`, 0600).
//! - [`executor`]: runs one script in its own process group, with a cleaned environment, as the
//!   run-as user, bounded in time and in captured output.
//! - [`connection`]: registration, the work stream with reconnection, concurrent runs.

pub mod config;
pub mod connection;
pub mod error;
pub mod executor;
mod unconfirmed;

pub use config::{AgentConfig, Args, StoredCredential};
pub use connection::Agent;
pub use error::AgentError;
pub use executor::Executor;

/// Runs the agent described by `args` until SIGTERM or SIGINT (then `Ok`) or until the server
/// refuses it.
pub async fn run(args: Args) -> Result<(), AgentError> {
    let config = AgentConfig::resolve(args)?;
    let executor = Executor::new(config.max_output_bytes);
    Agent::new(config, executor).run(shutdown_signal()).await
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM");
            None
        }
    };
    let terminated = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
}
