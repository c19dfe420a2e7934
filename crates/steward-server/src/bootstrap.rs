//! The first organization of an installation: `steward-server bootstrap` (a Kubernetes Job or a
//! `kubectl exec`) and the first start of `dev` both create it here, through
//! `OrganizationService.CreateOrganization` on the admin service's internal listener
//! (`internal.admin_url`, with the service credential and the internal TLS settings). The admin
//! service then has the auth service mail the owner a set-password link.
//!
//! Idempotent by design: once **any** organization exists the installation is bootstrapped and
//! nothing is created or mailed, whatever name and owner are asked for (later organizations are
//! created with `CreateOrganization` itself). The `request_id` is derived from the inputs, so two
//! runs racing with the same inputs create one organization and one email (the second is answered
//! with the first's result). Unreachable peers are retried with backoff for a bounded time, since
//! a Job may start before the admin service is ready.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use steward_proto::admin::v1::{CreateOrganizationRequest, ListOrganizationsRequest, Organization};
use steward_runtime::config::Config;
use steward_runtime::service::{InternalChannel, Peers};
use steward_runtime::ApiError;
use tonic::Code;

/// Why the first organization could not be created (or found).
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The name or the email is not acceptable; nothing was sent.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The command-line flag at fault.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The settings needed to reach the admin service are missing or broken.
    #[error("cannot reach the admin service with this configuration: {0}")]
    Config(String),
    /// The admin service refused the service credential (or, under mutual TLS, the missing
    /// client certificate).
    #[error(
        "the admin service at {url} refused the internal call ({message}); check \
         internal.service_token (STEWARD_INTERNAL__SERVICE_TOKEN) and, with mutual TLS, \
         internal.client_cert_file / client_key_file"
    )]
    Refused {
        /// `internal.admin_url`.
        url: String,
        /// The admin service's answer.
        message: String,
    },
    /// `internal.admin_url` names a listener that does not serve the internal RPCs.
    #[error(
        "{url} is not the admin service's internal listener ({message}); point \
         internal.admin_url (STEWARD_INTERNAL__ADMIN_URL) at server.internal_listen \
         (port 50052 by default)"
    )]
    NotInternal {
        /// `internal.admin_url`.
        url: String,
        /// The listener's answer.
        message: String,
    },
    /// No answer within the wait.
    #[error("the admin service at {url} was not reachable within {waited_secs} s: {last}")]
    Unreachable {
        /// `internal.admin_url`.
        url: String,
        /// The bound given (`--wait-secs`).
        waited_secs: u64,
        /// The last failure.
        last: String,
    },
    /// Any other answer.
    #[error("the admin service at {url} answered {code:?}: {message}")]
    Failed {
        /// `internal.admin_url`.
        url: String,
        /// The gRPC code.
        code: Code,
        /// Its message.
        message: String,
    },
}

impl BootstrapError {
    /// Whether the error is the caller's input (a usage error) rather than the service's state.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Self::Invalid { .. })
    }
}

/// The organization to create and its owner, validated with the admin service's own rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstOrganization {
    display_name: String,
    owner_email: String,
}

impl FirstOrganization {
    /// Checks `display_name` (1 to 200 characters, not blank) and `owner_email` before anything
    /// is sent.
    pub fn new(display_name: &str, owner_email: &str) -> Result<Self, BootstrapError> {
        let length = display_name.chars().count();
        if display_name.trim().is_empty() || length > steward_admin::organization::MAX_DISPLAY_NAME
        {
            return Err(BootstrapError::Invalid {
                flag: "--organization",
                reason: format!(
                    "must be 1 to {} characters, not only spaces",
                    steward_admin::organization::MAX_DISPLAY_NAME
                ),
            });
        }
        steward_admin::email::Email::parse("owner_email", owner_email).map_err(|err| {
            let reason = match err {
                ApiError::InvalidArgument(violations) => {
                    violations.into_iter().map(|v| v.description).collect::<Vec<_>>().join("; ")
                }
                other => other.to_string(),
            };
            BootstrapError::Invalid { flag: "--owner-email", reason }
        })?;
        Ok(Self { display_name: display_name.to_string(), owner_email: owner_email.to_string() })
    }

    /// The organization's display name.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The owner's email.
    pub fn owner_email(&self) -> &str {
        &self.owner_email
    }

    /// The `request_id` of the CreateOrganization call: a UUID (version 8) from a SHA-256 of the
    /// display name and the lower-cased email, the same for every run with these inputs.
    pub fn request_id(&self) -> String {
        let digest = Sha256::digest(format!(
            "steward-server bootstrap\n{}\n{}",
            self.display_name,
            self.owner_email.to_ascii_lowercase()
        ));
        let mut bytes = [0u8; 16];
        for (byte, value) in bytes.iter_mut().zip(digest.iter()) {
            *byte = *value;
        }
        uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
    }
}

