//! Property-based fuzzing of access-token verification (`steward_runtime::authn::TokenVerifier`
//! over tokens from `steward_auth::jwt::Signer`), plus the committed corpus
//! (`tests/corpus/tokens`). Every altered, forged or malformed token is the same vague
//! `UNAUTHENTICATED`, never a panic: bit flips, truncations, `alg: none`, HS256 keyed with the
//! public key, the wrong key, a swapped `kid`, a wrong `typ`, extreme times. Tokens the signer
//! issues verify to the claims it put in, whatever the strings in them.
//!
//! Cases per property: 256 by default, `PROPTEST_CASES=100000` for a longer run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use steward_auth::jwt::{Signer, Subject};
use steward_auth::keys::{self, KeyPair};
use steward_runtime::authn::{KeySource, TokenVerifier};
use steward_runtime::claims::{AccessClaims, Role, TokenScope, ACCESS_TOKEN_TYPE};
use steward_runtime::config::AuthConfig;
use steward_runtime::ApiError;

#[path = "../../../tests/corpus/support.rs"]
mod support;

use support::{config, corpus};

/// The instant every token here is issued and judged at.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// Leeway of the verifier, seconds.
const LEEWAY: i64 = 5;

/// Keys `k1` (signs) and `k2` (also trusted), an attacker's key nobody trusts, the signer and
/// the verifier trusting `k1` and `k2`; built once.
struct Fixture {
    k1: KeyPair,
    attacker: KeyPair,
    signer: Signer,
    verifier: TokenVerifier,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let k1 = keys::from_pem("k1", &keys::generate_pem().unwrap()).unwrap();
        let k2 = keys::from_pem("k2", &keys::generate_pem().unwrap()).unwrap();
        let attacker = keys::from_pem("k1", &keys::generate_pem().unwrap()).unwrap();
        let config = AuthConfig::default();
        let signer = Signer::new(vec![k1.clone(), k2.clone()], &config).unwrap();
        let trusted = HashMap::from([
            (k1.kid.clone(), k1.decoding.clone()),
            (k2.kid.clone(), k2.decoding.clone()),
        ]);
        let verifier = TokenVerifier::new(
            config.issuer.clone(),
            config.audience.clone(),
            Duration::from_secs(LEEWAY as u64),
            KeySource::Static(trusted),
            Arc::new(now),
        );
        Fixture { k1, attacker, signer, verifier }
    })
}

fn verify(token: &str) -> Result<AccessClaims, ApiError> {
    // Static keys: verification never waits on anything.
    futures::executor::block_on(fixture().verifier.verify(token))
}

fn assert_unauthenticated(token: &str) {
    match verify(token) {
        Err(ApiError::Unauthenticated(message)) => {
            assert_eq!(message, "invalid or expired access token", "the refusal stays vague")
        }
        other => panic!("token {token:?} was not refused as UNAUTHENTICATED: {other:?}"),
    }
}

fn subject(sub: String, org: String, role: Role, billing: bool) -> Subject {
    Subject {
        administrator: sub,
        organization: org,
        role,
        role_name: String::new(),
        permissions: Vec::new(),
        client_id: String::new(),
        not_after: None,
        billing,
    }
}

fn sign(subject: &Subject) -> String {
    let (token, _) = fixture()
        .signer
        .sign(subject, "session", &["pwd".into()], TokenScope::Full, now(), now())
        .unwrap();
    token
}

/// The claims a signer would put in, with `exp`/`nbf` chosen by the test.
fn claims(exp: i64, nbf: i64) -> AccessClaims {
    let config = AuthConfig::default();
    AccessClaims {
        iss: config.issuer,
        aud: config.audience,
        sub: "organizations/o/administrators/a".into(),
        org: "organizations/o".into(),
        role: Role::Administrator,
        role_name: String::new(),
        permissions: Vec::new(),
        billing: true,
        amr: vec!["pwd".into()],
        sid: "s".into(),
        jti: "j".into(),
        iat: now().timestamp(),
        nbf,
        exp,
        scope: TokenScope::Full,
        client_id: String::new(),
        auth_time: now().timestamp(),
    }
}

fn header(alg: Algorithm, kid: &str, typ: &str) -> Header {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    header.typ = Some(typ.to_string());
    header
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A valid token altered one way.
#[derive(Clone, Debug)]
enum Forgery {
    /// One bit of the token string flipped.
    BitFlip(prop::sample::Index, u8),
    /// Cut short.
    Truncate(prop::sample::Index),
    /// One of the three parts dropped.
    DropPart(prop::sample::Index),
    /// The same claims with `alg: none` and no signature.
    AlgNone,
    /// The same claims signed with HS256, keyed with `k1`'s public key (algorithm confusion).
    Hs256WithPublicKey,
    /// Signed by a key nobody trusts, claiming to be `k1`.
    WrongKey,
    /// Signed by `k1`, claiming to be `k2` (also trusted).
    SwappedKid,
    /// Signed by `k1` with another `typ`.
    WrongType(String),
    /// Signed by `k1` with another `kid`.
    UnknownKid(String),
    /// The payload of another token with this token's signature.
    SpliceClaims,
}

fn forgery() -> impl Strategy<Value = Forgery> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Forgery::BitFlip(i, b)),
        any::<prop::sample::Index>().prop_map(Forgery::Truncate),
        any::<prop::sample::Index>().prop_map(Forgery::DropPart),
        Just(Forgery::AlgNone),
        Just(Forgery::Hs256WithPublicKey),
        Just(Forgery::WrongKey),
        Just(Forgery::SwappedKid),
        any::<String>()
            .prop_filter("another type", |t| t != ACCESS_TOKEN_TYPE)
            .prop_map(Forgery::WrongType),
        any::<String>()
            .prop_filter("unknown", |k| k != "k1" && k != "k2")
            .prop_map(Forgery::UnknownKid),
        Just(Forgery::SpliceClaims),
    ]
}

