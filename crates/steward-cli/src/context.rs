//! The connection to the server and the signed-in session, with automatic refresh.

use std::future::Future;

use steward_proto::auth::v1::RefreshSessionRequest;
use steward_proto::client::Steward;
use tonic::Code;

use crate::cli::{Cli, Format, DEFAULT_SERVER};
use crate::error::{CliError, Result};
use crate::session::{Session, SessionStore};

/// Everything a command needs: output format, server, session store and a lazily opened
/// connection.
pub struct Context {
    /// How to print results.
    pub format: Format,
    /// The server URL in use.
    pub server: String,
    store: SessionStore,
    session: Option<Session>,
    anonymous: Option<Steward>,
    authed: Option<Steward>,
    ca_file: Option<std::path::PathBuf>,
    insecure_plaintext: bool,
}

/// `url` without a trailing slash, so equal servers compare equal.
fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

impl Context {
    /// Reads the session store and picks the server: `--server`/`STEWARD_SERVER`, else the
    /// session's, else the default.
    pub fn new(cli: &Cli) -> Result<Self> {
        let store = SessionStore::from_env()?;
        let session = store.load()?;
        let server = match (&cli.server, &session) {
            (Some(server), _) => normalize(server),
            (None, Some(session)) => normalize(&session.server),
            (None, None) => DEFAULT_SERVER.to_string(),
        };
        Ok(Self {
            format: cli.output,
            server,
            store,
            session,
            anonymous: None,
            authed: None,
            ca_file: cli.ca_file.clone(),
            insecure_plaintext: cli.insecure_plaintext,
        })
    }

    /// The session store.
    pub fn store(&self) -> &SessionStore {
        &self.store
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

    /// Stores a new session (after sign-in) and uses it from now on.
    pub fn set_session(&mut self, session: Session) -> Result<()> {
        self.store.save(&session)?;
        self.authed = None;
        self.session = Some(session);
        Ok(())
    }

    /// Forgets the session locally; true if there was one.
    pub fn clear_session(&mut self) -> Result<bool> {
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
    /// (or when it is refused) the original rejection stands.
    async fn refresh(&mut self, rejected: tonic::Status) -> Result<()> {
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
