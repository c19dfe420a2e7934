//! Named profiles: each has its own session, server and CA file, so one configuration directory
//! can hold, say, a production and a staging sign-in side by side.
//!
//! The profile `default` lives in the configuration directory itself (`session.json`,
//! `profile.json`), where a single session was always kept; any other profile `NAME` lives in
//! `profiles/NAME/` below it. A profile's name is letters, digits, `-` and `_` only, so it can
//! never name a directory outside its own. A session is only ever read from its profile's
//! directory: signing in with one profile never signs in another.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};
use crate::session::{create_private_dir, write_private, SessionStore};

/// The profile used without `--profile` or `STEWARD_PROFILE`.
pub const DEFAULT: &str = "default";

/// Where the other profiles live, under the configuration directory.
const PROFILES_DIR: &str = "profiles";

/// A profile's settings file, next to its `session.json`.
const SETTINGS_FILE: &str = "profile.json";

/// The longest profile name.
const MAX_NAME: usize = 64;

/// What a profile remembers besides its session: where it signs in and which CA it trusts.
/// Written by `steward login`; `--server` / `STEWARD_SERVER` and `--ca-file` /
/// `STEWARD_CA_FILE` override them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The server URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// An absolute path to a CA certificate (PEM) trusted for `https://` servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Refuses a profile name that is not 1 to 64 letters, digits, `-` or `_` (so `..`, `/` and
/// the like never reach a path).
pub fn validate(name: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(allowed) {
        return Err(CliError::Usage(format!(
            "invalid profile name {name:?}: use 1 to {MAX_NAME} letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// One profile of a configuration directory.
#[derive(Debug, Clone)]
pub struct Profile {
    name: String,
    dir: PathBuf,
}

impl Profile {
    /// The profile `name` of the configuration directory `config_dir`; the name is validated.
    pub fn open(config_dir: &Path, name: &str) -> Result<Self> {
        validate(name)?;
        let dir = if name == DEFAULT {
            config_dir.to_path_buf()
        } else {
            config_dir.join(PROFILES_DIR).join(name)
        };
        Ok(Self { name: name.to_string(), dir })
    }

    /// Every profile of `config_dir` that has a session or settings, `default` first (always
    /// listed), then the others by name.
    pub fn all(config_dir: &Path) -> Result<Vec<Self>> {
        let mut names = Vec::new();
        let root = config_dir.join(PROFILES_DIR);
        match std::fs::read_dir(&root) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let Ok(name) = entry.file_name().into_string() else { continue };
                    if validate(&name).is_ok() && name != DEFAULT && entry.path().is_dir() {
                        names.push(name);
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CliError::Io { context: "cannot read", path: root, source }),
        }
        names.sort();
        let mut profiles = vec![Self::open(config_dir, DEFAULT)?];
        for name in names {
            profiles.push(Self::open(config_dir, &name)?);
        }
        Ok(profiles)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its session store.
    pub fn sessions(&self) -> SessionStore {
        SessionStore::new(&self.dir)
    }

    fn settings_path(&self) -> PathBuf {
        self.dir.join(SETTINGS_FILE)
    }

    /// Its settings (empty when it has none yet).
    pub fn settings(&self) -> Result<Settings> {
        let path = self.settings_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Settings::default())
            }
            Err(source) => return Err(CliError::Io { context: "cannot read", path, source }),
        };
        serde_json::from_str(&text).map_err(|source| CliError::ProfileFile { path, source })
    }

    /// Stores its settings (the directory is created private, as for sessions).
    pub fn save_settings(&self, settings: &Settings) -> Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.settings_path();
        let json = serde_json::to_vec_pretty(settings)
            .map_err(|source| CliError::ProfileFile { path: path.clone(), source })?;
        write_private(&path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["default", "prod", "eu-west_2", "A1"] {
            assert!(validate(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in ["", "..", ".", "a/b", "../etc", "a b", "prod.", "é", "a\\b", long.as_str()] {
            assert!(matches!(validate(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn default_keeps_the_single_profile_layout_and_others_are_apart() {
        let config = Path::new("/c");
        assert_eq!(Profile::open(config, DEFAULT).unwrap().dir(), Path::new("/c"));
        assert_eq!(Profile::open(config, "prod").unwrap().dir(), Path::new("/c/profiles/prod"));
        assert!(Profile::open(config, "../c").is_err());
    }

    #[test]
    fn settings_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let prod = Profile::open(dir.path(), "prod").unwrap();
        assert_eq!(prod.settings().unwrap(), Settings::default());
        let settings =
            Settings { server: Some("https://s".into()), ca_file: Some("/ca.pem".into()) };
        prod.save_settings(&settings).unwrap();
        assert_eq!(prod.settings().unwrap(), settings);
        std::fs::create_dir_all(dir.path().join("profiles/not a profile")).unwrap();
        let names: Vec<String> =
            Profile::all(dir.path()).unwrap().iter().map(|p| p.name().to_string()).collect();
        assert_eq!(names, ["default", "prod"]);
    }
}
