//! Sealing of the stored TOTP secrets. A TOTP secret must be readable by the service (to check
//! codes), so it cannot be hashed; it is encrypted with XChaCha20-Poly1305 under a configured key
//! (`auth.mfa_keys`), bound to its administrator by the associated data, so a database dump (or
//! a secret copied onto another row) yields nothing usable. Stored as
//! `v1:{key id}:{base64(nonce ‖ ciphertext)}`; the first key seals, every key opens, so keys
//! rotate by adding a new one first and dropping the old one once nothing uses it.
//!
//! The first key also keys the derivation of mail links ([`Sealer::mail_link`]), under its own
//! domain, so a message sent again carries the same link.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter};
use sha2::Sha256;
use steward_runtime::config::{AuthConfig, SecretKeyConfig};
use steward_runtime::{ApiError, ApiResult};

use crate::entity::credential;

const VERSION: &str = "v1";
/// How every sealed value starts (`{VERSION}:`).
const SEALED_PREFIX: &str = "v1:";
/// Associated data: this domain, then the administrator's name.
const DOMAIN: &[u8] = b"steward/auth/totp-secret/v1\0";
/// The domain of the key mail links are derived with.
const LINK_DOMAIN: &[u8] = b"steward/auth/mail-link/v1";

type HmacSha256 = Hmac<Sha256>;

fn associated_data(administrator: &str) -> Vec<u8> {
    [DOMAIN, administrator.as_bytes()].concat()
}
const NONCE_LEN: usize = 24;

/// The configured sealing keys.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<(String, XChaCha20Poly1305)>,
    /// HMAC-SHA256 key of mail links, derived from the first key.
    link_key: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish_non_exhaustive()
    }
}

impl Sealer {
    /// Loads `auth.mfa_keys`; at least one is required.
    pub fn load(config: &AuthConfig) -> ApiResult<Self> {
        let keys = config
            .mfa_keys
            .iter()
            .map(|key| {
                let text = std::fs::read_to_string(&key.path).map_err(|e| {
                    ApiError::internal(format!("cannot read mfa key {}: {e}", key.path.display()))
                })?;
                let bytes = STANDARD.decode(text.trim()).map_err(|e| {
                    ApiError::internal(format!("mfa key {} is not base64: {e}", key.id))
                })?;
                Ok((key.id.clone(), bytes))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        Self::from_keys(keys)
    }

    /// From raw keys, the sealing one first.
    pub fn from_keys(keys: Vec<(String, Vec<u8>)>) -> ApiResult<Self> {
        if keys.is_empty() {
            return Err(ApiError::internal("auth.mfa_keys is empty: configure at least one key"));
        }
        let link_key = keys
            .first()
            .map(|(_, first)| {
                let mut mac = <HmacSha256 as Mac>::new_from_slice(first)
                    .map_err(|_| ApiError::internal("mfa key cannot key an HMAC"))?;
                mac.update(LINK_DOMAIN);
                Ok::<_, ApiError>(mac.finalize().into_bytes().to_vec())
            })
            .transpose()?
            .unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for (id, _) in &keys {
            if !seen.insert(id.as_str()) {
                return Err(ApiError::internal(format!("mfa key id {id} is listed twice")));
            }
        }
        let keys = keys
            .into_iter()
            .map(|(id, bytes)| {
                if id.is_empty()
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ApiError::internal(format!("mfa key id {id:?} is not allowed")));
                }
                let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| {
                    ApiError::internal(format!(
                        "mfa key {id} must be 32 bytes, not {}",
                        bytes.len()
                    ))
                })?;
                Ok((id, cipher))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(Self { keys, link_key })
    }

    /// The link token of the mail message `mail_id` (an outbox message's key, unguessable and
    /// never mailed): the same for every delivery of that message, so a message sent twice (its
    /// sender died after the SMTP server took it, before it could record so) carries one working
    /// link, not a dead one and a live one. Unpredictable without the key; 128 bits, URL-safe,
    /// like a random link token.
    pub fn mail_link(&self, mail_id: &str) -> String {
        let mut mac = match <HmacSha256 as Mac>::new_from_slice(&self.link_key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; this cannot happen. A random token is still safe.
            Err(_) => return crate::secrets::new_link_token(),
        };
        mac.update(mail_id.as_bytes());
        let tag = mac.finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(tag.get(..16).unwrap_or_default())
    }

    /// Seals `secret` for `administrator` under the first key.
    pub fn seal(&self, administrator: &str, secret: &str) -> ApiResult<String> {
        let (id, cipher) =
            self.keys.first().ok_or_else(|| ApiError::internal("no mfa key configured"))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload { msg: secret.as_bytes(), aad: &associated_data(administrator) },
            )
            .map_err(|_| ApiError::internal("sealing the mfa secret failed"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(format!("{VERSION}:{id}:{}", URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Opens a value sealed for `administrator`. Fails (INTERNAL, logged) when the key is not
    /// configured or the value was altered or belongs to another administrator.
    pub fn open(&self, administrator: &str, stored: &str) -> ApiResult<String> {
        let mut parts = stored.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ApiError::internal("stored mfa secret is not sealed"));
        };
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(key_id, _)| key_id == id)
            .ok_or_else(|| ApiError::internal(format!("mfa key {id} is not configured")))?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| ApiError::internal("stored mfa secret is damaged"))?;
        if blob.len() <= NONCE_LEN {
            return Err(ApiError::internal("stored mfa secret is damaged"));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let plain = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload { msg: sealed, aad: &associated_data(administrator) },
            )
            .map_err(|_| ApiError::internal("stored mfa secret does not open"))?;
        String::from_utf8(plain).map_err(|_| ApiError::internal("stored mfa secret is damaged"))
    }
}

/// Seals TOTP secrets stored in clear by versions before sealing (a base32 secret has no `:`,
/// so a value without the `v1:` prefix is one of those). Run once at start-up; returns how many
/// rows it sealed. Idempotent.
pub async fn seal_legacy(db: &DatabaseConnection, sealer: &Sealer) -> ApiResult<u64> {
    let prefix = format!("{SEALED_PREFIX}%");
    let rows = credential::Entity::find()
        .filter(
            Condition::any()
                .add(credential::Column::MfaSecret.not_like(prefix.as_str()))
                .add(credential::Column::MfaPendingSecret.not_like(prefix.as_str())),
        )
        .all(db)
        .await?;
    let mut sealed = 0;
    for row in rows {
        let seal = |value: &Option<String>| -> ApiResult<Option<String>> {
            match value {
                Some(v) if !v.starts_with(SEALED_PREFIX) => {
                    sealer.seal(&row.administrator, v).map(Some)
                }
                other => Ok(other.clone()),
            }
        };
        let (secret, pending) = (seal(&row.mfa_secret)?, seal(&row.mfa_pending_secret)?);
        credential::Entity::update_many()
            .col_expr(credential::Column::MfaSecret, Expr::value(secret))
            .col_expr(credential::Column::MfaPendingSecret, Expr::value(pending))
            .filter(credential::Column::Administrator.eq(row.administrator.as_str()))
            // Unchanged since read: a concurrent enrolment keeps its own value.
            .filter(match &row.mfa_secret {
                Some(v) => credential::Column::MfaSecret.eq(v.as_str()),
                None => credential::Column::MfaSecret.is_null(),
            })
            .filter(match &row.mfa_pending_secret {
                Some(v) => credential::Column::MfaPendingSecret.eq(v.as_str()),
                None => credential::Column::MfaPendingSecret.is_null(),
            })
            .exec(db)
            .await?;
        sealed += 1;
    }
    if sealed > 0 {
        tracing::info!(sealed, "sealed mfa secrets stored in clear by an earlier version");
    }
    Ok(sealed)
}

/// A new random key, base64: the contents of a key file.
pub fn generate_key() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    STANDARD.encode(key)
}