/// What bootstrapping found.
#[derive(Clone, Debug, PartialEq)]
pub enum Bootstrapped {
    /// The organization was created (or a concurrent run with the same inputs created it) and
    /// the owner's invite is on its way.
    Created(Organization),
    /// An organization already existed (the oldest is given); nothing was created or mailed.
    Existing(Organization),
}

/// Creates `wanted` unless an organization exists, retrying an unreachable admin service with
/// backoff (250 ms doubling to 5 s) for up to `wait`.
#[allow(clippy::disallowed_methods)] // wall-clock backoff on purpose: waiting for a peer
pub async fn first_organization(
    config: &Config,
    wanted: &FirstOrganization,
    wait: Duration,
) -> Result<Bootstrapped, BootstrapError> {
    let url = config.internal.admin_url.clone();
    let peers = Peers::from_config(config).map_err(|e| BootstrapError::Config(e.to_string()))?;
    let mut client = OrganizationServiceClient::new(peers.internal(&peers.admin));
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let status = match attempt(&mut client, wanted).await {
            Ok(done) => return Ok(done),
            Err(status) => status,
        };
        let message = describe(&status);
        match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted => {
                let left = wait.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(BootstrapError::Unreachable {
                        url,
                        waited_secs: wait.as_secs(),
                        last: message,
                    });
                }
                let pause = delay.min(left);
                tracing::warn!(
                    url = %url,
                    code = ?status.code(),
                    error = %message,
                    retry_in_ms = pause.as_millis() as u64,
                    "admin service not ready, retrying"
                );
                tokio::time::sleep(pause).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Code::Unauthenticated | Code::PermissionDenied => {
                return Err(BootstrapError::Refused { url, message });
            }
            Code::Unimplemented => return Err(BootstrapError::NotInternal { url, message }),
            code => return Err(BootstrapError::Failed { url, code, message }),
        }
    }
}

/// The status's message and the errors under it (the transport's cause: a refused connection,
/// a certificate the CA does not vouch for, ...).
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let cause = err.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        source = err.source();
    }
    text
}

/// One try: look for any organization, else create the wanted one.
async fn attempt(
    client: &mut OrganizationServiceClient<InternalChannel>,
    wanted: &FirstOrganization,
) -> Result<Bootstrapped, tonic::Status> {
    let existing = client
        .list_organizations(ListOrganizationsRequest { page_size: 1, ..Default::default() })
        .await?
        .into_inner();
    if let Some(organization) = existing.organizations.into_iter().next() {
        return Ok(Bootstrapped::Existing(organization));
    }
    let created = client
        .create_organization(CreateOrganizationRequest {
            organization: Some(Organization {
                display_name: wanted.display_name.clone(),
                ..Default::default()
            }),
            owner_email: wanted.owner_email.clone(),
            request_id: wanted.request_id(),
        })
        .await?
        .into_inner();
    created.organization.map(Bootstrapped::Created).ok_or_else(|| {
        tonic::Status::internal("CreateOrganization answered without the organization")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_is_a_uuid_fixed_by_the_inputs() {
        let a = FirstOrganization::new("Initech", "Boss@Example.com").unwrap();
        let b = FirstOrganization::new("Initech", "boss@example.com").unwrap();
        let c = FirstOrganization::new("Initech 2", "boss@example.com").unwrap();
        assert_eq!(a.request_id(), b.request_id(), "the email's case does not matter");
        assert_ne!(a.request_id(), c.request_id());
        let id = uuid::Uuid::parse_str(&a.request_id()).unwrap();
        assert_eq!(id.get_version_num(), 8);
        steward_runtime::names::check_request_id(&a.request_id()).unwrap();
    }

    #[test]
    fn bad_input_is_refused_before_any_call() {
        for (name, email, flag) in [
            ("", "boss@example.com", "--organization"),
            ("   ", "boss@example.com", "--organization"),
            (&*"x".repeat(201), "boss@example.com", "--organization"),
            ("Initech", "not-an-email", "--owner-email"),
            ("Initech", "", "--owner-email"),
        ] {
            let err = FirstOrganization::new(name, email).unwrap_err();
            assert!(err.is_invalid_input(), "{err}");
            assert!(err.to_string().starts_with(flag), "{err}");
        }
        assert!(FirstOrganization::new(&"é".repeat(200), "a.b@example.co").is_ok());
    }
}
