//! Access-token signing (RFC 9068 profile, EdDSA) and the JWKS.
//!
//! Access tokens are self-contained: every service verifies them locally, so one cannot be
//! revoked before its `exp` (`auth.access_token_ttl_secs`, 10 minutes by default). Sign-out,
//! refresh-token reuse, password changes and administrator deletion revoke the *session*: its
//! refresh token stops working at once and no new access token is issued for it.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header};
use steward_proto::auth::v1::Jwk;
use steward_runtime::claims::{AccessClaims, Role, TokenScope, ACCESS_TOKEN_TYPE};
use steward_runtime::config::AuthConfig;
use steward_runtime::{ApiError, ApiResult};

use crate::keys::KeyPair;

/// What an access token says about its holder.
#[derive(Clone, Debug)]
pub struct Subject {
    /// `organizations/{o}/administrators/{a}`.
    pub administrator: String,
    /// `organizations/{o}`.
    pub organization: String,
    /// Current role.
    pub role: Role,
    /// With [`Role::Custom`]: the role's name.
    pub role_name: String,
    /// With [`Role::Custom`]: the role's permission names.
    pub permissions: Vec<String>,
    /// A service account's API key; empty for people.
    pub client_id: String,
    /// No token may outlive this (a service account's key expiry).
    pub not_after: Option<DateTime<Utc>>,
    /// Current billing access.
    pub billing: bool,
}

/// Signs access tokens with the first configured key.
#[derive(Clone, Debug)]
pub struct Signer {
    keys: Vec<KeyPair>,
    /// The signing key's JOSE header, encoded once: it is the same in every token.
    header: String,
    issuer: String,
    audience: String,
    ttl_secs: i64,
}

impl Signer {
    /// A signer over `keys` (the first signs) with the issuer, audience and lifetime of `config`.
    pub fn new(keys: Vec<KeyPair>, config: &AuthConfig) -> ApiResult<Self> {
        let first = keys.first().ok_or_else(|| ApiError::internal("no signing key configured"))?;
        let header = encoded_header(&first.kid)?;
        Ok(Self {
            keys,
            header,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl_secs: i64::try_from(config.access_token_ttl_secs).unwrap_or(600).max(1),
        })
    }

    /// A signed access token for `subject` in session `sid`, and its expiry.
    pub fn sign(
        &self,
        subject: &Subject,
        sid: &str,
        amr: &[String],
        scope: TokenScope,
        now: DateTime<Utc>,
        auth_time: DateTime<Utc>,
    ) -> ApiResult<(String, DateTime<Utc>)> {
        let key =
            self.keys.first().ok_or_else(|| ApiError::internal("no signing key configured"))?;
        let iat = now.timestamp();
        let exp = (iat + self.ttl_secs).min(subject.not_after.map_or(i64::MAX, |t| t.timestamp()));
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.administrator.clone(),
            org: subject.organization.clone(),
            role: subject.role,
            role_name: subject.role_name.clone(),
            permissions: subject.permissions.clone(),
            billing: subject.billing,
            amr: amr.to_vec(),
            sid: sid.to_string(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat,
            nbf: iat,
            exp,
            scope,
            auth_time: auth_time.timestamp(),
            client_id: subject.client_id.clone(),
        };
        let token = compact_jws(&self.header, &claims, &key.signing)?;
        let expires = DateTime::<Utc>::from_timestamp(exp, 0).unwrap_or(now);
        Ok((token, expires))
    }

    /// Every configured public key, as JWKs.
    pub fn jwks(&self) -> Vec<Jwk> {
        self.keys
            .iter()
            .map(|key| Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                alg: "EdDSA".into(),
                kid: key.kid.clone(),
                r#use: "sig".into(),
                x: key.x.clone(),
                y: String::new(),
            })
            .collect()
    }
}

