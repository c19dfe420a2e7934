//! `steward`, the command line for administrators, over the generated Rust client
//! ([`steward_proto::client::Steward`]).
//!
//! - [`cli`]: the argument grammar (clap derive).
//! - [`session`]: the session file (`session.json`, mode 0600) holding the server, tokens and
//!   organization of the signed-in administrator.
//! - [`profile`]: named profiles (`--profile`), each with its own session, server and CA file.
//! - [`context`]: the connection, with one automatic session refresh when an access token is
//!   rejected as UNAUTHENTICATED; with `STEWARD_API_KEY`, a service account's key exchanged for
//!   an in-memory session instead (the session file is then neither read nor written).
//! - [`commands`]: one function per command; [`docs`]: shell completions and manual pages.
//! - [`convert`] and [`output`]: API messages as JSON values, printed as text or JSON.
//! - [`error`]: typed errors, reported on stderr with the gRPC code and `google.rpc` details.
//!
//! Secrets (passwords, card numbers, CVCs) are read from stdin (passwords also from the terminal,
//! with echo off), never from arguments, and no token or secret is ever printed, but for a new
//! connect key or API key (shown once).

pub mod cli;
pub mod commands;
pub mod context;
pub mod convert;
pub mod docs;
pub mod error;
pub mod input;
pub mod names;
pub mod output;
pub mod profile;
pub mod session;

use std::process::ExitCode;

/// Runs one parsed command line and reports any error on stderr. Exit codes: 0 success, 1
/// failure (including a failed run under `--wait`), 2 usage error, 130 when Ctrl-C stopped
/// following a run; with `--exit-code`, a failed run's own exit code.
pub async fn run(cli: cli::Cli) -> ExitCode {
    let format = cli.output;
    let result = match cli.command {
        // Neither needs a configuration directory nor a server.
        cli::Command::Completion { shell } => docs::completion(shell),
        cli::Command::Man { out } => docs::man(out.as_deref()),
        _ => match context::Context::new(&cli) {
            Ok(mut ctx) => commands::dispatch(&mut ctx, cli.command).await,
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            output::report_error(format, &err);
            ExitCode::from(err.exit_code())
        }
    }
}
