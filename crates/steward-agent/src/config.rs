//! Command-line settings and the state file holding the agent's credential.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// The default bound on each output stream (standard output, standard error) of a run.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// The name of the credential file inside the state directory.
pub const CREDENTIAL_FILE: &str = "credential.json";

/// The agent's command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "steward-agent",
    version,
    about = "Runs Steward commands on this system: registers with a connect key, then holds a \
             stream to the command service and executes what it is assigned"
)]
pub struct Args {
    /// The command service's URL, e.g. `https://steward.example.com`. Plaintext `http://` is
    /// accepted only for a loopback address unless `--insecure-plaintext` is given.
    #[arg(long, env = "STEWARD_AGENT_SERVER")]
    pub server: String,

    /// CA certificate (PEM) trusted for the server's TLS certificate, in addition to the
    /// system's roots.
    #[arg(long, env = "STEWARD_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Allow plaintext `http://` to a non-loopback server: the connect key, the credential and
    /// every script and its output then cross the network in clear.
    #[arg(long)]
    pub insecure_plaintext: bool,

    /// The connect key created by an Administrator; needed only on the first start. Keys may
    /// start with `-`. Prefer the environment variable or `--connect-key-file`: a value on the
    /// command line is visible to every user of the machine (`ps`).
    #[arg(
        long,
        env = "STEWARD_AGENT_CONNECT_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub connect_key: Option<String>,

    /// A file holding the connect key (surrounding whitespace ignored), e.g. a mounted secret.
    #[arg(long, env = "STEWARD_AGENT_CONNECT_KEY_FILE", conflicts_with = "connect_key")]
    pub connect_key_file: Option<PathBuf>,

    /// Where the agent keeps its credential.
    #[arg(long, env = "STEWARD_AGENT_STATE_DIR", default_value = "/var/lib/steward-agent")]
    pub state_dir: PathBuf,

    /// The bound, in bytes, on each output stream of a run; output beyond it is dropped and
    /// the stream marked truncated.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTPUT_BYTES)]
    pub max_output_bytes: u64,

    /// The hostname to register with; defaults to the kernel's hostname.
    #[arg(long)]
    pub hostname: Option<String>,

    /// Seconds between the agent's heartbeats on the stream.
    #[arg(long, default_value_t = 30, hide = true)]
    pub heartbeat_seconds: u64,
}

/// What the agent needs to run, resolved from [`Args`].
#[derive(Clone)]
pub struct AgentConfig {
    /// The command service's URL.
    pub server: String,
    /// Extra CA certificate (PEM file) for `https://` servers.
    pub ca_file: Option<PathBuf>,
    /// Plaintext `http://` to a non-loopback server is allowed.
    pub insecure_plaintext: bool,
    /// The connect key, if given.
    pub connect_key: Option<String>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The bound on each output stream of a run.
    pub max_output_bytes: u64,
    /// The hostname to register with.
    pub hostname: String,
    /// The interval between heartbeats.
    pub heartbeat_interval: Duration,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .field("insecure_plaintext", &self.insecure_plaintext)
            .field("connect_key", &self.connect_key.as_ref().map(|_| "<redacted>"))
            .field("state_dir", &self.state_dir)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("hostname", &self.hostname)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish()
    }
}

impl AgentConfig {
    /// The configuration `args` describe, the connect key read from `--connect-key-file` when
    /// one is named and the agent is not registered yet (a one-time key file may be deleted
    /// once the credential is stored).
    pub fn resolve(mut args: Args) -> Result<Self, crate::AgentError> {
        let registered = args.state_dir.join(CREDENTIAL_FILE).exists();
        if let Some(path) = args.connect_key_file.take().filter(|_| !registered) {
            let key = std::fs::read_to_string(&path).map_err(|source| crate::AgentError::Io {
                action: "read the connect key file",
                path: path.clone(),
                source,
            })?;
            args.connect_key = Some(key.trim().to_string());
        }
        Ok(Self::from(args))
    }
}

impl From<Args> for AgentConfig {
    fn from(args: Args) -> Self {
        Self {
            server: args.server,
            ca_file: args.ca_file,
            insecure_plaintext: args.insecure_plaintext,
            connect_key: args.connect_key.filter(|key| !key.is_empty()),
            state_dir: args.state_dir,
            max_output_bytes: args.max_output_bytes,
            hostname: args.hostname.filter(|h| !h.is_empty()).unwrap_or_else(system_hostname),
            heartbeat_interval: Duration::from_secs(args.heartbeat_seconds.max(1)),
        }
    }
}

impl AgentConfig {
    /// The path of the credential file.
    pub fn credential_path(&self) -> PathBuf {
        self.state_dir.join(CREDENTIAL_FILE)
    }
}

