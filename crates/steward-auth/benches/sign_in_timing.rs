//! Sign-in timing for an unknown email versus a known email with a wrong password: both must
//! cost the same (no account enumeration by timing). Runs the real SignIn handler on SQLite,
//! alternating the two cases, and reports medians, means and their ratio; writes the numbers to
//! `target/bench/sign_in_timing.json`.
//!
//! `cargo bench -p steward-auth --bench sign_in_timing` (add `--profile dev` to skip the release
//! build; argon2 is optimized in both). Under `cargo test --all-targets` it runs a short smoke
//! pass without judging the ratio. With `--bench` it fails when the medians differ by more
//! than 10%.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_auth::internal::Internal;
use steward_auth::service::Service;
use steward_auth::state::State;
use steward_proto::auth::v1::auth_internal_service_server::AuthInternalService;
use steward_proto::auth::v1::auth_service_server::AuthService;
use steward_proto::auth::v1::{AcceptInviteRequest, IssueInviteRequest, SignInRequest};
use steward_runtime::authn::Caller;
use support::{harness, request, wait_for_mail};

const PASSWORD: &str = "bench horse battery staple 77";

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn mean(values: &[Duration]) -> Duration {
    values.iter().sum::<Duration>() / values.len() as u32
}

async fn time(service: &Service, email: &str) -> Duration {
    let start = Instant::now();
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
    let elapsed = start.elapsed();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    elapsed
}

fn main() {
    let judged = std::env::args().any(|a| a == "--bench");
    let iterations = if judged { 60 } else { 3 };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let h = harness().await;
        // A clock that jumps two hours at every reading, so throttling (which would otherwise
        // lock the account after five failures) never engages and both cases do the same work.
        let offset = Arc::new(AtomicI64::new(0));
        let jumping = {
            let offset = offset.clone();
            Arc::new(move || chrono::Utc::now() + chrono::Duration::hours(offset.fetch_add(2, Ordering::SeqCst)))
        };
        let state = Arc::new(State {
            db: h.state.db.clone(),
            clock: jumping,
            config: h.state.config.clone(),
            signer: h.state.signer.clone(),
            hasher: h.state.hasher.clone(),
            mailer: h.state.mailer.clone(),
            admin: h.state.admin.clone(),
        });
        let known = "known@example.com";
        Internal::new(h.state.clone())
            .issue_invite(request(
                IssueInviteRequest {
                    administrator: "organizations/acme/administrators/known".into(),
                    email: known.into(),
                    organization_display_name: "Acme".into(),
                    inviter_email: String::new(),
                    idempotency_key: "bench".into(),
                },
                Caller::Service,
            ))
            .await
            .unwrap();
        let service = Service::new(h.state.clone());
        service
            .accept_invite(request(
                AcceptInviteRequest { token: wait_for_mail(&h, known).await, password: PASSWORD.into() },
                Caller::Anonymous,
            ))
            .await
            .unwrap();

        let service = Service::new(state);
        for i in 0..3 {
            time(&service, &format!("warmup-{i}@example.com")).await;
            time(&service, known).await;
        }
        let (mut unknown_times, mut known_times) = (Vec::new(), Vec::new());
        for i in 0..iterations {
            // Alternate the order so drift (caches, other load) hits both cases alike.
            if i % 2 == 0 {
                unknown_times.push(time(&service, &format!("nobody-{i}@example.com")).await);
                known_times.push(time(&service, known).await);
            } else {
                known_times.push(time(&service, known).await);
                unknown_times.push(time(&service, &format!("nobody-{i}@example.com")).await);
            }
        }
        let (unknown_mean, known_mean) = (mean(&unknown_times), mean(&known_times));
        let (unknown_median, known_median) = (median(&mut unknown_times), median(&mut known_times));
        let ratio = unknown_median.as_secs_f64() / known_median.as_secs_f64();
        println!("sign-in with a wrong password, {iterations} samples each:");
        println!("  unknown email: median {unknown_median:?}, mean {unknown_mean:?}");
        println!("  known email:   median {known_median:?}, mean {known_mean:?}");
        println!("  ratio of medians (unknown / known): {ratio:.3}");
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_string()
        });
        let dir = std::path::Path::new(&target).join("bench");
        std::fs::create_dir_all(&dir).unwrap();
        let report = serde_json::json!({
            "samples": iterations,
            "unknown_email": {"median_us": unknown_median.as_micros() as u64, "mean_us": unknown_mean.as_micros() as u64},
            "known_email_wrong_password": {"median_us": known_median.as_micros() as u64, "mean_us": known_mean.as_micros() as u64},
            "ratio_of_medians": ratio,
        });
        std::fs::write(dir.join("sign_in_timing.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
        if judged {
            assert!((0.9..=1.1).contains(&ratio), "timings differ by more than 10%: ratio {ratio:.3}");
        }
    });
}
