//! The auth service end to end: invites, passwords, MFA, sessions, token attacks, throttling.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, GetProfileRequest, ListAdministratorsRequest,
    ResendInviteRequest, Role,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_proto::auth::v1::auth_internal_service_client::AuthInternalServiceClient;
use steward_proto::auth::v1::{
    sign_in_response, verify_mfa_request, AcceptInviteRequest, BeginMfaEnrollmentRequest,
    ChangePasswordRequest, ConfirmMfaEnrollmentRequest, DeleteCredentialsRequest, GetJwksRequest,
    IssueInviteRequest, MfaChallenge, RefreshSessionRequest, RequestPasswordResetRequest,
    ResetPasswordRequest, SignInRequest, SignOutRequest, TokenScope, TokenSet, VerifyMfaRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use steward_server::ServiceKind;
use steward_storage::testing::Backend;

use crate::harness::{Owner, Stack, PASSWORD};

const NEW_PASSWORD: &str = "purple elephant juggles 7 lanterns";

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn err<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    result.expect_err("expected the call to fail")
}

fn assert_invalid_credentials(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "invalid credentials");
}

fn field_violation(status: &tonic::Status) -> (String, String) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details.bad_request().expect("a BadRequest detail");
    (bad.field_violations[0].field.clone(), bad.field_violations[0].description.clone())
}

async fn sign_in_raw(
    stack: &Stack,
    email: &str,
    password: &str,
) -> Result<sign_in_response::Result, tonic::Status> {
    stack
        .client()
        .await
        .auth()
        .sign_in(SignInRequest {
            email: email.into(),
            password: password.into(),
            organization: String::new(),
        })
        .await
        .map(|r| r.into_inner().result.unwrap())
}

fn tokens(result: sign_in_response::Result) -> TokenSet {
    match result {
        sign_in_response::Result::Tokens(tokens) => tokens,
        other => panic!("expected tokens, got {other:?}"),
    }
}

fn challenge(result: sign_in_response::Result) -> MfaChallenge {
    match result {
        sign_in_response::Result::MfaChallenge(challenge) => challenge,
        other => panic!("expected an MFA challenge, got {other:?}"),
    }
}

/// The owner as the first page of its organization shows it.
async fn owner_in_page(owner: &Owner) -> Administrator {
    let request = ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() };
    let page = owner.client.admin().list_administrators(request).await.unwrap().into_inner();
    page.administrators.into_iter().find(|a| a.name == owner.admin).unwrap()
}

/// A connection of the test's own to the auth service's database.
async fn auth_db(stack: &Stack) -> sea_orm::DatabaseConnection {
    let url = match stack.backend {
        Backend::Sqlite => steward_server::database_url(stack.config(), ServiceKind::Auth).unwrap(),
        Backend::Postgres => stack.config().database.url.clone(),
    };
    sea_orm::Database::connect(&url).await.unwrap()
}

async fn refresh(stack: &Stack, refresh_token: &str) -> Result<TokenSet, tonic::Status> {
    stack
        .client()
        .await
        .auth()
        .refresh_session(RefreshSessionRequest { refresh_token: refresh_token.into() })
        .await
        .map(|r| r.into_inner().tokens.unwrap())
}

async fn verify(
    stack: &Stack,
    challenge: &str,
    code: verify_mfa_request::Code,
) -> Result<TokenSet, tonic::Status> {
    stack
        .client()
        .await
        .auth()
        .verify_mfa(VerifyMfaRequest { challenge: challenge.into(), code: Some(code) })
        .await
        .map(|r| r.into_inner().tokens.unwrap())
}

/// Creates an administrator as the owner and returns (name, email); the invite is in the mail.
async fn invite(owner: &Owner, mfa_required: bool) -> (String, String) {
    let email = format!("invitee-{}@example.com", uuid::Uuid::new_v4().simple());
    let created = owner
        .client
        .admin()
        .create_administrator(CreateAdministratorRequest {
            parent: owner.org.clone(),
            administrator: Some(Administrator {
                email: email.clone(),
                role: Role::CommandRunner as i32,
                mfa_required,
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .administrator
        .unwrap();
    (created.name, email)
}

async fn accept(stack: &Stack, token: &str, password: &str) -> Result<String, tonic::Status> {
    stack
        .client()
        .await
        .auth()
        .accept_invite(AcceptInviteRequest { token: token.into(), password: password.into() })
        .await
        .map(|r| r.into_inner().administrator)
}

fn totp_now(stack: &Stack, secret: &str) -> String {
    steward_auth::totp::code_at(secret, stack.clock.now()).unwrap()
}

fn mail_count(stack: &Stack, email: &str) -> usize {
    std::fs::read_dir(stack.mail_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|t| t.contains(&format!("To: {email}")))
                })
                .count()
        })
        .unwrap_or(0)
}

