//! The CLI's error type.

use std::path::PathBuf;

/// Everything that can make a command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is incomplete or contradictory (exit code 2).
    #[error("{0}")]
    Usage(String),

    /// No session for this server.
    #[error("not signed in to {server}; run `steward login`")]
    NotSignedIn {
        /// The server the command was for.
        server: String,
    },

    /// The access token was rejected and the refresh token could not renew it.
    #[error("the session has ended; run `steward login` again")]
    SessionExpired,

    /// The server could not be reached.
    #[error("cannot connect to {server}: {}", steward_proto::client::error_chain(source))]
    Connect {
        /// The server URL.
        server: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },

    /// The server answered with an error status.
    #[error("{}: {}", crate::output::code_name((**.0).code()), (**.0).message())]
    Rpc(Box<tonic::Status>),

    /// A local file could not be read or written.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// Writing to stdout or reading stdin failed.
    #[error("{context}: {source}")]
    Stdio {
        /// What was being done.
        context: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The session file is not valid JSON of the expected shape.
    #[error("the session file {} is damaged ({source}); run `steward login`", path.display())]
    SessionFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// A profile's settings file is not valid JSON of the expected shape.
    #[error("the profile file {} is damaged ({source}); fix or remove it", path.display())]
    ProfileFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// Input read from stdin or a flag value is malformed.
    #[error("{0}")]
    Input(String),

    /// A lookup done by the CLI itself (such as an administrator by email) found nothing.
    #[error("{0}")]
    NotFound(String),

    /// The server's answer lacked a field the API promises.
    #[error("unexpected answer from the server: {0}")]
    Protocol(&'static str),
}

impl CliError {
    /// The process exit code for this error: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The gRPC status, when the error came from the server.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            CliError::Rpc(status) => Some(status),
            _ => None,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Rpc(Box::new(status))
    }
}

/// The CLI's result type.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
