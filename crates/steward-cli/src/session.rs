//! The session file: `session.json` in the profile's directory (for the profile `default`, the
//! configuration directory itself: `$STEWARD_CONFIG_DIR`, else `$XDG_CONFIG_HOME/steward`, else
//! `~/.config/steward`; see [`crate::profile`]). Written with mode 0600 (the directory 0700)
//! because it holds the tokens of a signed-in administrator.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

/// A signed-in administrator's session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The server the tokens were issued by; they are never sent anywhere else.
    pub server: String,
    /// The access token (a JWT).
    pub access_token: String,
    /// The refresh token; empty for MFA-enrolment sessions, which cannot be refreshed.
    #[serde(default)]
    pub refresh_token: String,
    /// `organizations/{organization}`.
    pub organization: String,
    /// `organizations/{organization}/administrators/{administrator}`.
    #[serde(default)]
    pub administrator: String,
    /// The email signed in with.
    #[serde(default)]
    pub email: String,
    /// `TOKEN_SCOPE_FULL` or `TOKEN_SCOPE_MFA_ENROLLMENT`.
    #[serde(default)]
    pub scope: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.server)
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("organization", &self.organization)
            .field("administrator", &self.administrator)
            .field("email", &self.email)
            .field("scope", &self.scope)
            .finish()
    }
}

/// The claims of an access token the CLI needs to know where it is signed in. They are read
/// without verification, only to expand names locally; the server verifies every token.
#[derive(Debug, Deserialize)]
pub struct Claims {
    /// `organizations/{organization}`.
    pub org: String,
    /// The administrator's (or service account's) resource name.
    pub sub: String,
}

/// The [`Claims`] in the payload of the access token (a JWT).
pub fn claims(access_token: &str) -> Result<Claims> {
    let payload =
        access_token.split('.').nth(1).ok_or(CliError::Protocol("malformed access token"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| CliError::Protocol("malformed access token"))?;
    serde_json::from_slice(&bytes).map_err(|_| CliError::Protocol("access token without org/sub"))
}

/// Where sessions are kept.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
}

/// The configuration directory chosen by the environment (see [`config_dir`]).
pub fn config_dir_from_env() -> Result<PathBuf> {
    config_dir(
        std::env::var_os("STEWARD_CONFIG_DIR"),
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
    .ok_or_else(|| {
        CliError::Usage(
            "no configuration directory: set STEWARD_CONFIG_DIR, XDG_CONFIG_HOME or HOME".into(),
        )
    })
}

impl SessionStore {
    /// A store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The session file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    /// The stored session, if any.
    pub fn load(&self) -> Result<Option<Session>> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CliError::Io { context: "cannot read", path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| CliError::SessionFile { path, source })
    }

    /// Stores `session`, replacing any other, readable by the owner only.
    pub fn save(&self, session: &Session) -> Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.path();
        let tmp = self.dir.join(format!(".session.json.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(session)
            .map_err(|source| CliError::SessionFile { path: path.clone(), source })?;
        write_private(&tmp, &json)?;
        std::fs::rename(&tmp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            CliError::Io { context: "cannot write", path, source }
        })
    }

    /// Forgets the session; true if there was one.
    pub fn clear(&self) -> Result<bool> {
        let path = self.path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CliError::Io { context: "cannot remove", path, source }),
        }
    }
}

/// The configuration directory: `STEWARD_CONFIG_DIR`, else `XDG_CONFIG_HOME/steward`, else
/// `HOME/.config/steward`. Empty values count as unset.
pub fn config_dir(
    steward: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(steward)
        .or_else(|| set(xdg).map(|x| x.join("steward")))
        .or_else(|| set(home).map(|h| h.join(".config").join("steward")))
}

/// Creates `dir` (and its parents) readable by the owner only (mode 0700 on Unix).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let io = |source| CliError::Io { context: "cannot create", path: dir.to_path_buf(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(io)
    }
}

/// Writes `bytes` to a new file at `path` that only the owner can read (mode 0600 on Unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| CliError::Io { context: "cannot write", path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        // An existing file keeps its mode on open; make sure it is private before writing.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Session {
        Session {
            server: "http://127.0.0.1:1".into(),
            access_token: "secret-access".into(),
            refresh_token: "secret-refresh".into(),
            organization: "organizations/o".into(),
            administrator: "organizations/o/administrators/a".into(),
            email: "a@example.com".into(),
            scope: "TOKEN_SCOPE_FULL".into(),
        }
    }

    #[test]
    fn config_dir_precedence() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(config_dir(s("/c"), s("/x"), s("/h")), Some(PathBuf::from("/c")));
        assert_eq!(config_dir(s(""), s("/x"), s("/h")), Some(PathBuf::from("/x/steward")));
        assert_eq!(config_dir(None, None, s("/h")), Some(PathBuf::from("/h/.config/steward")));
        assert_eq!(config_dir(None, s(""), None), None);
    }

    #[test]
    fn save_load_clear_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path().join("nested"));
        assert!(store.load().unwrap().is_none());
        store.save(&sample()).unwrap();
        assert_eq!(store.load().unwrap(), Some(sample()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(dir.path().join("nested")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert!(store.clear().unwrap());
        assert!(!store.clear().unwrap());
    }

    #[test]
    fn debug_redacts_tokens() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn reads_org_and_subject_from_the_token_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"org":"organizations/o","sub":"organizations/o/administrators/a"}"#);
        let c = claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(c.org, "organizations/o");
        assert_eq!(c.sub, "organizations/o/administrators/a");
        assert!(claims("not-a-jwt").is_err());
    }

    #[test]
    fn damaged_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path());
        std::fs::write(store.path(), "{").unwrap();
        assert!(matches!(store.load(), Err(CliError::SessionFile { .. })));
    }
}
