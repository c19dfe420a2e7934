//! Authentication for every service: a tower layer that looks up the RPC's rule in the role
//! table, verifies the caller's credential (an access token per RFC 8725, or the service
//! credential), and puts a typed [`Caller`] plus a [`RequestContext`] into request extensions.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::claims::{AccessClaims, Role, TokenScope, ACCESS_TOKEN_TYPE};
use crate::error::{ApiError, ApiResult};
use crate::roles::{rule, Access, Permissions, BILLING_PERMISSIONS};
use crate::service::Clock;

pub use crate::jwks::RemoteJwks;

/// Metadata key carrying the service credential on internal calls.
pub const SERVICE_CREDENTIAL_HEADER: &str = "x-steward-service-credential";
/// Metadata key carrying the caller's request id; generated when absent.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Clock skew between services tolerated when judging how recent a sign-in is.
const RECENT_AUTHENTICATION_SKEW_SECS: i64 = 30;

/// The only signature algorithm accepted, fixed in code (RFC 8725 §3.1).
pub const ALLOWED_ALGORITHM: Algorithm = Algorithm::EdDSA;

/// A verified administrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `organizations/{o}`.
    pub organization: String,
    /// `organizations/{o}/administrators/{a}`.
    pub administrator: String,
    /// Role claimed by the token.
    pub role: Role,
    /// Billing access claimed by the token.
    pub billing: bool,
    /// What the token's role and billing flag hold (services narrow it to what the caller's
    /// account holds now).
    pub permissions: Permissions,
    /// Session id.
    pub session: String,
    /// Usage restriction.
    pub scope: TokenScope,
    /// When the session's authentication happened (Unix seconds; the token's `auth_time`).
    pub auth_time: i64,
    /// A service account's API key (the token's `client_id`); empty for people.
    pub client_id: String,
}

impl Principal {
    /// Builds the principal from verified claims.
    pub fn from_claims(claims: AccessClaims) -> Self {
        Self {
            organization: claims.org,
            administrator: claims.sub,
            role: claims.role,
            billing: claims.billing,
            permissions: {
                let held = crate::roles::of_role(
                    claims.role,
                    claims.permissions.iter().map(String::as_str),
                )
                .with_billing(claims.billing);
                if claims.client_id.is_empty() {
                    held
                } else {
                    held.without(crate::roles::PEOPLE_ONLY)
                }
            },
            session: claims.sid,
            scope: claims.scope,
            auth_time: claims.auth_time,
            client_id: claims.client_id,
        }
    }

    /// Whether the caller is a service account (its token came from an API key).
    pub fn is_service_account(&self) -> bool {
        !self.client_id.is_empty()
    }

    /// Refuses (`PERMISSION_DENIED`, `RECENT_AUTHENTICATION_REQUIRED`) unless the caller signed
    /// in within `max_age_secs` of `now`: a stolen access token alone cannot make the changes that
    /// need it (the payment card), since a fresh sign-in needs the password and second factor.
    pub fn require_recent_authentication(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        max_age_secs: i64,
    ) -> ApiResult<()> {
        // A little negative age is clock skew between the auth service and this one.
        let age = now.timestamp().saturating_sub(self.auth_time);
        if self.auth_time > 0 && (-RECENT_AUTHENTICATION_SKEW_SECS..=max_age_secs).contains(&age) {
            return Ok(());
        }
        Err(ApiError::denied(
            "RECENT_AUTHENTICATION_REQUIRED",
            format!(
                "sign in again: this needs a sign-in within the last {} minutes",
                max_age_secs / 60
            ),
        ))
    }

    /// Refuses when `name` lies outside the caller's organization. The check is on the name alone,
    /// before any lookup, so the answer says nothing about whether the resource exists.
    pub fn check_organization(&self, name: &str) -> ApiResult<()> {
        let prefix = format!("{}/", self.organization);
        if name == self.organization || name.starts_with(&prefix) {
            Ok(())
        } else {
            Err(ApiError::denied(
                "WRONG_ORGANIZATION",
                format!("{} is outside the caller's organization", crate::names::shown(name)),
            ))
        }
    }
}

