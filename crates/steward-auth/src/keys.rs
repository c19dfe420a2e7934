//! Signing keys: Ed25519 (EdDSA) private keys in PKCS#8 PEM files named by configuration. The
//! first key signs; every configured key verifies and is published in the JWKS, so a new key can
//! be added (verifying only, listed second), then promoted, then the old one removed.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::DecodingKey;
use rand::RngCore;
use steward_runtime::config::{AuthConfig, SigningKeyConfig};
use steward_runtime::{ApiError, ApiResult};

/// A loaded key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// Key id.
    pub kid: String,
    /// For signing: parsed once, with its public half (parsing derives it, which costs as
    /// much as a signature).
    pub signing: SigningKey,
    /// For verifying.
    pub decoding: DecodingKey,
    /// Base64url of the raw public key (the JWK `x`).
    pub x: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// The private key as jsonwebtoken's signing key (parsed again on every `encode`), for
    /// signing independently of [`crate::jwt::Signer`], as the token tests do. Not used by the
    /// service itself.
    pub fn encoding_key(&self) -> ApiResult<jsonwebtoken::EncodingKey> {
        let der = self
            .signing
            .to_pkcs8_der()
            .map_err(|e| ApiError::internal(format!("signing key {}: {e}", self.kid)))?;
        Ok(jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()))
    }
}

/// Loads one PEM file.
pub fn load(config: &SigningKeyConfig) -> ApiResult<KeyPair> {
    let pem = std::fs::read_to_string(&config.path).map_err(|e| {
        ApiError::internal(format!("cannot read signing key {}: {e}", config.path.display()))
    })?;
    from_pem(&config.kid, &pem)
}

/// Parses a PKCS#8 PEM Ed25519 private key.
pub fn from_pem(kid: &str, pem: &str) -> ApiResult<KeyPair> {
    let signing = SigningKey::from_pkcs8_pem(pem).map_err(|e| {
        ApiError::internal(format!("signing key {kid} is not an Ed25519 PKCS#8 PEM: {e}"))
    })?;
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
    let decoding = DecodingKey::from_ed_components(&x)
        .map_err(|e| ApiError::internal(format!("signing key {kid}: {e}")))?;
    Ok(KeyPair { kid: kid.to_string(), signing, decoding, x })
}

/// Loads every configured key; the first is the signing key.
pub fn load_all(config: &AuthConfig) -> ApiResult<Vec<KeyPair>> {
    if config.signing_keys.is_empty() {
        return Err(ApiError::internal("auth.signing_keys is empty: configure at least one key"));
    }
    config.signing_keys.iter().map(load).collect()
}

/// Public keys by `kid`, for verifying tokens in this process without a JWKS round trip.
pub fn verifying_keys(config: &AuthConfig) -> ApiResult<HashMap<String, DecodingKey>> {
    Ok(load_all(config)?.into_iter().map(|k| (k.kid, k.decoding)).collect())
}

/// A new random Ed25519 key as PKCS#8 PEM.
pub fn generate_pem() -> ApiResult<String> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| ApiError::internal(format!("cannot encode key: {e}")))?;
    Ok(pem.to_string())
}

/// Creates (on first use) a signing key under `{data_dir}/keys/` for dev mode, readable only by
/// its owner, and returns its configuration.
pub fn ensure_dev_signing_key(data_dir: &Path) -> ApiResult<SigningKeyConfig> {
    let dir = data_dir.join("keys");
    let path = dir.join("dev-signing-key.pem");
    if !path.exists() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        write_private(&path, &generate_pem()?)?;
        tracing::info!(path = %path.display(), "generated dev signing key");
    }
    Ok(SigningKeyConfig { kid: "dev-1".into(), path })
}

pub(crate) fn write_private(path: &Path, contents: &str) -> ApiResult<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip() {
        let pem = generate_pem().unwrap();
        let pair = from_pem("k1", &pem).unwrap();
        assert_eq!(pair.kid, "k1");
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&pair.x).unwrap().len(),
            32
        );
    }
}
