//! `steward completion SHELL` and `steward man`: generated from the grammar in [`crate::cli`],
//! so they never fall behind it.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{CliError, Result};
use crate::output;

/// Prints the completion script for `shell` to stdout.
pub fn completion(shell: clap_complete::Shell) -> Result<u8> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "steward", &mut script);
    output::write_stdout(&script)?;
    Ok(0)
}

/// Without `out`, prints `steward.1` to stdout; with it, writes one page per command and
/// subcommand there (`steward.1`, `steward-admins.1`, `steward-admins-list.1`, ...) and lists
/// the files on stderr.
pub fn man(out: Option<&Path>) -> Result<u8> {
    let command = Cli::command();
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page).map_err(|source| CliError::Stdio {
            context: "cannot render the manual page",
            source,
        })?;
        output::write_stdout(&page)?;
        return Ok(0);
    };
    let io = |context| move |source| CliError::Io { context, path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io("cannot create"))?;
    clap_mangen::generate_to(command, dir).map_err(io("cannot write the manual pages to"))?;
    let mut written: Vec<String> = std::fs::read_dir(dir)
        .map_err(io("cannot read"))?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("steward") && name.ends_with(".1"))
        .collect();
    written.sort();
    output::note(&format!("wrote {} manual pages to {}", written.len(), dir.display()));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }
}
