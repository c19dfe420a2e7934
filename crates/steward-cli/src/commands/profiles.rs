//! `steward profiles ...`: the named profiles of the configuration directory.

use serde_json::{json, Value};

use crate::cli::ProfilesCommand;
use crate::context::Context;
use crate::error::Result;
use crate::output::{self, Column, Show};
use crate::profile::Profile;
use crate::session::config_dir_from_env;

const COLUMNS: &[Column] = &[
    Column::new("", "current", Show::Derived(current)),
    Column::new("PROFILE", "name", Show::Text),
    Column::new("SERVER", "server", Show::Text),
    Column::new("SIGNED_IN_AS", "email", Show::Text),
    Column::new("ORGANIZATION", "organization", Show::Ref),
];

fn current(item: &Value) -> String {
    if item.get("current").and_then(Value::as_bool).unwrap_or(false) { "*" } else { "" }.into()
}

/// Runs a `profiles` subcommand. Reads only local files; never shows a token.
pub fn run(ctx: &Context, cmd: &ProfilesCommand) -> Result<u8> {
    let ProfilesCommand::List = cmd;
    let mut profiles = Profile::all(&config_dir_from_env()?)?;
    // The profile in use is listed even before it has signed in.
    if !profiles.iter().any(|p| p.name() == ctx.profile().name()) {
        profiles.push(ctx.profile().clone());
    }
    let mut items = Vec::new();
    for profile in profiles {
        let settings = profile.settings()?;
        // A damaged session file of another profile does not stop the listing.
        let session = profile.sessions().load().ok().flatten();
        let server = settings
            .server
            .clone()
            .or_else(|| session.as_ref().map(|s| s.server.clone()))
            .unwrap_or_default();
        items.push(json!({
            "name": profile.name(),
            "current": profile.name() == ctx.profile().name(),
            "server": server,
            "ca_file": settings.ca_file.map(|p| p.display().to_string()),
            "signed_in": session.is_some(),
            "email": session.as_ref().map(|s| s.email.clone()).unwrap_or_default(),
            "organization": session.map(|s| s.organization).unwrap_or_default(),
        }));
    }
    output::list(ctx.format, &items, COLUMNS)?;
    Ok(0)
}
