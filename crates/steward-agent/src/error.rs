//! The agent's errors: the reasons it stops with a non-zero status.

use std::path::PathBuf;

/// Why the agent stopped. Transient failures (the server unreachable, a stream broken) are
/// retried by the connection loop and never surface here.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file or directory of the state directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted ("read", "write", "create directory", ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The credential file exists but is not what the agent wrote.
    #[error("credential file {} is malformed: {source}", path.display())]
    CredentialFormat {
        /// The credential file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// There is no stored credential and no connect key to register with.
    #[error(
        "this agent is not registered: no credential in {} and no connect key given \
         (STEWARD_AGENT_CONNECT_KEY, --connect-key-file or --connect-key)",
        path.display()
    )]
    NotRegistered {
        /// The credential file that was looked for.
        path: PathBuf,
    },

    /// The `--server` value is not a usable URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidServer {
        /// The URL given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },

    /// The server's TLS certificate could not be verified (unknown CA, expired, or not issued
    /// for the server's name). Nothing was sent to it.
    #[error("refusing {url}: its TLS certificate is not trusted ({reason}); pass --ca-file with the CA that issued it")]
    UntrustedServer {
        /// The server URL.
        url: String,
        /// The verification failure.
        reason: String,
    },

    /// RegisterAgent refused the connect key (invalid, expired or revoked) or the request.
    #[error("registration refused by the server ({code:?}): {message}")]
    RegistrationRefused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },

    /// OpenStream refused the stored credential: the system was deleted or its credential
    /// revoked. Registering again needs a new connect key.
    #[error(
        "the server refused this agent's credential ({code:?}: {message}); the system was deleted \
         or its credential revoked. Remove {} and start the agent again with a new --connect-key",
        path.display()
    )]
    CredentialRefused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
        /// The credential file to remove.
        path: PathBuf,
    },
}

impl AgentError {
    /// An [`AgentError::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action, path: path.into(), source }
    }
}
