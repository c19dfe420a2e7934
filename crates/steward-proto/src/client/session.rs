//! The session a [`Steward`](super::Steward) client calls with: its access token and what renews
//! it (a refresh token or an API key), when it expires, and the one renewal in flight.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tonic::transport::Channel;
use tonic::Status;

use crate::auth::v1::auth_service_client::AuthServiceClient;
use crate::auth::v1::{ExchangeApiKeyRequest, RefreshSessionRequest, TokenSet};

/// How long before its access token expires a session renews it, unless the token lives less
/// than twice as long (then at half its lifetime): the Python and TypeScript SDKs' default.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// What a client reads the time from to decide when its access token is due for renewal.
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Why the client could not use what it was given or answered.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The token cannot be sent as an `authorization` header.
    #[error("access token is not a valid header")]
    InvalidToken,
    /// The server answered without the tokens the call promises.
    #[error("{0} answered no tokens")]
    NoTokens(&'static str),
    /// A token set without an access token.
    #[error("the token set has no access token")]
    NoAccessToken,
    /// There is no refresh token nor API key to renew the access token with.
    #[error("nothing to renew the access token with")]
    NotRenewable,
}

impl From<SessionError> for Status {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::InvalidToken | SessionError::NoAccessToken => {
                Status::invalid_argument(err.to_string())
            }
            SessionError::NoTokens(_) => Status::internal(err.to_string()),
            SessionError::NotRenewable => Status::unauthenticated(err.to_string()),
        }
    }
}

/// A refresh token or an API key: never printed.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What renews the access token.
#[derive(Clone, Debug)]
enum Renewal {
    /// Nothing: the token is sent as it is (set by hand, or an MFA-enrolment token).
    None,
    /// `RefreshSession`, which rotates the refresh token.
    RefreshToken(Secret),
    /// `ExchangeApiKey` (a service account's key).
    ApiKey(Secret),
}

struct State {
    access_token: Option<String>,
    header: Option<HeaderValue>,
    renewal: Renewal,
    expiry: Option<SystemTime>,
    lifetime: Option<Duration>,
    /// Changes whenever the credentials are replaced, so a renewal that was under way then
    /// does not overwrite them.
    generation: u64,
    margin: Duration,
    clock: Clock,
}

impl State {
    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// Whether the next call (one that needs a session) should renew first.
    fn due(&self) -> bool {
        if matches!(self.renewal, Renewal::None) {
            return false;
        }
        let (Some(_), Some(expiry)) = (&self.header, self.expiry) else {
            // No token yet (an API key before its first exchange) or an unknown expiry.
            return self.header.is_none();
        };
        let margin = self.lifetime.map_or(self.margin, |lifetime| self.margin.min(lifetime / 2));
        self.now() + margin >= expiry
    }

    fn unexpired(&self) -> bool {
        self.header.is_some() && self.expiry.is_some_and(|expiry| self.now() < expiry)
    }

    /// Uses `tokens` (keeping their refresh token, unless an API key renews this session).
    fn accept(
        &mut self,
        tokens: &TokenSet,
        rpc: &'static str,
    ) -> Result<HeaderValue, SessionError> {
        if tokens.access_token.is_empty() {
            return Err(SessionError::NoTokens(rpc));
        }
        let header = bearer(&tokens.access_token)?;
        let now = self.now();
        self.expiry =
            tokens.access_token_expire_time.and_then(|time| SystemTime::try_from(time).ok());
        self.lifetime = self.expiry.map(|expiry| expiry.duration_since(now).unwrap_or_default());
        if !matches!(self.renewal, Renewal::ApiKey(_)) {
            self.renewal = if tokens.refresh_token.is_empty() {
                Renewal::None
            } else {
                Renewal::RefreshToken(Secret(tokens.refresh_token.clone()))
            };
        }
        self.access_token = Some(tokens.access_token.clone());
        self.header = Some(header.clone());
        Ok(header)
    }

    fn replace(&mut self, token: Option<&str>, header: Option<HeaderValue>) {
        self.access_token = token.map(str::to_owned);
        self.header = header;
        self.renewal = Renewal::None;
        self.expiry = None;
        self.lifetime = None;
        self.generation = self.generation.wrapping_add(1);
    }
}