/// Creates (on first use) an mfa key under `{data_dir}/keys/` for dev mode, readable only by its
/// owner, and returns its configuration.
pub fn ensure_dev_mfa_key(data_dir: &Path) -> ApiResult<SecretKeyConfig> {
    let dir = data_dir.join("keys");
    let path = dir.join("dev-mfa-key");
    if !path.exists() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        crate::keys::write_private(&path, &generate_key())?;
        tracing::info!(path = %path.display(), "generated dev mfa key");
    }
    Ok(SecretKeyConfig { id: "dev-1".into(), path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(ids: &[&str]) -> Sealer {
        Sealer::from_keys(
            ids.iter()
                .map(|id| (id.to_string(), STANDARD.decode(generate_key()).unwrap()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn seals_and_opens_without_the_secret_in_clear() {
        let s = sealer(&["k1"]);
        let stored = s.seal("organizations/o/administrators/a", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(stored.starts_with("v1:k1:"));
        assert!(!stored.contains("JBSWY3DPEHPK3PXP"));
        assert_ne!(stored, s.seal("organizations/o/administrators/a", "JBSWY3DPEHPK3PXP").unwrap());
        assert_eq!(
            s.open("organizations/o/administrators/a", &stored).unwrap(),
            "JBSWY3DPEHPK3PXP"
        );
    }

    #[test]
    fn a_mail_link_is_stable_per_message_and_key() {
        let s = sealer(&["k1"]);
        let link = s.mail_link("01J-mail-1");
        assert_eq!(link.len(), 22, "128 bits, URL-safe: {link}");
        assert!(link.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(link, s.mail_link("01J-mail-1"), "the same message, the same link");
        assert_ne!(link, s.mail_link("01J-mail-2"), "another message, another link");
        assert_ne!(link, sealer(&["k1"]).mail_link("01J-mail-1"), "another key, another link");
    }

    #[test]
    fn another_administrator_tampering_or_a_missing_key_does_not_open() {
        let s = sealer(&["k1"]);
        let stored = s.seal("organizations/o/administrators/a", "SECRET").unwrap();
        assert!(s.open("organizations/o/administrators/b", &stored).is_err(), "bound to its row");
        let mut tampered = stored.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(s.open("organizations/o/administrators/a", &tampered).is_err());
        assert!(s.open("organizations/o/administrators/a", "SECRET").is_err(), "clear text");
        assert!(sealer(&["k2"]).open("organizations/o/administrators/a", &stored).is_err());
    }

    #[test]
    fn rotation_opens_with_an_older_key_and_seals_with_the_first() {
        let old = sealer(&["k1"]);
        let stored = old.seal("a", "SECRET").unwrap();
        let mut keys = sealer(&["k2"]).keys;
        keys.extend(old.keys);
        let rotated = Sealer { keys, link_key: Vec::new() };
        assert_eq!(rotated.open("a", &stored).unwrap(), "SECRET");
        assert!(rotated.seal("a", "SECRET").unwrap().starts_with("v1:k2:"));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Sealer::from_keys(vec![]).is_err());
        assert!(Sealer::from_keys(vec![("k1".into(), vec![0; 16])]).is_err());
        assert!(Sealer::from_keys(vec![("k:1".into(), vec![0; 32])]).is_err());
        assert!(Sealer::from_keys(vec![("k1".into(), vec![0; 32]), ("k1".into(), vec![1; 32])])
            .is_err());
    }
}
