//! The connection to the server and the signed-in session, with automatic refresh.
//!
//! With `STEWARD_API_KEY` set, the CLI acts as that key's service account instead: it never
//! reads or writes the session file, trades the key for an access token once per invocation
//! and keeps that token in memory only.

use std::fmt;
use std::future::Future;

use steward_proto::auth::v1::{ExchangeApiKeyRequest, RefreshSessionRequest, TokenScope};
use steward_proto::client::Steward;
use tonic::Code;

use crate::cli::{Cli, Format, DEFAULT_SERVER};
use crate::error::{CliError, Result};
use crate::profile::{self, Profile, Settings};
use crate::session::{claims, config_dir_from_env, Session, SessionStore};

/// The environment variable holding a service account's API key.
pub const API_KEY_VAR: &str = "STEWARD_API_KEY";

/// A service account's API key (`stw_{key}_{secret}`). Never printed: `Debug` is redacted.
#[derive(Clone)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// The key in `STEWARD_API_KEY`; unset or empty is none.
    fn from_env() -> Result<Option<Self>> {
        match std::env::var(API_KEY_VAR) {
            Ok(key) if key.trim().is_empty() => Ok(None),
            Ok(key) => Ok(Some(Self(key.trim().to_string()))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(CliError::Usage(format!("{API_KEY_VAR} is not valid UTF-8")))
            }
        }
    }
}

/// Everything a command needs: output format, server, session store and a lazily opened
/// connection.
pub struct Context {
    /// How to print results.
    pub format: Format,
    /// The server URL in use.
    pub server: String,
    profile: Profile,
    store: SessionStore,
    session: Option<Session>,
    anonymous: Option<Steward>,
    authed: Option<Steward>,
    ca_file: Option<std::path::PathBuf>,
    insecure_plaintext: bool,
    /// `STEWARD_API_KEY`, when set.
    api_key: Option<ApiKey>,
    /// With an API key: when the access token it was traded for expires (Unix seconds).
    api_key_token_expiry: i64,
}

/// `url` without a trailing slash, so equal servers compare equal.
fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

impl Context {
    /// Opens the profile (`--profile`/`STEWARD_PROFILE`), reads its session store and picks
    /// the server: `--server`/`STEWARD_SERVER`, else the profile's, else its session's, else
    /// the default; and the CA file: `--ca-file`/`STEWARD_CA_FILE`, else the profile's. With
    /// `STEWARD_API_KEY` the session file is not read (nor its server used).
    pub fn new(cli: &Cli) -> Result<Self> {
        let api_key = ApiKey::from_env()?;
        let profile = Profile::open(&config_dir_from_env()?, &cli.profile)?;
        let settings = profile.settings()?;
        let store = profile.sessions();
        let session = if api_key.is_some() { None } else { store.load()? };
        let server = match (&cli.server, &settings.server, &session) {
            (Some(server), _, _) | (None, Some(server), _) => normalize(server),
            (None, None, Some(session)) => normalize(&session.server),
            (None, None, None) => DEFAULT_SERVER.to_string(),
        };
        Ok(Self {
            format: cli.output,
            server,
            profile,
            store,
            session,
            anonymous: None,
            authed: None,
            ca_file: cli.ca_file.clone().or(settings.ca_file),
            insecure_plaintext: cli.insecure_plaintext,
            api_key,
            api_key_token_expiry: 0,
        })
    }

    /// Whether `STEWARD_API_KEY` is set: commands then act as its service account.
    pub fn uses_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// With `STEWARD_API_KEY`: trades the key for an access token, unless already done in this
    /// invocation, and uses it as the session (in memory only). Without it, does nothing.
    pub async fn sign_in_with_api_key(&mut self) -> Result<()> {
        if self.api_key.is_none() || self.session.is_some() {
            return Ok(());
        }
        self.exchange_api_key().await
    }

