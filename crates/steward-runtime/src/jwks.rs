//! The token keys of the auth service, fetched over gRPC by the other services: cached in
//! memory, refetched on an unknown `kid` (at most every 5 s), and kept in a file so a service
//! restarted while auth is down still verifies tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use tokio::sync::{Mutex, RwLock};
use tonic::transport::Channel;

use crate::error::{ApiError, ApiResult};

/// A cached JWKS fetched over gRPC from the auth service, optionally persisted to a file so
/// that a restarted service verifies tokens signed by keys it knew even while auth is down.
pub struct RemoteJwks {
    client: steward_proto::auth::v1::auth_service_client::AuthServiceClient<Channel>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    cache_file: Option<std::path::PathBuf>,
}

/// The persisted form of the cache: each Ed25519 key's `kid` and public `x` (base64url).
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedKeys {
    keys: Vec<CachedKey>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedKey {
    kid: String,
    x: String,
}

/// Unknown `kid`s trigger at most one JWKS fetch per this interval.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(5);

impl RemoteJwks {
    /// A lazily-filled cache over `channel` (the auth service).
    pub fn new(channel: Channel) -> Self {
        Self {
            client: steward_proto::auth::v1::auth_service_client::AuthServiceClient::new(channel),
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            cache_file: None,
        }
    }

    /// The same cache, starting from the keys saved in `file` (when it holds any) and saving
    /// every set it fetches there. A key the file names is trusted until a fetch replaces the
    /// set, as it is in memory; only public keys are written.
    pub fn with_cache_file(channel: Channel, file: std::path::PathBuf) -> Self {
        let mut jwks = Self::new(channel);
        match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<CachedKeys>(&bytes) {
                Ok(cached) => {
                    let keys = decode(cached.keys.iter().map(|k| (k.kid.as_str(), k.x.as_str())));
                    tracing::info!(keys = keys.len(), path = %file.display(), "token keys loaded from the cache file");
                    jwks.keys = RwLock::new(keys);
                }
                Err(err) => {
                    tracing::warn!(path = %file.display(), error = %err, "ignoring a damaged token key cache")
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %file.display(), error = %err, "cannot read the token key cache")
            }
        }
        jwks.cache_file = Some(file);
        jwks
    }

    /// Saves `keys` to the cache file, replacing it whole (write, then rename).
    async fn persist(&self, keys: &[CachedKey]) {
        let Some(file) = &self.cache_file else { return };
        let Ok(text) = serde_json::to_vec(&CachedKeys {
            keys: keys.iter().map(|k| CachedKey { kid: k.kid.clone(), x: k.x.clone() }).collect(),
        }) else {
            return;
        };
        let partial = file.with_extension("partial");
        let written = async {
            if let Some(dir) = file.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::write(&partial, text).await?;
            tokio::fs::rename(&partial, file).await
        };
        if let Err(err) = written.await {
            tracing::warn!(path = %file.display(), error = %err, "cannot save the token key cache");
        }
    }

    pub(crate) async fn key(&self, kid: &str) -> ApiResult<Option<DecodingKey>> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Some(key.clone()));
        }
        let mut last = self.last_fetch.lock().await;
        // Another caller may have refreshed while this one waited for the lock.
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Some(key.clone()));
        }
        if last.is_some_and(|t| t.elapsed() < JWKS_MIN_REFRESH) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        let response = self
            .client
            .clone()
            .get_jwks(steward_proto::auth::v1::GetJwksRequest {})
            .await
            .map_err(|status| {
                tracing::warn!(error = %status, "jwks fetch failed");
                ApiError::Unavailable("token keys unavailable, retry later".into())
            })?
            .into_inner();
        let fetched: Vec<CachedKey> = response
            .keys
            .into_iter()
            .filter(|jwk| jwk.kty == "OKP" && jwk.crv == "Ed25519")
            .map(|jwk| CachedKey { kid: jwk.kid, x: jwk.x })
            .collect();
        let fresh = decode(fetched.iter().map(|k| (k.kid.as_str(), k.x.as_str())));
        let found = fresh.get(kid).cloned();
        *self.keys.write().await = fresh;
        self.persist(&fetched).await;
        Ok(found)
    }
}

/// Ed25519 verification keys from `(kid, x)` pairs; a malformed one is skipped.
fn decode<'a>(keys: impl Iterator<Item = (&'a str, &'a str)>) -> HashMap<String, DecodingKey> {
    let mut decoded = HashMap::new();
    for (kid, x) in keys {
        match DecodingKey::from_ed_components(x) {
            Ok(key) => {
                decoded.insert(kid.to_string(), key);
            }
            Err(err) => tracing::warn!(%kid, error = %err, "skipping bad jwk"),
        }
    }
    decoded
}
