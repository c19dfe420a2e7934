//! `steward`: the command line for Steward administrators. Everything lives in the library.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    steward_cli::run(steward_cli::cli::Cli::parse()).await
}
