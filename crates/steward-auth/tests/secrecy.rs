//! No password, link token, access or refresh token, MFA challenge, TOTP secret or recovery code
//! reaches the logs (captured at TRACE level, every target) during a full flow: invite, accept,
//! failed and successful sign-in, refresh, MFA enrolment and sign-in with MFA, password change,
//! password reset.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use steward_auth::api::auth::AuthApi;
use steward_auth::api::internal::InternalApi;
use steward_proto::auth::v1::auth_internal_service_server::AuthInternalService;
use steward_proto::auth::v1::auth_service_server::AuthService;
use steward_proto::auth::v1::*;
use steward_runtime::authn::Caller;
use support::{caller_of, harness, mailed_token, request, wait_for_mail};

const FIRST: &str = "first secret horse battery staple";
const WRONG: &str = "wrong-but-long-password-xyz";
const SECOND: &str = "second purple elephant lantern";
const THIRD: &str = "third quiet otter under moonlight";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tokens(response: SignInResponse) -> TokenSet {
    match response.result.unwrap() {
        sign_in_response::Result::Tokens(tokens) => tokens,
        other => panic!("expected tokens, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let h = harness().await;
    let service = AuthApi::new(h.state.clone());
    let internal = InternalApi::new(h.state.clone());
    let email = "ada@example.com";
    let administrator = "organizations/acme/administrators/ada";
    let anonymous = || Caller::Anonymous;
    let mut secrets: Vec<String> = vec![FIRST.into(), WRONG.into(), SECOND.into(), THIRD.into()];

    internal
        .issue_invite(request(
            IssueInviteRequest {
                administrator: administrator.into(),
                email: email.into(),
                organization_display_name: "Acme".into(),
                inviter_email: "grace@example.com".into(),
                idempotency_key: "k1".into(),
            },
            Caller::Service,
        ))
        .await
        .unwrap();
    let invite = wait_for_mail(&h, email).await;
    secrets.push(invite.clone());
    let weak = service
        .accept_invite(request(
            AcceptInviteRequest { token: invite.clone(), password: "ada@example.com1".into() },
            anonymous(),
        ))
        .await
        .unwrap_err();
    assert_eq!(weak.code(), tonic::Code::InvalidArgument);
    service
        .accept_invite(request(
            AcceptInviteRequest { token: invite, password: FIRST.into() },
            anonymous(),
        ))
        .await
        .unwrap();

    let sign_in = |password: &str| SignInRequest {
        email: email.into(),
        password: password.into(),
        organization: String::new(),
    };
    service.sign_in(request(sign_in(WRONG), anonymous())).await.unwrap_err();
    let session =
        tokens(service.sign_in(request(sign_in(FIRST), anonymous())).await.unwrap().into_inner());
    secrets.push(session.access_token.clone());
    secrets.push(session.refresh_token.clone());
    let refreshed = service
        .refresh_session(request(
            RefreshSessionRequest { refresh_token: session.refresh_token.clone() },
            anonymous(),
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.push(refreshed.access_token.clone());
    secrets.push(refreshed.refresh_token.clone());
    // Reuse: revokes the session, logged as a warning (without the token).
    service
        .refresh_session(request(
            RefreshSessionRequest { refresh_token: session.refresh_token.clone() },
            anonymous(),
        ))
        .await
        .unwrap_err();

    let other =
        tokens(service.sign_in(request(sign_in(FIRST), anonymous())).await.unwrap().into_inner());
    secrets.push(other.access_token.clone());
    secrets.push(other.refresh_token.clone());
    let me = caller_of(&other.access_token);
    let enrolment = service
        .begin_mfa_enrollment(request(BeginMfaEnrollmentRequest {}, me.clone()))
        .await
        .unwrap()
        .into_inner();
    secrets.push(enrolment.secret.clone());
    secrets.push(enrolment.otpauth_uri.clone());
    let code = steward_auth::totp::code_at(&enrolment.secret, chrono::Utc::now()).unwrap();
    let recovery = service
        .confirm_mfa_enrollment(request(
            ConfirmMfaEnrollmentRequest { totp_code: code },
            me.clone(),
        ))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    secrets.extend(recovery.iter().cloned());
    secrets.extend(recovery.iter().map(|c| c.replace('-', "")));

    let challenge = match service
        .sign_in(request(sign_in(FIRST), anonymous()))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
    {
        sign_in_response::Result::MfaChallenge(challenge) => challenge.challenge,
        other => panic!("expected a challenge, got {other:?}"),
    };
    secrets.push(challenge.clone());
    let wrong_code = VerifyMfaRequest {
        challenge: challenge.clone(),
        code: Some(verify_mfa_request::Code::RecoveryCode("not-a-recovery-code".into())),
    };
    service.verify_mfa(request(wrong_code, anonymous())).await.unwrap_err();
    let verified = service
        .verify_mfa(request(
            VerifyMfaRequest {
                challenge,
                code: Some(verify_mfa_request::Code::RecoveryCode(recovery[3].clone())),
            },
            anonymous(),
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.push(verified.access_token.clone());
    secrets.push(verified.refresh_token.clone());

    service
        .change_password(request(
            ChangePasswordRequest { current_password: WRONG.into(), new_password: SECOND.into() },
            me.clone(),
        ))
        .await
        .unwrap_err();
    service
        .change_password(request(
            ChangePasswordRequest { current_password: FIRST.into(), new_password: SECOND.into() },
            me.clone(),
        ))
        .await
        .unwrap();
    service
        .request_password_reset(request(
            RequestPasswordResetRequest { email: email.into(), organization: String::new() },
            anonymous(),
        ))
        .await
        .unwrap();
    let mut reset = String::new();
    for _ in 0..100 {
        reset = mailed_token(&h, email);
        if !secrets.contains(&reset) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    secrets.push(reset.clone());
    service
        .reset_password(request(
            ResetPasswordRequest { token: reset, new_password: THIRD.into() },
            anonymous(),
        ))
        .await
        .unwrap();
    service.sign_out(request(SignOutRequest {}, me)).await.unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "invite issued",
        "invite accepted",
        "sign-in refused",
        "refresh token reused",
        "mfa enrolled",
        "recovery code used",
        "password changed",
        "password reset",
    ] {
        assert!(logs.contains(expected), "the capture works ({expected}): {logs}");
    }
    for secret in &secrets {
        assert!(!secret.is_empty());
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs: {secret}\n{logs}");
    }
    // No argon2 hash or TOTP secret under another spelling either.
    assert!(!logs.contains("$argon2id$"), "{logs}");
    assert!(!logs.contains("token="), "{logs}");
}