backend_test!(invite_accept_sign_in_refresh_sign_out, |stack| async move {
    let owner = stack.owner().await;
    let access = &owner.tokens.access_token;

    // The token is what RFC 9068 and the auth proto say it is, and verifies with the published key.
    let header = header_of(access);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let jwks = stack.client().await.auth().get_jwks(GetJwksRequest {}).await.unwrap().into_inner();
    let jwk = jwks
        .keys
        .iter()
        .find(|k| Some(k.kid.as_str()) == header["kid"].as_str())
        .expect("kid published");
    assert_eq!(
        (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str(), jwk.r#use.as_str()),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    let claims = claims_of(access);
    assert_eq!(claims["sub"], owner.admin.as_str());
    assert_eq!(claims["org"], owner.org.as_str());
    assert_eq!(claims["iss"], stack.config().auth.issuer.as_str());
    assert_eq!(claims["aud"], stack.config().auth.audience.as_str());
    assert_eq!(claims["role"], "administrator");
    assert_eq!(claims["billing"], true);
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 600);
    assert_eq!(owner.tokens.scope, TokenScope::Full as i32);
    assert_eq!(owner.tokens.token_type, "Bearer");
    assert!(!owner.tokens.refresh_token.is_empty());
    owner.client.admin().get_profile(GetProfileRequest {}).await.unwrap();

    // Refresh: same session, new access and refresh tokens.
    let refreshed = refresh(&stack, &owner.tokens.refresh_token).await.unwrap();
    assert_ne!(refreshed.refresh_token, owner.tokens.refresh_token);
    assert_eq!(claims_of(&refreshed.access_token)["sid"], claims["sid"]);
    assert_ne!(claims_of(&refreshed.access_token)["jti"], claims["jti"]);
    let client = stack.client().await.with_token(&refreshed.access_token).unwrap();
    client.admin().get_profile(GetProfileRequest {}).await.unwrap();

    // Sign out revokes the session: its refresh token is dead.
    client.auth().sign_out(SignOutRequest {}).await.unwrap();
    assert_invalid_credentials(&refresh(&stack, &refreshed.refresh_token).await.unwrap_err());
    // The signed-out access token has not expired, but the auth service holds the sessions and
    // refuses it at once: no password change, no MFA enrolment.
    let after = client
        .auth()
        .change_password(ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "an entirely different passphrase 99".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
    let after = client.auth().begin_mfa_enrollment(BeginMfaEnrollmentRequest {}).await.unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
    let after = client
        .auth()
        .confirm_mfa_enrollment(ConfirmMfaEnrollmentRequest { totp_code: "000000".into() })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
    // The password is unchanged: signing in with it still works.
    tokens(sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap());
    // Signing out needs a token.
    assert_eq!(
        err(stack.client().await.auth().sign_out(SignOutRequest {}).await).code(),
        Code::Unauthenticated
    );
});

backend_test!(invite_links_are_single_use_expire_and_resend_invalidates, |stack| async move {
    let owner = stack.owner().await;
    let (name, email) = invite(&owner, false).await;
    let first = stack.wait_for_token(&email).await;
    assert!(first.len() >= 22, "a 128-bit token is at least 22 base64url characters");

    owner.client.admin().resend_invite(ResendInviteRequest { name: name.clone() }).await.unwrap();
    let second = stack.wait_for_new_token(&email, Some(&first)).await;
    assert_invalid_credentials(&accept(&stack, &first, PASSWORD).await.unwrap_err());

    // Password rules, with the field named and the reason given.
    let (field, why) = field_violation(&accept(&stack, &second, "short").await.unwrap_err());
    assert_eq!(field, "password");
    assert!(why.contains("at least 12"), "{why}");
    let (field, why) = field_violation(&accept(&stack, &second, "password1234").await.unwrap_err());
    assert_eq!(field, "password");
    assert!(why.contains("too easy"), "{why}");
    let local = email.split('@').next().unwrap();
    // The email is a known input: a password built from it is refused as weak, with the field
    // named (and the link stays usable).
    let (field, _) =
        field_violation(&accept(&stack, &second, &format!("{local}{local}")).await.unwrap_err());
    assert_eq!(field, "password", "the email is a known input");

    assert_eq!(accept(&stack, &second, PASSWORD).await.unwrap(), name);
    assert_invalid_credentials(&accept(&stack, &second, PASSWORD).await.unwrap_err());
    let member = tokens(sign_in_raw(&stack, &email.to_uppercase(), PASSWORD).await.unwrap());
    assert_eq!(claims_of(&member.access_token)["role"], "command_runner");

    // An unknown token, and an expired one.
    assert_invalid_credentials(
        &accept(&stack, "AAAAAAAAAAAAAAAAAAAAAA", PASSWORD).await.unwrap_err(),
    );
    let (_, late_email) = invite(&owner, false).await;
    let late = stack.wait_for_token(&late_email).await;
    stack.clock.advance(Duration::from_secs(72 * 3600 + 60));
    assert_invalid_credentials(&accept(&stack, &late, PASSWORD).await.unwrap_err());
});

backend_test!(issue_invite_is_idempotent_and_needs_the_administrator, |stack| async move {
    let owner = stack.owner().await;
    let mut internal = AuthInternalServiceClient::new(stack.internal().await);
    let email = format!("ghost-{}@example.com", uuid::Uuid::new_v4().simple());
    let request = IssueInviteRequest {
        administrator: format!("{}/administrators/{}", owner.org, uuid::Uuid::new_v4().simple()),
        email: email.clone(),
        organization_display_name: "Acme".into(),
        inviter_email: owner.email.clone(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    let first = internal.issue_invite(request.clone()).await.unwrap().into_inner();
    let again = internal.issue_invite(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.expire_time.unwrap().seconds, again.expire_time.unwrap().seconds);
    let token = stack.wait_for_token(&email).await;
    assert_eq!(mail_count(&stack, &email), 1, "a retried key sends no second email");
    let text = std::fs::read_dir(stack.mail_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .find(|t| t.contains(&format!("To: {email}")))
        .unwrap();
    assert!(text.contains("Acme") && text.contains(&owner.email), "names organization and inviter");
    assert!(text.contains(&format!("/set-password?token={token}")));
    // No console is configured: the email leads with the command that completes the invite,
    // then the token to paste when it asks (never on the command line).
    let command = "\r\n  steward accept-invite\r\n";
    let pasted = format!("\r\n  {token}\r\n");
    assert!(text.find(command) < text.find(&pasted), "{text}");
    assert!(text.find(&pasted) < text.find("/set-password?token="), "{text}");
    assert!(!text.contains("--token"), "{text}");
    assert!(text.contains("No web console ships with Steward yet"), "{text}");

    // The admin service does not know this administrator: accepting fails and does not activate.
    assert_invalid_credentials(&accept(&stack, &token, PASSWORD).await.unwrap_err());
    assert_invalid_credentials(&sign_in_raw(&stack, &email, PASSWORD).await.unwrap_err());
    // Only services may call it.
    let mut anonymous =
        AuthInternalServiceClient::connect(stack.internal_url(steward_server::ServiceKind::Auth))
            .await
            .unwrap();
    assert_eq!(err(anonymous.issue_invite(request).await).code(), Code::Unauthenticated);
});

backend_test!(mfa_enrol_sign_in_replay_and_recovery_codes, |stack| async move {
    let owner = stack.owner().await;
    // A page read before the enrolment, remembered by the admin service (see below).
    assert!(!owner_in_page(&owner).await.mfa_enrolled);
    let enrolment = owner
        .client
        .auth()
        .begin_mfa_enrollment(BeginMfaEnrollmentRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolment.secret.len(), 32);
    assert!(
        enrolment.otpauth_uri.starts_with("otpauth://totp/Steward:"),
        "{}",
        enrolment.otpauth_uri
    );
    assert!(enrolment.otpauth_uri.contains(&format!("secret={}", enrolment.secret)));
    assert!(enrolment.qr_code_png.starts_with(b"\x89PNG\r\n\x1a\n"));

    let code = totp_now(&stack, &enrolment.secret);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let status = err(owner
        .client
        .auth()
        .confirm_mfa_enrollment(ConfirmMfaEnrollmentRequest { totp_code: wrong.into() })
        .await);
    assert_eq!(field_violation(&status).0, "totp_code");
    let recovery = owner
        .client
        .auth()
        .confirm_mfa_enrollment(ConfirmMfaEnrollmentRequest { totp_code: code.clone() })
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(recovery.len(), 10);
    assert_eq!(recovery.iter().collect::<std::collections::HashSet<_>>().len(), 10);
    // The stored TOTP secret is sealed: the database holds no trace of it in clear.
    let db = auth_db(&stack).await;
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT mfa_secret FROM auth_credentials WHERE administrator = '{}'",
                owner.admin
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    let stored: String = row.try_get("", "mfa_secret").unwrap();
    assert!(stored.starts_with("v1:dev-1:"), "{stored}");
    assert!(!stored.contains(&enrolment.secret));
    db.close().await.unwrap();
    let again = err(owner.client.auth().begin_mfa_enrollment(BeginMfaEnrollmentRequest {}).await);
    assert_eq!(again.code(), Code::FailedPrecondition);
    // The admin service learns of the enrolment through the audit event the auth service sends.
    let mut enrolled = false;
    for _ in 0..200 {
        let profile =
            owner.client.admin().get_profile(GetProfileRequest {}).await.unwrap().into_inner();
        if profile.profile.and_then(|p| p.administrator).is_some_and(|a| a.mfa_enrolled) {
            enrolled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(enrolled, "the profile shows MFA enrolled");
    // The enrolment moved the organization's revision: the page is read again, not reused.
    assert!(
        owner_in_page(&owner).await.mfa_enrolled,
        "a page remembered from before the enrolment"
    );
    let events = owner
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: owner.org.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    for action in ["AcceptInvite", "SignIn", "ConfirmMfaEnrollment"] {
        let action = format!("/steward.auth.v1.AuthService/{action}");
        assert!(
            events
                .iter()
                .any(|e| e.action == action && e.actor == owner.admin && e.target == owner.admin),
            "{action} audited: {events:?}"
        );
    }

    // Sign-in now needs a second factor.
    let first = challenge(sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap());
    assert_eq!(first.methods.len(), 2);
    // The code used to confirm cannot be used again.
    let replay =
        verify(&stack, &first.challenge, verify_mfa_request::Code::TotpCode(code.clone())).await;
    assert_invalid_credentials(&replay.unwrap_err());
    stack.clock.advance(Duration::from_secs(30));
    let next = totp_now(&stack, &enrolment.secret);
    let full = verify(&stack, &first.challenge, verify_mfa_request::Code::TotpCode(next.clone()))
        .await
        .unwrap();
    assert_eq!(claims_of(&full.access_token)["amr"], json!(["pwd", "otp"]));
    assert_eq!(full.scope, TokenScope::Full as i32);
    assert!(!full.refresh_token.is_empty());
    // A completed challenge is spent.
    stack.clock.advance(Duration::from_secs(30));
    let later = totp_now(&stack, &enrolment.secret);
    assert_invalid_credentials(
        &verify(&stack, &first.challenge, verify_mfa_request::Code::TotpCode(later))
            .await
            .unwrap_err(),
    );

    // The same TOTP code in another sign-in is a replay.
    let second = challenge(sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap());
    assert_invalid_credentials(
        &verify(&stack, &second.challenge, verify_mfa_request::Code::TotpCode(next))
            .await
            .unwrap_err(),
    );
    // A recovery code works once (in any case, with or without dashes).
    let by_recovery = verify(
        &stack,
        &second.challenge,
        verify_mfa_request::Code::RecoveryCode(recovery[0].clone()),
    )
    .await
    .unwrap();
    assert_eq!(claims_of(&by_recovery.access_token)["amr"], json!(["pwd", "mfa"]));
    let third = challenge(sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap());
    assert_invalid_credentials(
        &verify(
            &stack,
            &third.challenge,
            verify_mfa_request::Code::RecoveryCode(recovery[0].clone()),
        )
        .await
        .unwrap_err(),
    );
    let typed = recovery[1].to_uppercase().replace('-', "");
    verify(&stack, &third.challenge, verify_mfa_request::Code::RecoveryCode(typed)).await.unwrap();
});

backend_test!(mfa_required_but_not_enrolled_gets_an_enrolment_only_token, |stack| async move {
    let owner = stack.owner().await;
    let (_, email) = invite(&owner, true).await;
    let token = stack.wait_for_token(&email).await;
    accept(&stack, &token, PASSWORD).await.unwrap();
    let limited = tokens(sign_in_raw(&stack, &email, PASSWORD).await.unwrap());
    assert_eq!(limited.scope, TokenScope::MfaEnrollment as i32);
    assert!(limited.refresh_token.is_empty());
    assert!(limited.refresh_token_expire_time.is_none());
    assert_eq!(claims_of(&limited.access_token)["scope"], "mfa_enrollment");

    let client = stack.client().await.with_token(&limited.access_token).unwrap();
    let denied = err(client.admin().get_profile(GetProfileRequest {}).await);
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = err(client
        .auth()
        .change_password(ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await);
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let enrolment = client
        .auth()
        .begin_mfa_enrollment(BeginMfaEnrollmentRequest {})
        .await
        .unwrap()
        .into_inner();
    let code = totp_now(&stack, &enrolment.secret);
    client
        .auth()
        .confirm_mfa_enrollment(ConfirmMfaEnrollmentRequest { totp_code: code })
        .await
        .unwrap();
    client.auth().sign_out(SignOutRequest {}).await.unwrap();

    let next = challenge(sign_in_raw(&stack, &email, PASSWORD).await.unwrap());
    stack.clock.advance(Duration::from_secs(30));
    let code = totp_now(&stack, &enrolment.secret);
    let full =
        verify(&stack, &next.challenge, verify_mfa_request::Code::TotpCode(code)).await.unwrap();
    assert_eq!(full.scope, TokenScope::Full as i32);
    let client = stack.client().await.with_token(&full.access_token).unwrap();
    client.admin().get_profile(GetProfileRequest {}).await.unwrap();
});

fn sign_claims(pair: &steward_auth::keys::KeyPair, kid: &str, typ: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.into());
    header.typ = Some(typ.into());
    jsonwebtoken::encode(&header, claims, &pair.encoding_key().unwrap()).unwrap()
}

fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

backend_test!(token_attacks_are_all_unauthenticated, |stack| async move {
    let owner = stack.owner().await;
    let valid = owner.tokens.access_token.clone();
    let header = header_of(&valid);
    let claims = claims_of(&valid);
    let kid = header["kid"].as_str().unwrap().to_string();
    let pair = steward_auth::keys::load(&stack.config().auth.signing_keys[0]).unwrap();
    let stranger =
        steward_auth::keys::from_pem(&kid, &steward_auth::keys::generate_pem().unwrap()).unwrap();
    let now = stack.clock.now().timestamp();
    let with = |changes: Value| {
        let mut c = claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let parts: Vec<&str> = valid.split('.').collect();

    let mut attacks: Vec<(&str, String)> = Vec::new();
    attacks.push((
        "alg none",
        unsigned(&json!({"alg": "none", "typ": "at+jwt", "kid": kid}), &claims, ""),
    ));
    let public = URL_SAFE_NO_PAD.decode(&pair.x).unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    hs.typ = Some("at+jwt".into());
    attacks.push((
        "HS256 with the public key bytes",
        jsonwebtoken::encode(
            &hs,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap(),
    ));
    attacks.push((
        "HS256 with the public key text",
        jsonwebtoken::encode(
            &hs,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(pair.x.as_bytes()).unwrap(),
        )
        .unwrap(),
    ));
    attacks.push(("unknown kid", sign_claims(&pair, "no-such-key", "at+jwt", &claims)));
    attacks.push((
        "wrong iss",
        sign_claims(&pair, &kid, "at+jwt", &with(json!({"iss": "https://evil.example"}))),
    ));
    attacks.push((
        "wrong aud",
        sign_claims(&pair, &kid, "at+jwt", &with(json!({"aud": "someone-else"}))),
    ));
    attacks.push(("wrong typ", sign_claims(&pair, &kid, "JWT", &claims)));
    attacks.push((
        "expired",
        sign_claims(
            &pair,
            &kid,
            "at+jwt",
            &with(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600})),
        ),
    ));
    attacks.push((
        "not yet valid",
        sign_claims(
            &pair,
            &kid,
            "at+jwt",
            &with(json!({"iat": now, "nbf": now + 3600, "exp": now + 7200})),
        ),
    ));
    attacks.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(
                with(json!({"sub": format!("{}/administrators/someone-else", owner.org)}))
                    .to_string()
            ),
            parts[2]
        ),
    ));
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 0x01;
    attacks.push((
        "tampered signature",
        format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(signature)),
    ));
    attacks.push((
        "another deployment's key, same kid",
        sign_claims(&stranger, &kid, "at+jwt", &claims),
    ));
    attacks.push(("garbage", "not.a.jwt".into()));

    // The real key and the real claims pass, so each failure below is the attack's doing.
    let control = sign_claims(&pair, &kid, "at+jwt", &claims);
    stack
        .client()
        .await
        .with_token(&control)
        .unwrap()
        .admin()
        .get_profile(GetProfileRequest {})
        .await
        .unwrap();
    for (name, token) in attacks {
        let client = stack.client().await.with_token(&token).unwrap();
        let status = err(client.admin().get_profile(GetProfileRequest {}).await);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }
    let status = err(stack.client().await.admin().get_profile(GetProfileRequest {}).await);
    assert_eq!(status.code(), Code::Unauthenticated, "no token");
});

backend_test!(refresh_reuse_revokes_the_family, |stack| async move {
    let owner = stack.owner().await;
    let first = refresh(&stack, &owner.tokens.refresh_token).await.unwrap();
    // Presenting the rotated token again: refused, and the whole session dies with it.
    assert_invalid_credentials(&refresh(&stack, &owner.tokens.refresh_token).await.unwrap_err());
    assert_invalid_credentials(&refresh(&stack, &first.refresh_token).await.unwrap_err());
    // Other sessions are untouched.
    let other = stack.sign_in(&owner.email, PASSWORD).await;
    refresh(&stack, &other.refresh_token).await.unwrap();
    assert_invalid_credentials(&refresh(&stack, "not-a-refresh-token").await.unwrap_err());
});

// A refresh token is `<family>.<secret>`. A token of no known family (made up, or with a
// family altered) is refused and ends nothing; a token of the session's family that is not its
// current one (a guessed or altered secret) is reuse and ends the session, as a rotated token
// does; a malformed one (oversized, a NUL, extra dots) is refused and ends nothing.
backend_test!(refresh_tokens_of_other_families_or_secrets_are_refused, |stack| async move {
    let owner = stack.owner().await;
    let token = owner.tokens.refresh_token.clone();
    let (family, secret) = token.split_once('.').expect("a refresh token is family.secret");
    let stranger = format!("AAAAAAAAAAAAAAAAAAAAAA.{secret}");
    assert_invalid_credentials(&refresh(&stack, &stranger).await.unwrap_err());
    assert_invalid_credentials(&refresh(&stack, &"x".repeat(100_000)).await.unwrap_err());
    assert_invalid_credentials(&refresh(&stack, ".").await.unwrap_err());
    let nul = format!("{}\0.{secret}", &family[1..]);
    assert_invalid_credentials(&refresh(&stack, &nul).await.unwrap_err());
    assert_invalid_credentials(&refresh(&stack, &format!("{token}.{secret}")).await.unwrap_err());
    // Nothing above ended the session: its token still rotates.
    let next = refresh(&stack, &token).await.unwrap();
    assert_eq!(next.refresh_token.split_once('.').unwrap().0, family, "the family is kept");
    assert_ne!(next.refresh_token, token);
    // A made-up secret in the family: reuse, and the session ends.
    let forged = format!("{family}.{}", "A".repeat(43));
    assert_invalid_credentials(&refresh(&stack, &forged).await.unwrap_err());
    assert_invalid_credentials(&refresh(&stack, &next.refresh_token).await.unwrap_err());
});

// A session from before refresh families (no family; its token a row of
// `auth_refresh_tokens`, as the previous release stores it, also during a rollout) keeps
// working: its token is exchanged once for a family token, which then rotates as any, and
// presenting the old token again is reuse and ends the session.
backend_test!(a_refresh_token_from_before_families_refreshes_once, |stack| async move {
    use sea_orm::sea_query::{Alias, Query};
    use sea_orm::{ConnectionTrait, Statement};
    use steward_auth::secrets::{digest, new_token};
    let owner = stack.owner().await;
    let db = auth_db(&stack).await;
    let backend = db.get_database_backend();
    let current = digest(&owner.tokens.refresh_token);
    let select = format!("SELECT id FROM auth_sessions WHERE refresh_hash = '{current}'");
    let row = db.query_one(Statement::from_string(backend, select)).await.unwrap().unwrap();
    let session: String = row.try_get("", "id").unwrap();
    let forget = format!(
        "UPDATE auth_sessions SET refresh_family = NULL, refresh_hash = NULL WHERE id = '{session}'"
    );
    db.execute(Statement::from_string(backend, forget)).await.unwrap();
    let legacy = new_token();
    let insert = Query::insert()
        .into_table(Alias::new("auth_refresh_tokens"))
        .columns(["token_hash", "session_id", "created_at"].map(Alias::new))
        .values_panic([digest(&legacy).into(), session.clone().into(), chrono::Utc::now().into()])
        .to_owned();
    db.execute(backend.build(&insert)).await.unwrap();

    let next = refresh(&stack, &legacy).await.unwrap();
    assert!(next.refresh_token.contains('.'), "exchanged for a family token");
    let after = refresh(&stack, &next.refresh_token).await.unwrap();
    // The old token again: reuse. The session ends, its newest token with it.
    assert_invalid_credentials(&refresh(&stack, &legacy).await.unwrap_err());
    assert_invalid_credentials(&refresh(&stack, &after.refresh_token).await.unwrap_err());
    let revoked = format!("SELECT revoked_at FROM auth_sessions WHERE id = '{session}'");
    let row = db.query_one(Statement::from_string(backend, revoked)).await.unwrap().unwrap();
    let revoked_at: Option<chrono::DateTime<chrono::Utc>> = row.try_get("", "revoked_at").unwrap();
    assert!(revoked_at.is_some(), "the session is revoked");
    db.close().await.unwrap();
});

backend_test!(deleted_credentials_cannot_refresh_or_sign_in, |stack| async move {
    let owner = stack.owner().await;
    let mut internal = AuthInternalServiceClient::new(stack.internal().await);
    let request = DeleteCredentialsRequest {
        administrator: owner.admin.clone(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    internal.delete_credentials(request.clone()).await.unwrap();
    internal.delete_credentials(request).await.unwrap();
    assert_invalid_credentials(&refresh(&stack, &owner.tokens.refresh_token).await.unwrap_err());
    assert_invalid_credentials(&sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap_err());
});

/// An administrator with a password that never signed in (so no address is known to it), and
/// its email.
async fn never_signed_in(stack: &Stack, owner: &Owner) -> String {
    let (_, email) = invite(owner, false).await;
    let token = stack.wait_for_token(&email).await;
    accept(stack, &token, PASSWORD).await.unwrap();
    email
}

backend_test!(throttling_engages_and_releases_with_the_clock, |stack| async move {
    let admin = stack.owner().await;
    // An account that never signed in from here: an address it did sign in from would have an
    // allowance of its own while the account is locked.
    struct Account {
        email: String,
    }
    let owner = Account { email: never_signed_in(&stack, &admin).await };
    for _ in 0..5 {
        let status =
            sign_in_raw(&stack, &owner.email, "wrong password, attempt").await.unwrap_err();
        assert_invalid_credentials(&status);
    }
    // Locked now, even with the right password.
    let status = sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay =
        status.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2), "{delay:?}");
    // An unknown email is throttled the same way (no enumeration through throttling).
    let ghost = format!("ghost-{}@example.com", uuid::Uuid::new_v4().simple());
    for _ in 0..5 {
        assert_invalid_credentials(
            &sign_in_raw(&stack, &ghost, "wrong password, attempt").await.unwrap_err(),
        );
    }
    assert_eq!(
        sign_in_raw(&stack, &ghost, PASSWORD).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    // The lock lifts once the (injected) clock has moved past it.
    stack.clock.advance(Duration::from_secs(3));
    tokens(sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap());
    // The next failure locks again, for twice as long.
    assert_invalid_credentials(&sign_in_raw(&stack, &ghost, "x").await.unwrap_err());
    let status = sign_in_raw(&stack, &ghost, PASSWORD).await.unwrap_err();
    let delay =
        status.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(delay > Duration::from_secs(2) && delay <= Duration::from_secs(4), "{delay:?}");
});

// Per client address: many accounts failing from one address lock the address (every email,
// even a correct password), below the per-account threshold; the clock releases it.
// Strangers behind the same address (office NAT, proxy, ingress) cannot lock an administrator
// out: the address dimension only slows guessing to one guess per account, and never refuses a
// correct password for an account that has no recent failures of its own.
backend_test!(strangers_cannot_lock_out_an_administrator, |stack| async move {
    let owner = stack.owner().await;
    // Locks last seconds; on a loaded machine forty sign-ins can outlast one.
    stack.clock.freeze();
    for i in 0..40 {
        let email = format!("spray-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
        let status = sign_in_raw(&stack, &email, "sprayed password").await.unwrap_err();
        assert!(
            matches!(status.code(), Code::Unauthenticated | Code::ResourceExhausted),
            "{status:?}"
        );
    }
    // The address is locked now, yet the owner's correct password gets through.
    tokens(sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap());
    // A fresh account gets one guess from the locked address, not more.
    let fresh = format!("fresh-{}@example.com", uuid::Uuid::new_v4().simple());
    assert_invalid_credentials(&sign_in_raw(&stack, &fresh, "guess one").await.unwrap_err());
    let status = sign_in_raw(&stack, &fresh, "guess two").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // An account with a recent failure waits for the address lock, with RetryInfo.
    assert_invalid_credentials(&sign_in_raw(&stack, &owner.email, "typo").await.unwrap_err());
    let status = sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay =
        status.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(delay > Duration::ZERO && delay <= Duration::from_secs(900), "{delay:?}");
    stack.clock.advance(delay + Duration::from_secs(1));
    tokens(sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap());
});

backend_test!(unknown_email_and_wrong_password_fail_identically, |stack| async move {
    let owner = stack.owner().await;
    let unknown =
        sign_in_raw(&stack, "nobody-here@example.com", "some wrong password").await.unwrap_err();
    let wrong = sign_in_raw(&stack, &owner.email, "some wrong password").await.unwrap_err();
    assert_invalid_credentials(&unknown);
    assert_eq!(unknown.code(), wrong.code());
    assert_eq!(unknown.message(), wrong.message());
    // The same details but for each call's own request id.
    let (unknown, wrong) = (unknown.get_error_details(), wrong.get_error_details());
    let shown = |details: &tonic_types::ErrorDetails| {
        format!(
            "{:?} {:?} {:?} {:?}",
            details.error_info(),
            details.retry_info(),
            details.bad_request(),
            details.precondition_failure()
        )
    };
    assert_eq!(shown(&unknown), shown(&wrong));
    let id =
        |details: &tonic_types::ErrorDetails| details.request_info().unwrap().request_id.clone();
    assert_ne!(id(&unknown), id(&wrong));
    // A password reset for an unknown email answers like one for a known email.
    let invite = stack.wait_for_token(&owner.email).await;
    let mut answers = Vec::new();
    for email in ["nobody-here@example.com", owner.email.as_str()] {
        let request =
            RequestPasswordResetRequest { email: email.into(), organization: String::new() };
        answers.push(
            stack.client().await.auth().request_password_reset(request).await.unwrap().into_inner(),
        );
    }
    assert_eq!(answers[0], answers[1], "the same answer whether or not the email exists");
    // Only the known email gets a link.
    stack.wait_for_new_token(&owner.email, Some(&invite)).await;
    assert_eq!(mail_count(&stack, "nobody-here@example.com"), 0);
});

backend_test!(change_password_keeps_this_session_and_revokes_the_others, |stack| async move {
    let owner = stack.owner().await;
    let other = stack.sign_in(&owner.email, PASSWORD).await;
    let this = stack.sign_in(&owner.email, PASSWORD).await;
    let client = stack.client().await.with_token(&this.access_token).unwrap();

    let wrong = err(client
        .auth()
        .change_password(ChangePasswordRequest {
            current_password: "not it at all".into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await);
    assert_invalid_credentials(&wrong);
    let weak = err(client
        .auth()
        .change_password(ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "aaaaaaaaaaaa".into(),
        })
        .await);
    assert_eq!(field_violation(&weak).0, "new_password");

    client
        .auth()
        .change_password(ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .unwrap();
    assert_invalid_credentials(&refresh(&stack, &other.refresh_token).await.unwrap_err());
    assert_invalid_credentials(&refresh(&stack, &owner.tokens.refresh_token).await.unwrap_err());
    refresh(&stack, &this.refresh_token).await.unwrap();
    assert_invalid_credentials(&sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap_err());
    tokens(sign_in_raw(&stack, &owner.email, NEW_PASSWORD).await.unwrap());
});

backend_test!(password_reset_by_email_link, |stack| async move {
    let owner = stack.owner().await;
    let invite_token = stack.wait_for_token(&owner.email).await;
    let mut auth = stack.client().await.auth();
    auth.request_password_reset(RequestPasswordResetRequest {
        email: owner.email.to_uppercase(),
        organization: String::new(),
    })
    .await
    .unwrap();
    let token = stack.wait_for_new_token(&owner.email, Some(&invite_token)).await;
    // The email carries the reset link and the command that does the same.
    let text = std::fs::read_dir(stack.mail_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .find(|t| t.contains(&format!("reset-password?token={token}")))
        .unwrap();
    let command = "\r\n  steward password reset\r\n";
    let pasted = format!("\r\n  {token}\r\n");
    assert!(text.contains(command) && text.contains(&pasted), "{text}");
    assert!(text.find(command) < text.find(&pasted) && !text.contains("--token"), "{text}");
    let weak = auth
        .reset_password(ResetPasswordRequest {
            token: token.clone(),
            new_password: "password1234".into(),
        })
        .await;
    assert_eq!(field_violation(&err(weak)).0, "new_password");
    // The invite link is no reset link.
    let wrong_kind = auth
        .reset_password(ResetPasswordRequest {
            token: invite_token,
            new_password: NEW_PASSWORD.into(),
        })
        .await;
    assert_invalid_credentials(&err(wrong_kind));

    auth.reset_password(ResetPasswordRequest {
        token: token.clone(),
        new_password: NEW_PASSWORD.into(),
    })
    .await
    .unwrap();
    assert_invalid_credentials(&err(auth
        .reset_password(ResetPasswordRequest { token, new_password: NEW_PASSWORD.into() })
        .await));
    // Every session is revoked; the new password works and the old one does not.
    assert_invalid_credentials(&refresh(&stack, &owner.tokens.refresh_token).await.unwrap_err());
    assert_invalid_credentials(&sign_in_raw(&stack, &owner.email, PASSWORD).await.unwrap_err());
    tokens(sign_in_raw(&stack, &owner.email, NEW_PASSWORD).await.unwrap());
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_while_the_admin_service_is_down_is_unavailable_and_keeps_the_link() {
    let mut stack = Stack::start_split(steward_storage::testing::Backend::Sqlite).await;
    let owner = stack.owner().await;
    let (name, email) = invite(&owner, false).await;
    let token = stack.wait_for_token(&email).await;
    stack.stop(steward_server::ServiceKind::Admin).await;
    let auth = stack.client_for(steward_server::ServiceKind::Auth).await;
    let status = auth
        .auth()
        .accept_invite(AcceptInviteRequest { token: token.clone(), password: PASSWORD.into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stack.restart(steward_server::ServiceKind::Admin).await;
    let accepted = auth
        .auth()
        .accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.administrator, name);
    tokens(sign_in_raw_at(&stack, &email).await.unwrap());
}

async fn sign_in_raw_at(
    stack: &Stack,
    email: &str,
) -> Result<sign_in_response::Result, tonic::Status> {
    stack
        .client_for(steward_server::ServiceKind::Auth)
        .await
        .auth()
        .sign_in(SignInRequest {
            email: email.into(),
            password: PASSWORD.into(),
            organization: String::new(),
        })
        .await
        .map(|r| r.into_inner().result.unwrap())
}

/// Signs in as if from `address`, behind a trusted proxy that appended it to X-Forwarded-For;
/// the client also sends a forged `Forwarded` header, which must be ignored.
async fn sign_in_from(
    stack: &Stack,
    address: &str,
    email: &str,
    password: &str,
) -> Result<sign_in_response::Result, tonic::Status> {
    let mut request = tonic::Request::new(SignInRequest {
        email: email.into(),
        password: password.into(),
        organization: String::new(),
    });
    let forged = format!("for={}", uuid::Uuid::new_v4().simple());
    request.metadata_mut().insert("forwarded", forged.parse().unwrap());
    request.metadata_mut().insert("x-forwarded-for", address.parse().unwrap());
    stack.client().await.auth().sign_in(request).await.map(|r| r.into_inner().result.unwrap())
}

// Guesses from elsewhere lock the account, but its owner keeps signing in from an address it
// signed in from before; an unknown address waits for the lock. A forged `Forwarded` header buys
// an attacker nothing: only the header the proxy maintains is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_elsewhere_do_not_keep_the_owner_out() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if backend == Backend::Postgres && !crate::harness::postgres_available() {
            continue;
        }
        let stack = Stack::start_with(backend, |config| {
            config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        })
        .await;
        let owner = stack.owner().await;
        tokens(sign_in_from(&stack, "203.0.113.5", &owner.email, PASSWORD).await.unwrap());
        let mut refused = None;
        for i in 0..10 {
            match sign_in_from(&stack, "198.51.100.9", &owner.email, &format!("guess {i}")).await {
                Err(status) if status.code() == Code::ResourceExhausted => {
                    refused = Some(status);
                    break;
                }
                Err(status) => assert_invalid_credentials(&status),
                Ok(other) => panic!("a wrong password was accepted: {other:?}"),
            }
        }
        assert!(refused.is_some(), "the account locks after its free failures");
        let status = sign_in_from(&stack, "192.0.2.77", &owner.email, PASSWORD).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "an unknown address waits");
        tokens(sign_in_from(&stack, "203.0.113.5", &owner.email, PASSWORD).await.unwrap());
    }
}