    /// ExchangeApiKey. The RPC is called directly rather than through
    /// [`Steward::sign_in_with_api_key`]: the CLI needs the token itself (its `org` and `sub`
    /// claims), and the anonymous client must stay without a token.
    async fn exchange_api_key(&mut self) -> Result<()> {
        let Some(ApiKey(api_key)) = self.api_key.clone() else {
            return Err(CliError::NotSignedIn { server: self.server.clone() });
        };
        let request = ExchangeApiKeyRequest { api_key };
        let answer = match self.anonymous().await?.auth().exchange_api_key(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status) => return Err(api_key_refused(&status)),
        };
        let tokens = answer.tokens.ok_or(CliError::Protocol("ExchangeApiKey without tokens"))?;
        let claims = claims(&tokens.access_token)?;
        self.api_key_token_expiry = tokens.access_token_expire_time.map_or(0, |t| t.seconds);
        self.authed = None;
        self.session = Some(Session {
            server: self.server.clone(),
            access_token: tokens.access_token,
            refresh_token: String::new(),
            organization: claims.org,
            administrator: claims.sub,
            email: String::new(),
            scope: TokenScope::Full.as_str_name().to_string(),
        });
        Ok(())
    }

    /// The session store.
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// The profile in use.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// `steward` with `--profile NAME` when the profile is not the default one: the start of
    /// a command line to suggest to the user.
    pub fn steward(&self) -> String {
        if self.profile.name() == profile::DEFAULT {
            "steward".to_string()
        } else {
            format!("steward --profile {}", self.profile.name())
        }
    }

    /// Remembers the server and CA file in use as the profile's (after a sign-in), the CA file
    /// as an absolute path so the profile works from any directory.
    pub fn remember_server(&self) -> Result<()> {
        let ca_file = match &self.ca_file {
            Some(path) => Some(std::path::absolute(path).map_err(|source| CliError::Io {
                context: "cannot resolve",
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        self.profile.save_settings(&Settings { server: Some(self.server.clone()), ca_file })
    }

    /// The session for this server, or [`CliError::NotSignedIn`]. Tokens are never sent to a
    /// server other than the one that issued them.
    pub fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .filter(|s| normalize(&s.server) == self.server)
            .ok_or_else(|| CliError::NotSignedIn { server: self.server.clone() })
    }

    /// The signed-in organization, `organizations/{organization}`.
    pub fn organization(&self) -> Result<String> {
        Ok(self.session()?.organization.clone())
    }

    /// Stores a new session (after sign-in) and uses it from now on. Refused with
    /// `STEWARD_API_KEY`, which is never mixed with a stored session.
    pub fn set_session(&mut self, session: Session) -> Result<()> {
        if self.uses_api_key() {
            return Err(api_key_is_set("store a session"));
        }
        self.store.save(&session)?;
        self.authed = None;
        self.session = Some(session);
        Ok(())
    }

    /// Forgets the session locally; true if there was one. Refused with `STEWARD_API_KEY`.
    pub fn clear_session(&mut self) -> Result<bool> {
        if self.uses_api_key() {
            return Err(api_key_is_set("forget a session"));
        }
        self.authed = None;
        self.session = None;
        self.store.clear()
    }

    /// A client without a token, for the public RPCs (sign-in, invites, resets).
    pub async fn anonymous(&mut self) -> Result<Steward> {
        if let Some(client) = &self.anonymous {
            return Ok(client.clone());
        }
        if steward_proto::client::is_plaintext_off_loopback(&self.server)
            && !self.insecure_plaintext
        {
            return Err(CliError::Usage(format!(
                "refusing plaintext {}: use https:// (or pass --insecure-plaintext)",
                self.server
            )));
        }
        let ca_pem = match &self.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| CliError::Io {
                context: "cannot read the CA file",
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let client = Steward::connect_with_ca(self.server.clone(), ca_pem)
            .await
            .map_err(|source| CliError::Connect { server: self.server.clone(), source })?;
        self.anonymous = Some(client.clone());
        Ok(client)
    }

    async fn authed(&mut self) -> Result<Steward> {
        if let Some(client) = &self.authed {
            return Ok(client.clone());
        }
        let token = self.session()?.access_token.clone();
        let client = self.anonymous().await?.with_token(&token)?;
        self.authed = Some(client.clone());
        Ok(client)
    }

    /// Calls an RPC as the signed-in administrator. If the access token is rejected as
    /// UNAUTHENTICATED, renews the session once with its refresh token and calls again.
    pub async fn call<T, F, Fut>(&mut self, rpc: F) -> Result<T>
    where
        F: Fn(Steward) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.authed().await?;
        match rpc(client).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if status.code() == Code::Unauthenticated => {
                self.refresh(status).await?;
                let client = self.authed().await?;
                Ok(rpc(client).await?.into_inner())
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Every page of a List RPC, in order: `request` builds the request for a page token, `rpc`
    /// sends it (as [`Context::call`] does), `page` splits an answer into its items and the next
    /// page token.
    pub async fn all_pages<Req, Resp, Item, Rpc, Fut>(
        &mut self,
        request: impl Fn(String) -> Req,
        rpc: Rpc,
        page: impl Fn(Resp) -> (Vec<Item>, String),
    ) -> Result<Vec<Item>>
    where
        Req: Clone,
        Rpc: Fn(Steward, Req) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut items = Vec::new();
        let mut page_token = String::new();
        loop {
            let next = request(page_token);
            let answer = self.call(|s| rpc(s, next.clone())).await?;
            let (batch, next_token) = page(answer);
            items.extend(batch);
            if next_token.is_empty() {
                return Ok(items);
            }
            page_token = next_token;
        }
    }

    /// Exchanges the refresh token for new tokens and stores them. Without a refresh token
    /// (or when it is refused) the original rejection stands. With `STEWARD_API_KEY`, the key
    /// is exchanged again only if its token has expired (a long `--wait` or `runs watch`);
    /// any other rejection stands.
    async fn refresh(&mut self, rejected: tonic::Status) -> Result<()> {
        if self.uses_api_key() {
            let now = wall_clock().timestamp();
            if now + 5 < self.api_key_token_expiry {
                return Err(rejected.into());
            }
            return self.exchange_api_key().await;
        }
        let mut session = self.session()?.clone();
        if session.refresh_token.is_empty() {
            return Err(rejected.into());
        }
        let request = RefreshSessionRequest { refresh_token: session.refresh_token.clone() };
        let answer = match self.anonymous().await?.auth().refresh_session(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status) if status.code() == Code::Unauthenticated => {
                return Err(CliError::SessionExpired)
            }
            Err(status) => return Err(status.into()),
        };
        let tokens = answer.tokens.ok_or(CliError::Protocol("RefreshSession without tokens"))?;
        session.access_token = tokens.access_token;
        session.refresh_token = tokens.refresh_token;
        self.set_session(session)
    }
}

/// The wall clock. The CLI is a client run once, with no injected clock: the times it works
/// out (a new key's expiry, whether a token has expired) are meant in wall time.
#[allow(clippy::disallowed_methods)]
pub fn wall_clock() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// The usage error for what cannot be done as a service account.
pub fn api_key_is_set(what: &str) -> CliError {
    CliError::Usage(format!(
        "{API_KEY_VAR} is set: cannot {what} while acting as a service account (unset it to use \
         a signed-in administrator's session)"
    ))
}

/// The status of a failed ExchangeApiKey, its message saying that the key was the problem.
/// The code and `google.rpc` details are kept; the key itself is never part of it.
fn api_key_refused(status: &tonic::Status) -> CliError {
    let what = if status.code() == Code::Unauthenticated {
        format!("{API_KEY_VAR} was refused (malformed, unknown, expired or deleted)")
    } else {
        format!("cannot exchange {API_KEY_VAR}")
    };
    tonic::Status::with_details_and_metadata(
        status.code(),
        format!("{what}: {}", status.message()),
        status.details().to_vec().into(),
        status.metadata().clone(),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_debug_is_redacted() {
        let shown = format!("{:?}", ApiKey("stw_k_secret".into()));
        assert!(!shown.contains("secret") && !shown.contains("stw_"), "{shown}");
    }

    #[test]
    fn a_refused_key_keeps_its_code_and_names_the_variable() {
        let err = api_key_refused(&tonic::Status::unauthenticated("invalid credentials"));
        let status = err.status().unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains(API_KEY_VAR), "{}", status.message());
        assert!(status.message().ends_with("invalid credentials"), "{}", status.message());
    }
}
