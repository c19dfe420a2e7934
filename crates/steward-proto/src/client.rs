//! A typed client for every public Steward service over one channel. It attaches the current
//! access token to each call; sign in with [`Steward::auth`] and store the token with
//! [`Steward::set_access_token`].

use std::sync::{Arc, RwLock};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::admin::v1::admin_service_client::AdminServiceClient;
use crate::admin::v1::organization_service_client::OrganizationServiceClient;
use crate::admin::v1::role_service_client::RoleServiceClient;
use crate::admin::v1::service_account_service_client::ServiceAccountServiceClient;
use crate::audit::v1::audit_service_client::AuditServiceClient;
use crate::auth::v1::auth_service_client::AuthServiceClient;
use crate::billing::v1::billing_service_client::BillingServiceClient;
use crate::commands::v1::command_service_client::CommandServiceClient;
use crate::commands::v1::system_service_client::SystemServiceClient;

/// Adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone, Debug, Default)]
pub struct BearerToken {
    token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let token =
            self.token.read().map_err(|_| tonic::Status::internal("token lock poisoned"))?;
        if let Some(value) = token.as_ref() {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The endpoint for `url`: plaintext for `http://`; for `https://`, TLS verified against the
/// system's roots plus `ca_pem`, HTTP/2 by ALPN. Nothing is sent before the server's certificate
/// is verified. On a system without CA certificates only `ca_pem` is trusted.
pub fn endpoint(
    url: impl Into<String>,
    ca_pem: Option<Vec<u8>>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.into())?;
    if endpoint.uri().scheme_str() != Some("https") {
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new();
    let has_ca = ca_pem.is_some();
    if let Some(ca) = ca_pem {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    match endpoint.clone().tls_config(tls.clone().with_native_roots()) {
        Ok(endpoint) => Ok(endpoint),
        Err(_) if has_ca => endpoint.tls_config(tls),
        Err(err) => Err(err),
    }
}

/// Whether `url` is plaintext `http://` to a host other than this machine (`localhost` or a
/// loopback address): the CLI and the agent refuse it unless told `--insecure-plaintext`.
pub fn is_plaintext_off_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::transport::Uri>() else { return false };
    if uri.scheme_str() != Some("http") {
        return false;
    }
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    !(host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// An error and its causes, `: `-joined. A transport error's own text says little ("transport
/// error"); its causes say what failed (refused, certificate not trusted, name mismatch...).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The channel type every service client of [`Steward`] uses.
pub type AuthedChannel = InterceptedService<Channel, BearerToken>;

/// One connection to a Steward deployment (or to `steward-server dev`).
#[derive(Clone, Debug)]
pub struct Steward {
    channel: Channel,
    token: BearerToken,
}

impl Steward {
    /// Connects to `url`, e.g. `http://127.0.0.1:50051` or `https://steward.example.com`
    /// (verified against the system's roots).
    pub async fn connect(url: impl Into<String>) -> Result<Self, tonic::transport::Error> {
        Self::connect_with_ca(url, None).await
    }

    /// Connects to `url`; an `https://` server is verified against the system's roots plus
    /// `ca_pem` (PEM certificates, e.g. the CA of `steward-server dev --tls`).
    pub async fn connect_with_ca(
        url: impl Into<String>,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = endpoint(url, ca_pem)?.connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// Wraps an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self { channel, token: BearerToken::default() }
    }

    /// Uses `token` (an access token from sign-in) for every later call; `None` signs out locally.
    pub fn set_access_token(&self, token: Option<&str>) -> Result<(), tonic::Status> {
        let value = token
            .map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| tonic::Status::invalid_argument("access token is not a valid header"))?;
        let mut slot =
            self.token.token.write().map_err(|_| tonic::Status::internal("token lock poisoned"))?;
        *slot = value;
        Ok(())
    }

    /// Signs in as a service account: trades `api_key` (`STEWARD_API_KEY`) for an access token
    /// and uses it for every later call. Tokens from keys are not refreshed: call this again
    /// before the answered expiry (Unix seconds).
    pub async fn sign_in_with_api_key(&self, api_key: &str) -> Result<i64, tonic::Status> {
        let request = crate::auth::v1::ExchangeApiKeyRequest { api_key: api_key.to_string() };
        let tokens = self
            .auth()
            .exchange_api_key(request)
            .await?
            .into_inner()
            .tokens
            .ok_or_else(|| tonic::Status::internal("ExchangeApiKey answered no tokens"))?;
        self.set_access_token(Some(&tokens.access_token))?;
        Ok(tokens.access_token_expire_time.map_or(0, |t| t.seconds))
    }

    /// Signs in with `api_key` and keeps the access token fresh: a background task exchanges the
    /// key again a minute before each token expires (retrying every few seconds if the server is
    /// unreachable). The first exchange's refusal is returned; abort the handle to stop. This is
    /// what a long-running program (a CI job, an integration) reading `STEWARD_API_KEY` uses.
    pub async fn keep_signed_in_with_api_key(
        &self,
        api_key: impl Into<String>,
    ) -> Result<tokio::task::JoinHandle<()>, tonic::Status> {
        let api_key = api_key.into();
        let mut expires = self.sign_in_with_api_key(&api_key).await?;
        let client = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                // A client has no injected clock: token lifetimes are wall time.
                #[allow(clippy::disallowed_methods)]
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                let wait = (expires - now - 60).clamp(1, 86_400);
                #[allow(clippy::disallowed_methods)] // waiting for the token to age, wall time
                tokio::time::sleep(std::time::Duration::from_secs(wait.unsigned_abs())).await;
                loop {
                    match client.sign_in_with_api_key(&api_key).await {
                        Ok(next) => {
                            expires = next;
                            break;
                        }
                        // Retry backoff, wall time.
                        #[allow(clippy::disallowed_methods)]
                        Err(_) => tokio::time::sleep(std::time::Duration::from_secs(5)).await,
                    }
                }
            }
        }))
    }

    /// A copy sharing the channel but with its own token (acting as another administrator).
    pub fn with_token(&self, token: &str) -> Result<Self, tonic::Status> {
        let other = Self::from_channel(self.channel.clone());
        other.set_access_token(Some(token))?;
        Ok(other)
    }

    fn authed(&self) -> AuthedChannel {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    /// Sign-in, sessions, passwords, MFA, JWKS.
    pub fn auth(&self) -> AuthServiceClient<AuthedChannel> {
        AuthServiceClient::new(self.authed())
    }

    /// Administrators and the caller's profile.
    pub fn admin(&self) -> AdminServiceClient<AuthedChannel> {
        AdminServiceClient::new(self.authed())
    }

    /// Organizations.
    pub fn organizations(&self) -> OrganizationServiceClient<AuthedChannel> {
        OrganizationServiceClient::new(self.authed())
    }

    /// RoleService (the permission catalog).
    pub fn roles(&self) -> RoleServiceClient<AuthedChannel> {
        RoleServiceClient::new(self.authed())
    }

    /// Service accounts and their API keys.
    pub fn service_accounts(&self) -> ServiceAccountServiceClient<AuthedChannel> {
        ServiceAccountServiceClient::new(self.authed())
    }

    /// The payment card.
    pub fn billing(&self) -> BillingServiceClient<AuthedChannel> {
        BillingServiceClient::new(self.authed())
    }

    /// The audit log.
    pub fn audit(&self) -> AuditServiceClient<AuthedChannel> {
        AuditServiceClient::new(self.authed())
    }

    /// Commands, grants, access checks and runs.
    pub fn commands(&self) -> CommandServiceClient<AuthedChannel> {
        CommandServiceClient::new(self.authed())
    }

    /// Systems and connect keys.
    pub fn systems(&self) -> SystemServiceClient<AuthedChannel> {
        SystemServiceClient::new(self.authed())
    }
}