/// The kernel's hostname, or "localhost" when it cannot be read.
pub fn system_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The agent's identity, as returned by RegisterAgent and kept in
/// `{state-dir}/credential.json` (mode 0600).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential {
    /// The server the agent registered with (informational).
    pub server: String,
    /// The resource name of the registered system.
    pub system: String,
    /// The long-lived system credential, sent as `authorization: Bearer <credential>`.
    pub credential: String,
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCredential")
            .field("server", &self.server)
            .field("system", &self.system)
            .field("credential", &"<redacted>")
            .finish()
    }
}

impl StoredCredential {
    /// Reads the credential file; `None` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, AgentError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(AgentError::io("read", path, err)),
        };
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "credential file is readable by others; it should have mode 0600");
            }
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| AgentError::CredentialFormat { path: path.to_owned(), source })
    }

    /// Writes the credential file with mode 0600 (its directory with 0700 when created),
    /// replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), AgentError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|err| AgentError::io("create directory", dir, err))?;
        }
        let json = serde_json::to_vec_pretty(self)
            .map_err(|source| AgentError::CredentialFormat { path: path.to_owned(), source })?;
        let tmp = path.with_extension("json.tmp");
        // A leftover from an interrupted write may have other permissions; start afresh.
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|err| AgentError::io("create", &tmp, err))?;
        file.write_all(&json)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|err| AgentError::io("write", &tmp, err))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|err| AgentError::io("replace", path, err))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::disallowed_methods)]

    use super::*;
    use clap::Parser;

    #[test]
    fn credential_is_written_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(CREDENTIAL_FILE);
        assert_eq!(StoredCredential::load(&path).unwrap(), None);
        let cred = StoredCredential {
            server: "http://127.0.0.1:1".into(),
            system: "organizations/o/systems/s".into(),
            credential: "secret-credential".into(),
        };
        cred.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(StoredCredential::load(&path).unwrap(), Some(cred.clone()));

        // Saving again replaces it and keeps the mode.
        let other = StoredCredential { credential: "second".into(), ..cred };
        other.save(&path).unwrap();
        assert_eq!(StoredCredential::load(&path).unwrap(), Some(other));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_connect_key_comes_from_a_file_and_never_with_a_flag_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("connect-key");
        std::fs::write(&file, "  -bQx9_from_file\n").unwrap();
        let args = Args::try_parse_from([
            "steward-agent",
            "--server",
            "http://127.0.0.1:1",
            "--connect-key-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let config = AgentConfig::resolve(args).unwrap();
        assert_eq!(config.connect_key.as_deref(), Some("-bQx9_from_file"));
        let both = Args::try_parse_from([
            "steward-agent",
            "--server",
            "http://127.0.0.1:1",
            "--connect-key",
            "k",
            "--connect-key-file",
            file.to_str().unwrap(),
        ]);
        assert!(both.is_err(), "one source of the key");
        let missing = Args::try_parse_from([
            "steward-agent",
            "--server",
            "http://127.0.0.1:1",
            "--connect-key-file",
            dir.path().join("absent").to_str().unwrap(),
        ])
        .unwrap();
        let err = AgentConfig::resolve(missing).unwrap_err().to_string();
        assert!(err.contains("connect key file"), "{err}");
        // Once registered, the (deleted) key file is not needed.
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join(CREDENTIAL_FILE), "{}").unwrap();
        let registered = Args::try_parse_from([
            "steward-agent",
            "--server",
            "http://127.0.0.1:1",
            "--state-dir",
            state.to_str().unwrap(),
            "--connect-key-file",
            dir.path().join("absent").to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(AgentConfig::resolve(registered).unwrap().connect_key, None);
    }

    #[test]
    fn connect_keys_starting_with_a_hyphen_parse() {
        let args = Args::try_parse_from([
            "steward-agent",
            "--server",
            "http://x",
            "--connect-key",
            "-bQx9_key",
        ])
        .unwrap();
        assert_eq!(args.connect_key.as_deref(), Some("-bQx9_key"));
    }

    #[test]
    fn malformed_credential_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CREDENTIAL_FILE);
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(StoredCredential::load(&path), Err(AgentError::CredentialFormat { .. })));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let cred = StoredCredential {
            server: "s".into(),
            system: "sys".into(),
            credential: "topsecret".into(),
        };
        assert!(!format!("{cred:?}").contains("topsecret"));
        let args = Args::try_parse_from([
            "steward-agent",
            "--server",
            "http://x",
            "--connect-key",
            "keysecret",
        ])
        .unwrap();
        let config = AgentConfig::from(args);
        assert!(!format!("{config:?}").contains("keysecret"));
    }

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["steward-agent", "--server", "http://x"]).unwrap();
        assert_eq!(args.state_dir, PathBuf::from("/var/lib/steward-agent"));
        assert_eq!(args.max_output_bytes, 1024 * 1024);
        let config = AgentConfig::from(args);
        assert_eq!(config.connect_key, None);
        assert!(!config.hostname.is_empty());
        assert_eq!(config.heartbeat_interval, Duration::from_secs(30));
        assert!(Args::try_parse_from(["steward-agent"]).is_err());
    }
}