/// The base64url JOSE header of access tokens signed with key `kid`.
fn encoded_header(kid: &str) -> ApiResult<String> {
    use base64::Engine;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    header.typ = Some(ACCESS_TOKEN_TYPE.to_string());
    let json = serde_json::to_vec(&header)
        .map_err(|e| ApiError::internal(format!("token header encoding failed: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

/// The JWS compact serialization (RFC 7515 §7.1) of `claims` under `header` (already encoded),
/// signed with `key`: what `jsonwebtoken::encode` writes, with the key parsed once at startup
/// instead of on every call (parsing a PKCS#8 Ed25519 key derives its public half: a scalar
/// multiplication, as costly as the signature itself).
fn compact_jws(
    header: &str,
    claims: &impl serde::Serialize,
    key: &ed25519_dalek::SigningKey,
) -> ApiResult<String> {
    use base64::Engine;
    use ed25519_dalek::Signer as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let failed =
        |e: &dyn std::fmt::Display| ApiError::internal(format!("token signing failed: {e}"));
    // Access claims are about 400 bytes: written without growing the buffer.
    let mut json = Vec::with_capacity(512);
    serde_json::to_writer(&mut json, claims).map_err(|e| failed(&e))?;
    // The header, the claims and the 64-byte signature (86 characters), with two dots.
    let mut token = String::with_capacity(header.len() + json.len().div_ceil(3) * 4 + 88);
    token.push_str(header);
    token.push('.');
    b64.encode_string(&json, &mut token);
    let signature = key.try_sign(token.as_bytes()).map_err(|e| failed(&e))?;
    token.push('.');
    b64.encode_string(signature.to_bytes(), &mut token);
    Ok(token)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the tests start from the wall clock; nothing waits on it
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use steward_runtime::authn::{KeySource, TokenVerifier};

    use super::*;
    use crate::keys;

    fn subject(role: Role, billing: bool) -> Subject {
        Subject {
            administrator: "organizations/o/administrators/a".into(),
            organization: "organizations/o".into(),
            role,
            role_name: String::new(),
            permissions: Vec::new(),
            client_id: String::new(),
            not_after: None,
            billing,
        }
    }

    fn verifier(
        config: &AuthConfig,
        pair: &keys::KeyPair,
        clock: steward_runtime::service::Clock,
    ) -> TokenVerifier {
        TokenVerifier::new(
            config.issuer.clone(),
            config.audience.clone(),
            Duration::from_secs(5),
            KeySource::Static(HashMap::from([(pair.kid.clone(), pair.decoding.clone())])),
            clock,
        )
    }

    #[test]
    fn tokens_are_byte_for_byte_what_jsonwebtoken_writes() {
        let pair = keys::from_pem("k1", &keys::generate_pem().unwrap()).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        let claims = serde_json::json!({"sub": "organizations/o/administrators/a", "exp": 1, "amr": ["pwd"], "n": "é/+?"});
        // Ed25519 signatures are deterministic, so the whole token must match.
        let ours = compact_jws(&encoded_header("k1").unwrap(), &claims, &pair.signing).unwrap();
        let library =
            jsonwebtoken::encode(&header, &claims, &pair.encoding_key().unwrap()).unwrap();
        assert_eq!(ours, library);
    }

    #[tokio::test]
    async fn signed_tokens_pass_the_shared_verifier() {
        let pair = keys::from_pem("k1", &keys::generate_pem().unwrap()).unwrap();
        let config = AuthConfig::default();
        let signer = Signer::new(vec![pair.clone()], &config).unwrap();
        let subject = subject(Role::CommandRunner, true);
        let (token, _) = signer
            .sign(&subject, "s1", &["pwd".into()], TokenScope::Full, Utc::now(), Utc::now())
            .unwrap();
        let verifier = verifier(&config, &pair, steward_runtime::service::system_clock());
        let claims = verifier.verify(&token).await.unwrap();
        assert_eq!(claims.sub, subject.administrator);
        assert_eq!(claims.exp - claims.iat, 600);
        assert_eq!(claims.nbf, claims.iat);
        let jwks = signer.jwks();
        assert_eq!(
            (jwks[0].kty.as_str(), jwks[0].crv.as_str(), jwks[0].kid.as_str()),
            ("OKP", "Ed25519", "k1")
        );
    }

    // The verifier remembers tokens whose signature checked out; a remembered token is still
    // judged on time every call, and only the exact string is remembered.
    #[tokio::test]
    async fn remembered_tokens_still_expire_and_tampering_is_never_remembered() {
        use std::sync::atomic::{AtomicI64, Ordering};
        use std::sync::Arc;
        let pair = keys::from_pem("k1", &keys::generate_pem().unwrap()).unwrap();
        let config = AuthConfig::default();
        let signer = Signer::new(vec![pair.clone()], &config).unwrap();
        let subject = subject(Role::ReadOnly, false);
        let start = Utc::now();
        let (token, _) =
            signer.sign(&subject, "s1", &["pwd".into()], TokenScope::Full, start, start).unwrap();
        let offset = Arc::new(AtomicI64::new(0));
        let clock = {
            let offset = offset.clone();
            Arc::new(move || start + chrono::Duration::seconds(offset.load(Ordering::SeqCst)))
        };
        let verifier = verifier(&config, &pair, clock);
        // Verified, then answered from memory: the same claims.
        let first = verifier.verify(&token).await.unwrap();
        assert_eq!(verifier.verify(&token).await.unwrap(), first);
        // A changed payload with the remembered signature is not the remembered token.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let forged_payload = parts[1].replacen('e', "f", 1);
        parts[1] = forged_payload;
        assert!(verifier.verify(&parts.join(".")).await.is_err());
        // Past its expiry (and the leeway), the remembered token is refused.
        offset.store(first.exp - first.iat + 6, Ordering::SeqCst);
        assert!(verifier.verify(&token).await.is_err());
    }
}
