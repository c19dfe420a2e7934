//! Sign-in timing for an unknown email versus a known email with a wrong password: both must
//! cost the same (no account enumeration by timing). Criterion measures the real SignIn handler
//! on SQLite for both cases in one run (each timed call preceded by an untimed call of the other
//! case, so both see the same rhythm); the ratio of the two medians (unknown / known, from
//! criterion's own estimates) is printed and written to `target/bench/sign_in_timing.json`.
//!
//! `cargo bench -p steward-auth --bench sign_in_timing` fails when the medians differ by more
//! than 10%. Under `cargo test --benches` criterion's test mode runs each case once, unjudged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode};
use steward_auth::api::auth::AuthApi;
use steward_auth::api::internal::InternalApi;
use steward_auth::state::State;
use steward_proto::auth::v1::auth_internal_service_server::AuthInternalService;
use steward_proto::auth::v1::auth_service_server::AuthService;
use steward_proto::auth::v1::{AcceptInviteRequest, IssueInviteRequest, SignInRequest};
use steward_runtime::authn::Caller;
use support::{harness, request, wait_for_mail};

const GROUP: &str = "sign_in_wrong_password";
const PASSWORD: &str = "bench horse battery staple 77";
const KNOWN: &str = "known@example.com";

async fn sign_in(service: &AuthApi, email: &str) {
    let status = service
        .sign_in(request(
            SignInRequest {
                email: email.into(),
                password: "wrong password for timing".into(),
                organization: String::new(),
            },
            Caller::Anonymous,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

/// An auth service with one activated administrator (`KNOWN`), whose clock jumps two hours at
/// every reading so throttling (which would lock the account after five failures) never
/// engages and both cases do the same work.
async fn service() -> (AuthApi, support::Harness) {
    let h = harness().await;
    let offset = Arc::new(AtomicI64::new(0));
    let jumping = Arc::new(move || {
        chrono::Utc::now() + chrono::Duration::hours(offset.fetch_add(2, Ordering::SeqCst))
    });
    InternalApi::new(h.state.clone())
        .issue_invite(request(
            IssueInviteRequest {
                administrator: "organizations/acme/administrators/known".into(),
                email: KNOWN.into(),
                organization_display_name: "Acme".into(),
                inviter_email: String::new(),
                idempotency_key: "bench".into(),
            },
            Caller::Service,
        ))
        .await
        .unwrap();
    AuthApi::new(h.state.clone())
        .accept_invite(request(
            AcceptInviteRequest {
                token: wait_for_mail(&h, KNOWN).await,
                password: PASSWORD.into(),
            },
            Caller::Anonymous,
        ))
        .await
        .unwrap();
    let state = Arc::new(State {
        db: h.state.db.clone(),
        clock: jumping.clone(),
        config: h.state.config.clone(),
        signer: h.state.signer.clone(),
        hasher: h.state.hasher.clone(),
        mailer: h.state.mailer.clone(),
        sealer: h.state.sealer.clone(),
        admin: h.state.admin.clone(),
        looked_up: steward_runtime::lease::Leases::new(std::time::Duration::ZERO),
        refreshes: steward_auth::rotation::Refreshes::new(&h.state.db, jumping.clone()),
    });
    (AuthApi::new(state), h)
}

fn main() {
    let judged = std::env::args().any(|a| a == "--bench");
    let started = SystemTime::now();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (service, _harness) = runtime.block_on(service());

    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15))
        .configure_from_args();
    let mut group = criterion.benchmark_group(GROUP);
    // Every sign-in costs one password hash: flat sampling, one call per iteration.
    group.sampling_mode(SamplingMode::Flat);
    // Each timed call is preceded by an untimed call of the other case, so both benchmarks do
    // the same work in the same rhythm, and unknown emails come from a small pool so both update
    // an existing throttle row rather than one inserting a new row per call.
    let nobody = AtomicUsize::new(0);
    let unknown = || format!("nobody-{}@example.com", nobody.fetch_add(1, Ordering::Relaxed) % 16);
    group.bench_function("unknown_email", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let (service, unknown) = (&service, &unknown);
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    sign_in(service, KNOWN).await;
                    let email = unknown();
                    let start = Instant::now();
                    sign_in(service, &email).await;
                    timed += start.elapsed();
                }
                timed
            }
        })
    });
    group.bench_function("known_email", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let (service, unknown) = (&service, &unknown);
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    sign_in(service, &unknown()).await;
                    let start = Instant::now();
                    sign_in(service, KNOWN).await;
                    timed += start.elapsed();
                }
                timed
            }
        })
    });
    group.finish();
    criterion.final_summary();

    if !judged {
        return;
    }
    let Some((unknown, known)) = common::medians(GROUP, "unknown_email", "known_email", started)
    else {
        return;
    };
    let ratio = unknown / known;
    println!(
        "median sign-in with a wrong password: unknown email {:.1} ms, known email {:.1} ms",
        unknown / 1e6,
        known / 1e6
    );
    println!("ratio of medians (unknown / known): {ratio:.3}");
    let report = serde_json::json!({
        "tool": "criterion",
        "unknown_email_median_ns": unknown,
        "known_email_wrong_password_median_ns": known,
        "ratio_of_medians": ratio,
    });
    common::write_report("sign_in_timing", &report);
    assert!((0.9..=1.1).contains(&ratio), "timings differ by more than 10%: ratio {ratio:.3}");
}