/// What a caller must still be when a service re-checks its current account (a token outlives
/// demotions and deletions by its lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// An active administrator, whatever its role.
    AnyRole,
    /// An active administrator whose current role (or, for billing, its current billing flag)
    /// holds the permission: the one the RPC's rule names.
    Permission(crate::roles::Permission),
}

impl Need {
    /// The refusal of a caller whose current permissions (its role's and its billing flag's)
    /// do not meet this need: `ROLE_REQUIRED` or `BILLING_REQUIRED`, naming the permission, as
    /// the layer refuses.
    pub fn refusal(self, held: &Permissions) -> Option<ApiError> {
        match self {
            Self::Permission(permission) if !held.holds(permission) => {
                Some(missing_permission(permission))
            }
            Self::AnyRole | Self::Permission(_) => None,
        }
    }
}

/// Who is calling, as established by the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credential (public RPCs, agent RPCs before the service checks the agent credential).
    Anonymous,
    /// Another Steward service.
    Service,
    /// A signed-in administrator.
    Administrator(Principal),
}

/// Per-call facts for audit and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// `x-request-id`, or a generated UUID.
    pub request_id: String,
    /// The client's address: the TCP peer, or the address a trusted proxy forwarded
    /// (`server.trusted_proxies`).
    pub client_address: String,
    /// Full gRPC path.
    pub method: String,
}

/// The verified administrator of a request; handlers behind an administrator rule call this.
pub fn principal<T>(request: &tonic::Request<T>) -> ApiResult<&Principal> {
    match request.extensions().get::<Caller>() {
        Some(Caller::Administrator(p)) => Ok(p),
        _ => Err(ApiError::Unauthenticated("an administrator's access token is required".into())),
    }
}

/// The caller as established by the layer (anonymous when the layer did not run).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous)
}

/// An administrator's call as an API adapter hands it to the domain: the verified caller and
/// the per-call facts, split from the message.
#[derive(Clone, Debug)]
pub struct AdministratorCall {
    /// Who is calling (from the verified access token).
    pub principal: Principal,
    /// Request id, client address and method.
    pub context: RequestContext,
}

/// Splits an administrator's request into its typed caller and its message;
/// `UNAUTHENTICATED` when the layer established no administrator.
pub fn administrator_call<T>(request: tonic::Request<T>) -> ApiResult<(AdministratorCall, T)> {
    let principal = principal(&request)?.clone();
    let context = context(&request);
    Ok((AdministratorCall { principal, context }, request.into_inner()))
}

/// Request id, client address and method of a request.
pub fn context<T>(request: &tonic::Request<T>) -> RequestContext {
    request.extensions().get::<RequestContext>().cloned().unwrap_or_else(|| RequestContext {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_address: request.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
        method: String::new(),
    })
}

/// Where verification keys come from.
pub enum KeySource {
    /// Keys known locally (the auth service's own, or tests).
    Static(HashMap<String, DecodingKey>),
    /// The auth service's published JWKS, cached, refreshed when an unknown `kid` shows up.
    Remote(Box<RemoteJwks>),
}

/// Verifies access tokens per RFC 8725: fixed algorithm, `typ`, `kid`, issuer, audience,
/// `exp`/`nbf` with a small leeway.
///
/// Tokens whose signature checked out are remembered (up to [`VERIFIED_CACHE`] of them), so a
/// client calling many times with one token pays for the signature once. A remembered token is
/// still judged on every call: its `kid` must still name a current key, and `exp`/`nbf` are
/// checked against the clock. Only exact token strings match; refused tokens are never kept.
pub struct TokenVerifier {
    issuer: String,
    audience: String,
    leeway: Duration,
    keys: KeySource,
    clock: Clock,
    verified: std::sync::Mutex<HashMap<String, Arc<(String, AccessClaims)>>>,
}

/// Verified tokens remembered per verifier; when full, the memory starts over.
pub const VERIFIED_CACHE: usize = 4096;

impl TokenVerifier {
    /// A verifier for tokens from `issuer` to `audience`, keys from `keys`, judging `exp` and
    /// `nbf` against `clock`.
    pub fn new(
        issuer: String,
        audience: String,
        leeway: Duration,
        keys: KeySource,
        clock: Clock,
    ) -> Self {
        Self { issuer, audience, leeway, keys, clock, verified: std::sync::Mutex::default() }
    }