fn forge(token: &str, forgery: &Forgery) -> String {
    let fixture = fixture();
    let claims = claims(now().timestamp() + 600, now().timestamp());
    let signed =
        |header: &Header, key: &EncodingKey| jsonwebtoken::encode(header, &claims, key).unwrap();
    match forgery {
        Forgery::BitFlip(at, bit) => {
            let mut bytes = token.as_bytes().to_vec();
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << (bit % 8);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Forgery::Truncate(at) => token[..at.index(token.len())].to_string(),
        Forgery::DropPart(which) => {
            let mut parts: Vec<&str> = token.split('.').collect();
            parts.remove(which.index(parts.len()));
            parts.join(".")
        }
        Forgery::AlgNone => {
            let header = serde_json::json!({"alg": "none", "typ": ACCESS_TOKEN_TYPE, "kid": "k1"});
            let payload = serde_json::to_vec(&claims).unwrap();
            format!("{}.{}.", b64(header.to_string().as_bytes()), b64(&payload))
        }
        Forgery::Hs256WithPublicKey => signed(
            &header(Algorithm::HS256, "k1", ACCESS_TOKEN_TYPE),
            &EncodingKey::from_secret(fixture.k1.x.as_bytes()).unwrap(),
        ),
        Forgery::WrongKey => signed(
            &header(Algorithm::EdDSA, "k1", ACCESS_TOKEN_TYPE),
            &fixture.attacker.encoding_key().unwrap(),
        ),
        Forgery::SwappedKid => signed(
            &header(Algorithm::EdDSA, "k2", ACCESS_TOKEN_TYPE),
            &fixture.k1.encoding_key().unwrap(),
        ),
        Forgery::WrongType(typ) => {
            signed(&header(Algorithm::EdDSA, "k1", typ), &fixture.k1.encoding_key().unwrap())
        }
        Forgery::UnknownKid(kid) => signed(
            &header(Algorithm::EdDSA, kid, ACCESS_TOKEN_TYPE),
            &fixture.k1.encoding_key().unwrap(),
        ),
        Forgery::SpliceClaims => {
            let other = signed(
                &header(Algorithm::EdDSA, "k1", ACCESS_TOKEN_TYPE),
                &fixture.k1.encoding_key().unwrap(),
            );
            let ours: Vec<&str> = token.split('.').collect();
            let theirs: Vec<&str> = other.split('.').collect();
            format!("{}.{}.{}", ours[0], theirs[1], ours[2])
        }
    }
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

proptest! {
    #![proptest_config(config())]

    /// A token the signer issues verifies to its claims, whatever strings the subject holds.
    #[test]
    fn issued_tokens_round_trip(sub in any::<String>(), org in any::<String>(), role in role(), billing in any::<bool>()) {
        let subject = subject(sub, org, role, billing);
        let claims = verify(&sign(&subject)).unwrap();
        prop_assert_eq!(&claims.sub, &subject.administrator);
        prop_assert_eq!(&claims.org, &subject.organization);
        prop_assert_eq!((claims.role, claims.billing), (role, billing));
    }

    /// Every forgery of a valid token is refused, vaguely.
    #[test]
    fn forged_tokens_are_refused(role in role(), forgery in forgery()) {
        let token = sign(&subject("organizations/o/administrators/a".into(), "organizations/o".into(), role, true));
        prop_assert!(verify(&token).is_ok());
        let forged = forge(&token, &forgery);
        prop_assert_ne!(&forged, &token);
        assert_unauthenticated(&forged);
    }

    /// Any string is refused, vaguely.
    #[test]
    fn arbitrary_strings_are_refused(token in any::<String>()) {
        assert_unauthenticated(&token);
    }

    /// Strings shaped like tokens (three base64url parts of arbitrary bytes) are refused.
    #[test]
    fn arbitrary_token_shapes_are_refused(parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5)) {
        let token = parts.iter().map(|p| b64(p)).collect::<Vec<_>>().join(".");
        assert_unauthenticated(&token);
    }

    /// Correctly signed tokens with extreme `exp`/`nbf`: judged by the clock with the leeway,
    /// no overflow, no panic.
    #[test]
    fn extreme_times_are_judged(exp in any::<i64>(), nbf in any::<i64>()) {
        let fixture = fixture();
        let token = jsonwebtoken::encode(
            &header(Algorithm::EdDSA, "k1", ACCESS_TOKEN_TYPE),
            &claims(exp, nbf),
            &fixture.k1.encoding_key().unwrap(),
        ).unwrap();
        let t = now().timestamp();
        // The library parses `exp` and `nbf` as unsigned: a negative one is missing.
        let valid = exp >= 0
            && nbf >= 0
            && exp.saturating_add(LEEWAY) > t
            && nbf.saturating_sub(LEEWAY) <= t;
        match verify(&token) {
            Ok(verified) => prop_assert!(valid, "accepted exp={} nbf={}", verified.exp, verified.nbf),
            Err(ApiError::Unauthenticated(_)) => prop_assert!(!valid),
            Err(other) => prop_assert!(false, "not UNAUTHENTICATED: {other:?}"),
        }
    }
}

/// Every committed hostile token is refused, vaguely, also repeated past 1 MiB.
#[test]
fn corpus_tokens_are_refused() {
    for (file, bytes) in corpus("tokens") {
        let token = String::from_utf8_lossy(&bytes).into_owned();
        assert_unauthenticated(&token);
        let times = (1 << 20) / token.len().max(1) + 1;
        assert_unauthenticated(&token.repeat(times));
        let _ = file;
    }
}
