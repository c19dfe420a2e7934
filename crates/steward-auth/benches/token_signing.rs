//! Access-token signing: Steward's [`Signer`] (the Ed25519 key parsed once, at startup) against
//! `jsonwebtoken::encode` with the same key, header and claims (which parses the PKCS#8 key, and
//! so derives its public half, on every call). Criterion measures both in one run; the ratio of
//! their medians (signer / jsonwebtoken) is printed and written to
//! `target/bench/token_signing.json`.
//!
//! `cargo bench -p steward-auth --bench token_signing`. Nothing is judged: the figure is quoted
//! in docs/benchmarks.md. Under `cargo test --benches` criterion runs each case once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, SystemTime};

use chrono::Utc;
use criterion::Criterion;
use jsonwebtoken::{Algorithm, Header};
use steward_auth::jwt::{Signer, Subject};
use steward_auth::keys;
use steward_runtime::claims::{AccessClaims, Role, TokenScope, ACCESS_TOKEN_TYPE};
use steward_runtime::config::AuthConfig;

const GROUP: &str = "access_token";

fn main() {
    let judged = std::env::args().any(|a| a == "--bench");
    let started = SystemTime::now();
    let pair = keys::from_pem("k1", &keys::generate_pem().unwrap()).unwrap();
    let signer = Signer::new(vec![pair.clone()], &AuthConfig::default()).unwrap();
    let subject = Subject {
        administrator: "organizations/acme/administrators/0d9c6f7e".into(),
        organization: "organizations/acme".into(),
        role: Role::Administrator,
        role_name: String::new(),
        permissions: Vec::new(),
        client_id: String::new(),
        not_after: None,
        billing: true,
    };
    let amr = vec!["pwd".to_string()];
    let now = Utc::now();
    // What the signer writes, signed by the library instead.
    let (token, _) = signer.sign(&subject, "s1", &amr, TokenScope::Full, now, now).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: AccessClaims = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(pair.kid.clone());
    header.typ = Some(ACCESS_TOKEN_TYPE.to_string());
    let encoding = pair.encoding_key().unwrap();

    let mut criterion = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = criterion.benchmark_group(GROUP);
    group.bench_function("signer", |b| {
        b.iter(|| signer.sign(&subject, "s1", &amr, TokenScope::Full, now, now).unwrap());
    });
    group.bench_function("jsonwebtoken_encode", |b| {
        b.iter(|| jsonwebtoken::encode(&header, &claims, &encoding).unwrap());
    });
    group.finish();
    criterion.final_summary();

    if !judged {
        return;
    }
    let Some((ours, library)) = common::medians(GROUP, "signer", "jsonwebtoken_encode", started)
    else {
        return;
    };
    let ratio = ours / library;
    println!(
        "median access-token signing: signer {:.1} µs, jsonwebtoken::encode {:.1} µs, ratio {ratio:.3}",
        ours / 1e3,
        library / 1e3
    );
    let report = serde_json::json!({
        "tool": "criterion",
        "signer_median_ns": ours,
        "jsonwebtoken_encode_median_ns": library,
        "ratio_of_medians": ratio,
    });
    common::write_report("token_signing", &report);
}