    fn remembered(&self, token: &str) -> Option<Arc<(String, AccessClaims)>> {
        self.verified.lock().ok()?.get(token).cloned()
    }

    fn remember(&self, token: &str, kid: String, claims: AccessClaims) {
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CACHE {
                verified.clear();
            }
            verified.insert(token.to_string(), Arc::new((kid, claims)));
        }
    }

    async fn key(&self, kid: &str) -> ApiResult<Option<DecodingKey>> {
        Ok(match &self.keys {
            KeySource::Static(keys) => keys.get(kid).cloned(),
            KeySource::Remote(remote) => remote.key(kid).await?,
        })
    }

    fn judge_time(&self, claims: &AccessClaims) -> bool {
        let now = (self.clock)().timestamp();
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        claims.exp.saturating_add(leeway) > now && claims.nbf.saturating_sub(leeway) <= now
    }

    /// Verifies `token` and returns its claims; every failure is the same vague UNAUTHENTICATED.
    pub async fn verify(&self, token: &str) -> ApiResult<AccessClaims> {
        let invalid = || ApiError::Unauthenticated("invalid or expired access token".into());
        if let Some(known) = self.remembered(token) {
            let (kid, claims) = &*known;
            if self.key(kid).await?.is_none() || !self.judge_time(claims) {
                return Err(invalid());
            }
            return Ok(claims.clone());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.alg != ALLOWED_ALGORITHM || header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(invalid());
        }
        let kid = header.kid.ok_or_else(invalid)?;
        let key = self.key(&kid).await?.ok_or_else(invalid)?;
        let mut validation = Validation::new(ALLOWED_ALGORITHM);
        validation.algorithms = vec![ALLOWED_ALGORITHM];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Time is judged below against the injected clock, not the library's system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key, &validation)
            .map_err(|_| invalid())?
            .claims;
        if !self.judge_time(&claims) {
            return Err(invalid());
        }
        self.remember(token, kid, claims.clone());
        Ok(claims)
    }
}

struct AuthState {
    verifier: TokenVerifier,
    service_credential: Option<String>,
    on_denied: Option<DenialSink>,
    options: AuthOptions,
}

/// How the layer identifies callers beyond their credentials.
#[derive(Clone, Debug, Default)]
pub struct AuthOptions {
    /// Proxies whose forwarding header is believed ([`crate::peer`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header those proxies maintain.
    pub forwarded_header: crate::config::ForwardedHeader,
    /// Internal RPCs additionally require a verified TLS client certificate (mutual TLS).
    pub internal_needs_client_certificate: bool,
}

impl AuthOptions {
    /// The options `server` configures.
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            trusted_proxies: server.trusted_proxies.clone(),
            forwarded_header: server.forwarded_header,
            internal_needs_client_certificate: server.tls.client_ca_file.is_some(),
        }
    }
}

/// A call the layer refused although the caller proved who it is (a valid token whose role,
/// billing flag or scope does not allow the RPC). Such refusals belong in the audit log.
#[derive(Clone, Debug)]
pub struct DeniedCall {
    /// The authenticated administrator.
    pub principal: Principal,
    /// Request id and address.
    pub context: RequestContext,
    /// Stable reason code, e.g. `ROLE_REQUIRED`.
    pub reason: String,
    /// Sentence for people.
    pub message: String,
}

/// Receives [`DeniedCall`]s; must not block (spawn to do I/O).
pub type DenialSink = Arc<dyn Fn(DeniedCall) + Send + Sync>;

/// The tower layer enforcing the access rules ([`crate::roles::rule`]) on every call.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<AuthState>,
    accepts_service_credential: bool,
}

impl AuthLayer {
    /// A layer verifying tokens with `verifier`; `service_credential` authenticates internal
    /// calls (internal RPCs are refused to everyone when it is `None`); `on_denied` receives
    /// refusals of authenticated callers, for the audit log.
    pub fn new(
        verifier: TokenVerifier,
        service_credential: Option<String>,
        on_denied: Option<DenialSink>,
    ) -> Self {
        Self::with_options(verifier, service_credential, on_denied, AuthOptions::default())
    }