/// `Bearer <token>` as a sensitive header value.
fn bearer(token: &str) -> Result<HeaderValue, SessionError> {
    let mut value =
        HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| SessionError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The wall clock: a client has no injected clock unless given one ([`super::Steward::with_clock`]).
#[allow(clippy::disallowed_methods)] // a client's default notion of token lifetimes is wall time
fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// A client's credentials, shared by its clones; one renewal at a time.
pub(crate) struct Session {
    state: Mutex<State>,
    /// Held while renewing, so that concurrent calls wait for one renewal.
    renewing: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        let how = match (&state.renewal, &state.header) {
            (Renewal::ApiKey(_), _) => "api key",
            (Renewal::RefreshToken(_), _) => "session",
            (Renewal::None, Some(_)) => "token",
            (Renewal::None, None) => "anonymous",
        };
        f.debug_struct("Session").field("credentials", &how).finish_non_exhaustive()
    }
}

impl Default for Session {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                access_token: None,
                header: None,
                renewal: Renewal::None,
                expiry: None,
                lifetime: None,
                generation: 0,
                margin: DEFAULT_REFRESH_MARGIN,
                clock: Arc::new(wall_clock),
            }),
            renewing: tokio::sync::Mutex::new(()),
        }
    }
}

impl Session {
    /// The state; its updates are single assignments, so a panic elsewhere cannot leave it
    /// half-written and a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_clock(&self, clock: Clock) {
        self.lock().clock = clock;
    }

    pub(crate) fn set_margin(&self, margin: Duration) {
        self.lock().margin = margin;
    }

    /// Sends `token` as it is from now on (`None`: no token), with nothing to renew it.
    pub(crate) fn set_access_token(&self, token: Option<&str>) -> Result<(), SessionError> {
        let header = token.map(bearer).transpose()?;
        self.lock().replace(token, header);
        Ok(())
    }

    /// Uses `tokens` from now on, renewed with their refresh token (if any).
    pub(crate) fn set_tokens(&self, tokens: &TokenSet) -> Result<(), SessionError> {
        if tokens.access_token.is_empty() {
            return Err(SessionError::NoAccessToken);
        }
        bearer(&tokens.access_token)?;
        let mut state = self.lock();
        state.replace(None, None);
        state.accept(tokens, "TokenSet").map(drop)
    }

    /// Trades `api_key` for an access token now and renews it with the key from then on. A
    /// refused key changes nothing. Answers the token's expiry (Unix seconds; 0 if unknown).
    pub(crate) async fn sign_in_with_api_key(
        &self,
        channel: &Channel,
        api_key: &str,
    ) -> Result<i64, Status> {
        let _renewing = self.renewing.lock().await;
        let request = ExchangeApiKeyRequest { api_key: api_key.to_owned() };
        let tokens = AuthServiceClient::new(channel.clone())
            .exchange_api_key(request)
            .await?
            .into_inner()
            .tokens
            .ok_or(SessionError::NoTokens("ExchangeApiKey"))?;
        if tokens.access_token.is_empty() {
            return Err(SessionError::NoTokens("ExchangeApiKey").into());
        }
        bearer(&tokens.access_token)?;
        let mut state = self.lock();
        state.replace(None, None);
        state.renewal = Renewal::ApiKey(Secret(api_key.to_owned()));
        state.accept(&tokens, "ExchangeApiKey")?;
        Ok(tokens.access_token_expire_time.map_or(0, |t| t.seconds))
    }

    /// The `authorization` value for the next call, renewed first when due and `renew` (calls
    /// that need a session). When a renewal fails but the current token has not expired yet,
    /// that token is still used; otherwise the renewal's error is the call's.
    pub(crate) async fn token(
        &self,
        channel: &Channel,
        renew: bool,
    ) -> Result<Option<HeaderValue>, Status> {
        {
            let state = self.lock();
            if !(renew && state.due()) {
                return Ok(state.header.clone());
            }
        }
        let _renewing = self.renewing.lock().await;
        {
            // Another call may have renewed (or the credentials changed) meanwhile.
            let state = self.lock();
            if !state.due() {
                return Ok(state.header.clone());
            }
        }
        match self.renew(channel).await {
            Ok(header) => Ok(Some(header)),
            Err(status) => {
                let state = self.lock();
                if state.unexpired() {
                    Ok(state.header.clone())
                } else {
                    Err(status)
                }
            }
        }
    }

    /// After the server refused `refused` with `UNAUTHENTICATED`: a renewed token to retry the
    /// call with, or `None` (nothing to renew with, or the renewal failed).
    pub(crate) async fn renew_after_refusal(
        &self,
        channel: &Channel,
        refused: &HeaderValue,
    ) -> Option<HeaderValue> {
        let _renewing = self.renewing.lock().await;
        {
            let state = self.lock();
            if matches!(state.renewal, Renewal::None) {
                return None;
            }
            if let Some(current) = state.header.as_ref().filter(|current| *current != refused) {
                return Some(current.clone()); // renewed meanwhile
            }
        }
        self.renew(channel).await.ok()
    }

    /// Renews now (the caller holds `renewing`): `RefreshSession` or `ExchangeApiKey`.
    async fn renew(&self, channel: &Channel) -> Result<HeaderValue, Status> {
        let (renewal, generation) = {
            let state = self.lock();
            (state.renewal.clone(), state.generation)
        };
        let mut auth = AuthServiceClient::new(channel.clone());
        let (tokens, rpc) = match renewal {
            Renewal::None => return Err(SessionError::NotRenewable.into()),
            Renewal::RefreshToken(Secret(refresh_token)) => {
                let request = RefreshSessionRequest { refresh_token };
                (auth.refresh_session(request).await?.into_inner().tokens, "RefreshSession")
            }
            Renewal::ApiKey(Secret(api_key)) => {
                let request = ExchangeApiKeyRequest { api_key };
                (auth.exchange_api_key(request).await?.into_inner().tokens, "ExchangeApiKey")
            }
        };
        let tokens = tokens.ok_or(SessionError::NoTokens(rpc))?;
        let mut state = self.lock();
        if state.generation != generation {
            // The credentials were replaced while renewing: keep the new ones.
            return state.header.clone().ok_or_else(|| SessionError::NotRenewable.into());
        }
        Ok(state.accept(&tokens, rpc)?)
    }

    pub(crate) fn access_token(&self) -> Option<String> {
        self.lock().access_token.clone()
    }

    pub(crate) fn access_token_expire_time(&self) -> Option<SystemTime> {
        self.lock().expiry
    }

    pub(crate) fn uses_api_key(&self) -> bool {
        matches!(self.lock().renewal, Renewal::ApiKey(_))
    }

    pub(crate) fn has_refresh_token(&self) -> bool {
        matches!(self.lock().renewal, Renewal::RefreshToken(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(access: &str, refresh: &str, lifetime_secs: i64, now: SystemTime) -> TokenSet {
        let now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        TokenSet {
            access_token: access.into(),
            access_token_expire_time: Some(prost_types::Timestamp {
                seconds: now + lifetime_secs,
                nanos: 0,
            }),
            refresh_token: refresh.into(),
            ..Default::default()
        }
    }

    fn at(session: &Session, now: SystemTime) {
        session.set_clock(Arc::new(move || now));
    }

    #[test]
    fn renewal_is_due_within_the_margin_or_half_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let session = Session::default();
        at(&session, start);
        session.set_tokens(&tokens("a", "r", 600, start)).unwrap();
        assert!(session.has_refresh_token() && !session.uses_api_key());
        assert!(!session.lock().due());
        at(&session, start + Duration::from_secs(539));
        assert!(!session.lock().due());
        at(&session, start + Duration::from_secs(540));
        assert!(session.lock().due(), "60 s before expiry");

        // A 20 s token is renewed at half its lifetime, not 60 s early (always).
        at(&session, start);
        session.set_tokens(&tokens("b", "r", 20, start)).unwrap();
        assert!(!session.lock().due());
        at(&session, start + Duration::from_secs(10));
        assert!(session.lock().due());
    }

    #[test]
    fn a_token_set_by_hand_or_without_expiry_is_never_due() {
        let session = Session::default();
        session.set_access_token(Some("t")).unwrap();
        assert!(!session.lock().due() && !session.has_refresh_token());
        let mut blind = tokens("a", "r", 1, SystemTime::UNIX_EPOCH);
        blind.access_token_expire_time = None;
        session.set_tokens(&blind).unwrap();
        assert!(session.has_refresh_token() && !session.lock().due());
        assert!(session.access_token_expire_time().is_none());
    }

    #[test]
    fn bad_tokens_change_nothing_and_secrets_are_not_printed() {
        let session = Session::default();
        session.set_tokens(&tokens("a", "secret-refresh", 600, wall_clock())).unwrap();
        assert!(session.set_access_token(Some("bad\ntoken")).is_err());
        assert!(session.set_tokens(&TokenSet::default()).is_err());
        assert_eq!(session.access_token().as_deref(), Some("a"));
        let shown = format!("{session:?}");
        assert!(!shown.contains("secret") && !shown.contains("Bearer"), "{shown}");
    }
}
