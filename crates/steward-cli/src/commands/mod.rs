//! One function per command. Each returns the process exit code on success (0, or 1 for a
//! run that did not succeed).

mod admins;
mod auth;
mod billing;
mod command;
mod profiles;
mod roles;
mod service_accounts;
mod systems;

use crate::cli::{Command, PasswordCommand};
use crate::context::Context;
use crate::error::Result;

/// Whether `command` acts as someone: then, with `STEWARD_API_KEY`, the key is exchanged for
/// an access token first. Invites, sign-in, sign-out, password resets and the local commands
/// (profiles, completions, manual pages) do not.
fn needs_credentials(command: &Command) -> bool {
    !matches!(
        command,
        Command::AcceptInvite(_)
            | Command::Login(_)
            | Command::Logout
            | Command::Password(PasswordCommand::RequestReset { .. } | PasswordCommand::Reset(_))
            | Command::Profiles(_)
            | Command::Completion { .. }
            | Command::Man { .. }
    )
}

/// Runs `command`.
pub async fn dispatch(ctx: &mut Context, command: Command) -> Result<u8> {
    if needs_credentials(&command) {
        ctx.sign_in_with_api_key().await?;
    }
    match command {
        Command::AcceptInvite(args) => auth::accept_invite(ctx, args).await,
        Command::Login(args) => auth::login(ctx, args).await,
        Command::Logout => auth::logout(ctx).await,
        Command::Whoami => auth::whoami(ctx).await,
        Command::Profile(args) => auth::profile(ctx, args).await,
        Command::Password(cmd) => auth::password(ctx, cmd).await,
        Command::Mfa(cmd) => auth::mfa(ctx, cmd).await,
        Command::Admins(cmd) => admins::run(ctx, cmd).await,
        Command::ServiceAccounts(cmd) => service_accounts::run(ctx, cmd).await,
        Command::Commands(cmd) => command::commands(ctx, cmd).await,
        Command::Runs(cmd) => command::runs(ctx, cmd).await,
        Command::Systems(cmd) => systems::systems(ctx, cmd).await,
        Command::ConnectKeys(cmd) => systems::connect_keys(ctx, cmd).await,
        Command::Billing(cmd) => billing::billing(ctx, cmd).await,
        Command::Audit(cmd) => billing::audit(ctx, cmd).await,
        Command::Permissions(cmd) => roles::permissions(ctx, cmd).await,
        Command::Roles(cmd) => roles::roles(ctx, cmd).await,
        Command::Profiles(cmd) => profiles::run(ctx, &cmd),
        Command::Completion { shell } => crate::docs::completion(shell),
        Command::Man { out } => crate::docs::man(out.as_deref()),
    }
}

/// A fresh request ID, so a retried create is not applied twice.
fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