    /// [`AuthLayer::new`] with [`AuthOptions`] (trusted proxies, mutual TLS).
    pub fn with_options(
        verifier: TokenVerifier,
        service_credential: Option<String>,
        on_denied: Option<DenialSink>,
        options: AuthOptions,
    ) -> Self {
        let service_credential = service_credential.filter(|c| !c.is_empty());
        Self {
            state: Arc::new(AuthState { verifier, service_credential, on_denied, options }),
            accepts_service_credential: true,
        }
    }

    /// The same layer for the public listener: it never accepts the service credential, so
    /// internal RPCs are refused there whatever the caller presents.
    pub fn public(&self) -> Self {
        Self { state: self.state.clone(), accepts_service_credential: false }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            state: self.state.clone(),
            accepts_service_credential: self.accepts_service_credential,
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<AuthState>,
    accepts_service_credential: bool,
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The refusal of a call whose caller lacks `permission`: `BILLING_REQUIRED` for billing (which
/// only the billing flag grants), else `ROLE_REQUIRED`; the message names the permission.
fn missing_permission(permission: crate::roles::Permission) -> ApiError {
    let name = steward_proto::authz::PERMISSIONS
        .iter()
        .find(|entry| entry.permission == permission)
        .map_or("an unlisted permission", |entry| entry.name);
    if BILLING_PERMISSIONS.contains(&permission) {
        ApiError::denied(
            "BILLING_REQUIRED",
            format!("only administrators with billing access may do this ({name})"),
        )
    } else {
        ApiError::denied("ROLE_REQUIRED", format!("your role does not grant {name}"))
    }
}

impl AuthState {
    /// Establishes the caller; a refusal carries the principal when the token was valid.
    async fn authenticate(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        client_certificate: bool,
        accepts_service_credential: bool,
    ) -> Result<Caller, (ApiError, Option<Principal>)> {
        let plain = |err: ApiError| (err, None);
        let Some((access, permission)) = rule(path) else {
            return Err(plain(ApiError::denied(
                "NO_ACCESS_RULE",
                format!("{path} has no access rule"),
            )));
        };
        match access {
            Access::Public | Access::Agent => Ok(Caller::Anonymous),
            Access::Internal => {
                if !accepts_service_credential {
                    return Err(plain(ApiError::NotServed {
                        reason: "INTERNAL_LISTENER_ONLY",
                        message: format!(
                            "{path} is a service-to-service RPC, served only on the internal \
                             listener (server.internal_listen)"
                        ),
                    }));
                }
                if self.options.internal_needs_client_certificate && !client_certificate {
                    return Err(plain(ApiError::Unauthenticated(
                        "internal RPCs require a TLS client certificate from the internal CA"
                            .into(),
                    )));
                }
                let presented =
                    headers.get(SERVICE_CREDENTIAL_HEADER).and_then(|v| v.to_str().ok());
                match (presented, &self.service_credential) {
                    (Some(presented), Some(expected))
                        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) =>
                    {
                        Ok(Caller::Service)
                    }
                    (Some(_), _) => {
                        Err(plain(ApiError::Unauthenticated("invalid service credential".into())))
                    }
                    // An administrator's token is a credential, just not one that may call this.
                    (None, _) if bearer(headers).is_some() => Err(plain(ApiError::denied(
                        "SERVICE_CREDENTIAL_REQUIRED",
                        "internal RPCs accept only a service credential",
                    ))),
                    (None, _) => Err(plain(ApiError::Unauthenticated(
                        "this RPC accepts only a service credential".into(),
                    ))),
                }
            }
            Access::Enrollment | Access::AnyRole | Access::Administrator | Access::Billing => {
                let token = bearer(headers).ok_or_else(|| {
                    plain(ApiError::Unauthenticated("missing bearer access token".into()))
                })?;
                let claims = self.verifier.verify(token).await.map_err(plain)?;
                let principal = Principal::from_claims(claims);
                let people_only = access == Access::Enrollment
                    || permission.is_some_and(|p| crate::roles::PEOPLE_ONLY.contains(&p));
                let refusal = if principal.scope == TokenScope::MfaEnrollment
                    && access != Access::Enrollment
                {
                    Some(ApiError::denied(
                        "MFA_ENROLLMENT_REQUIRED",
                        "enrol MFA before using this RPC",
                    ))
                } else if principal.is_service_account() && people_only {
                    Some(ApiError::denied(
                        "PEOPLE_ONLY",
                        "only people may do this: service accounts have no profile, password, \
                         second factor or session, and do not issue machine credentials",
                    ))
                } else {
                    permission.filter(|p| !principal.permissions.holds(*p)).map(missing_permission)
                };
                match refusal {
                    Some(err) => Err((err, Some(principal))),
                    None => Ok(Caller::Administrator(principal)),
                }
            }
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        let accepts_service_credential = self.accepts_service_credential;
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let request_id = request
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let client_address = crate::peer::client_address(
                crate::peer::tcp_peer(request.extensions()),
                request.headers(),
                &state.options.trusted_proxies,
                state.options.forwarded_header,
            );
            let client_certificate = crate::peer::has_client_certificate(request.extensions());
            let context = RequestContext { request_id, client_address, method: path };
            let caller = state
                .authenticate(
                    &context.method,
                    request.headers(),
                    client_certificate,
                    accepts_service_credential,
                )
                .await;
            match caller {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    request.extensions_mut().insert(context);
                    inner.call(request).await
                }
                Err((err, principal)) => {
                    tracing::info!(method = %context.method, code = ?err.code(), request_id = %context.request_id, "call refused");
                    if let (
                        Some(principal),
                        Some(sink),
                        ApiError::PermissionDenied { reason, message },
                    ) = (principal, &state.on_denied, &err)
                    {
                        sink(DeniedCall {
                            principal,
                            context,
                            reason: reason.to_string(),
                            message: message.clone(),
                        });
                    }
                    let status: tonic::Status = err.into();
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Attaches the service credential (and the current span's W3C trace context, when traces are
/// exported) to calls made to another Steward service's internal RPCs, with a timeout below
/// the caller's deadline ([`crate::deadline`]).
#[derive(Clone)]
pub struct ServiceCredential {
    value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl std::fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceCredential(..)")
    }
}

impl ServiceCredential {
    /// Wraps the configured credential; refuses one that is not a valid header value.
    pub fn new(secret: &str) -> ApiResult<Self> {
        let value = secret
            .parse()
            .map_err(|_| ApiError::internal("service credential is not a valid header value"))?;
        Ok(Self { value })
    }
}

impl tonic::service::Interceptor for ServiceCredential {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(SERVICE_CREDENTIAL_HEADER, self.value.clone());
        crate::telemetry::inject_current_context(request.metadata_mut());
        if let Some(id) = crate::request_id::current().and_then(|id| id.to_str().ok()?.parse().ok())
        {
            request.metadata_mut().insert(REQUEST_ID_HEADER, id);
        }
        // Below the caller's deadline, so the peer gives up first and this service can answer.
        match crate::deadline::peer_timeout() {
            Some(timeout) => request.set_timeout(timeout),
            None => {
                return Err(tonic::Status::deadline_exceeded(
                    "the caller's deadline leaves no time for this call",
                ))
            }
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::{built_in, Permission};

    fn reason(err: Option<ApiError>) -> Option<&'static str> {
        err.map(|err| match err {
            ApiError::PermissionDenied { reason, .. } => reason,
            other => panic!("not a refusal: {other:?}"),
        })
    }

    #[test]
    fn needs_are_met_by_the_current_role_and_billing_flag() {
        let held = |role, billing| built_in(role).with_billing(billing);
        let create = Need::Permission(Permission::AdministratorsCreate);
        assert_eq!(reason(create.refusal(&held(Role::Administrator, false))), None);
        assert_eq!(reason(create.refusal(&held(Role::CommandRunner, true))), Some("ROLE_REQUIRED"));
        assert_eq!(reason(create.refusal(&held(Role::Manager, true))), Some("ROLE_REQUIRED"));
        let card = Need::Permission(Permission::BillingRead);
        assert_eq!(
            reason(card.refusal(&held(Role::Administrator, false))),
            Some("BILLING_REQUIRED")
        );
        assert_eq!(reason(card.refusal(&held(Role::CommandRunner, true))), None);
        assert_eq!(reason(Need::AnyRole.refusal(&held(Role::CommandRunner, false))), None);
    }
}
