//! A typed client for every public Steward service over one channel: the Rust SDK, with the
//! Python and TypeScript SDKs' session, retry and page behaviour.
//!
//! * **Session.** [`Steward::sign_in`] (or [`Steward::set_tokens`] with `VerifyMfa`'s or
//!   `RefreshSession`'s tokens) keeps the access and refresh tokens; [`Steward::sign_in_with_api_key`]
//!   keeps a service account's key. Every call carries the access token, renewed first
//!   (`RefreshSession`, or `ExchangeApiKey` again) when it expires within
//!   [`DEFAULT_REFRESH_MARGIN`] (at most half its lifetime), one renewal at a time. A call
//!   refused with `UNAUTHENTICATED` (a token revoked or expired early) renews once and is
//!   retried once. [`Steward::set_access_token`] sends a token as it is, with nothing to renew.
//! * **Retries.** Idempotent calls ([`is_idempotent`]) failing with `UNAVAILABLE` (or a
//!   connection error) are retried per [`RetryPolicy`], never past the call's deadline; other
//!   calls never are.
//! * **Pages.** [`Steward::administrators`] and [`paginate`] stream every item of a list.
//!
//! Only calls with one request message are retried; calls that stream requests are not.

mod layer;
mod pages;
mod session;

pub use layer::{
    is_idempotent, InvalidRetryPolicy, RetryPolicy, SessionChannel, REQUEST_STREAMING_METHODS,
};
pub use pages::{paginate, Administrators, PageRequest, PageResponse};
pub use session::{SessionError, DEFAULT_REFRESH_MARGIN};

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tonic::metadata::{Ascii, MetadataValue};
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

/// Adds `authorization: Bearer <token>` when a token is set: a synchronous interceptor for
/// channels of one's own. [`Steward`] itself calls through [`SessionChannel`], which also
/// renews the token.
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
pub type AuthedChannel = SessionChannel;

/// One connection to a Steward deployment (or to `steward-server dev`). Clones share the
/// channel and the session.
#[derive(Clone, Debug)]
pub struct Steward {
    channel: Channel,
    session: Arc<session::Session>,
    retry: Option<layer::Retry>,
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

    /// Wraps an existing channel, without a session, with the default [`RetryPolicy`].
    pub fn from_channel(channel: Channel) -> Self {
        let retry = layer::Retry::try_from(RetryPolicy::default()).ok();
        Self { channel, session: Arc::default(), retry }
    }

    /// Retries idempotent calls with `policy` (`None`: never retries).
    pub fn with_retry_policy(
        mut self,
        policy: Option<RetryPolicy>,
    ) -> Result<Self, InvalidRetryPolicy> {
        self.retry = policy.map(layer::Retry::try_from).transpose()?;
        Ok(self)
    }

    /// Renews the access token `margin` before it expires (at most half its lifetime; default
    /// [`DEFAULT_REFRESH_MARGIN`]). Applies to the clones sharing this client's session.
    pub fn with_refresh_margin(self, margin: Duration) -> Self {
        self.session.set_margin(margin);
        self
    }

    /// Reads the time from `clock` (default: the system's) to decide when the access token is
    /// due for renewal, e.g. a test's clock that the server follows too. Applies to the clones
    /// sharing this client's session.
    pub fn with_clock(self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.session.set_clock(Arc::new(clock));
        self
    }

    /// Uses `token` (an access token) for every later call, as it is: nothing renews it (no
    /// refresh token, no API key); `None` signs out locally.
    pub fn set_access_token(&self, token: Option<&str>) -> Result<(), tonic::Status> {
        Ok(self.session.set_access_token(token)?)
    }

    /// Uses `tokens` (`SignIn`'s, `VerifyMfa`'s, `RefreshSession`'s) for every later call and
    /// renews them with their refresh token before they expire (or once when refused).
    pub fn set_tokens(&self, tokens: &crate::auth::v1::TokenSet) -> Result<(), tonic::Status> {
        Ok(self.session.set_tokens(tokens)?)
    }

    /// Signs in with email and password. When the answer carries tokens they are used from
    /// then on ([`Steward::set_tokens`]); when it is an MFA challenge, answer it with
    /// `auth().verify_mfa(...)` and pass its tokens to [`Steward::set_tokens`].
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        organization: &str,
    ) -> Result<crate::auth::v1::SignInResponse, tonic::Status> {
        use crate::auth::v1::{sign_in_response, SignInRequest};
        let request = SignInRequest {
            email: email.to_owned(),
            password: password.to_owned(),
            organization: organization.to_owned(),
        };
        let answer = self.auth().sign_in(request).await?.into_inner();
        if let Some(sign_in_response::Result::Tokens(tokens)) = &answer.result {
            self.set_tokens(tokens)?;
        }
        Ok(answer)
    }

    /// Signs in as a service account: trades `api_key` (`STEWARD_API_KEY`) for an access token
    /// now (a refused key changes nothing), and again whenever a call comes shortly before that
    /// token expires or it is refused. Answers the token's expiry (Unix seconds).
    pub async fn sign_in_with_api_key(&self, api_key: &str) -> Result<i64, tonic::Status> {
        self.session.sign_in_with_api_key(&self.channel, api_key).await
    }

    /// Signs in with `api_key` and, in a background task, exchanges it again a minute before
    /// each token expires (retrying every few seconds if the server is unreachable). Since
    /// [`Steward::sign_in_with_api_key`] renews the token by itself, this only renews ahead of
    /// calls. The first exchange's refusal is returned; abort the handle to stop.
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

    /// A copy sharing the channel (and retry policy) but with its own token, sent as it is
    /// (acting as another administrator).
    pub fn with_token(&self, token: &str) -> Result<Self, tonic::Status> {
        let other = Self { session: Arc::default(), ..self.clone() };
        other.set_access_token(Some(token))?;
        Ok(other)
    }

    /// The access token sent with every call (the last one received; never renews).
    pub fn access_token(&self) -> Option<String> {
        self.session.access_token()
    }

    /// When the access token expires, when the server said so.
    pub fn access_token_expire_time(&self) -> Option<SystemTime> {
        self.session.access_token_expire_time()
    }

    /// Whether this client acts as a service account through an API key.
    pub fn uses_api_key(&self) -> bool {
        self.session.uses_api_key()
    }

    /// Whether this client holds a session's refresh token.
    pub fn has_refresh_token(&self) -> bool {
        self.session.has_refresh_token()
    }

    /// Every administrator of an organization, page after page ([`Administrators::list_all`]).
    pub fn administrators(&self) -> Administrators {
        Administrators { client: self.clone() }
    }

    fn authed(&self) -> AuthedChannel {
        SessionChannel::new(self.channel.clone(), self.session.clone(), self.retry.clone())
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
