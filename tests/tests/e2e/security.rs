//! Attacks from the security review: privilege escalation through the billing flag, forged page
//! tokens, second-factor guessing across challenges, and oversized system lists.

use std::time::Duration;

use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::RecordAuditEventsRequest;
use steward_proto::admin::v1::{
    Administrator, BatchDeleteAdministratorsRequest, CreateAdministratorRequest,
    GetAdministratorRequest, ListAdministratorsRequest, Role, UpdateAdministratorRequest,
};
use steward_proto::audit::v1::{audit_event, AuditEvent, ListAuditEventsRequest};
use steward_proto::auth::v1::{
    sign_in_response, verify_mfa_request, RequestPasswordResetRequest, SignInRequest,
    VerifyMfaRequest,
};
use steward_proto::commands::v1::{
    Command, CreateCommandRequest, DeleteCommandRequest, Interpreter, RunCommandRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::PASSWORD;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

fn reason(status: &tonic::Status) -> String {
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

backend_test!(administrator_without_billing_cannot_grant_billing, |stack| async move {
    let owner = stack.owner().await;
    let plain = stack.member(&owner, Role::Administrator, false).await;

    // Granting itself billing access would open the payment card: refused.
    let err = plain
        .client
        .admin()
        .update_administrator(UpdateAdministratorRequest {
            administrator: Some(Administrator {
                name: plain.name.clone(),
                billing: true,
                ..Default::default()
            }),
            update_mask: mask(&["billing"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "BILLING_REQUIRED");

    // So is creating a new billing administrator (an account it could control).
    let err = plain
        .client
        .admin()
        .create_administrator(CreateAdministratorRequest {
            parent: owner.org.clone(),
            administrator: Some(Administrator {
                email: format!("alias-{}@example.com", uuid::Uuid::new_v4().simple()),
                role: Role::Administrator as i32,
                billing: true,
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "BILLING_REQUIRED");

    // Nothing changed: still no billing, and no second administrator was created.
    let listed = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            filter: "billing = true".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.administrators.iter().map(|a| a.name.clone()).collect();
    assert_eq!(names, vec![owner.admin.clone()]);

    // A billing Administrator may grant it.
    let granted = owner
        .client
        .admin()
        .update_administrator(UpdateAdministratorRequest {
            administrator: Some(Administrator {
                name: plain.name.clone(),
                billing: true,
                ..Default::default()
            }),
            update_mask: mask(&["billing"]),
        })
        .await
        .unwrap()
        .into_inner()
        .administrator
        .unwrap();
    assert!(granted.billing);
});

backend_test!(forged_page_token_offsets_are_invalid_not_a_panic, |stack| async move {
    use base64::Engine;
    let owner = stack.owner().await;
    let first = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.next_page_token.is_empty(), "one administrator, one page");
    // A real token is `offset:digest`; reuse the digest of a real one with a huge offset.
    stack.member(&owner, Role::CommandRunner, false).await;
    let page = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = String::from_utf8(engine.decode(&page.next_page_token).unwrap()).unwrap();
    let (_, digest) = raw.split_once(':').unwrap();
    let forged = engine.encode(format!("{}:{digest}", u64::MAX));
    let err = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 1,
            page_token: forged,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_error_details().bad_request().unwrap().field_violations[0].field,
        "page_token"
    );
});

backend_test!(wrong_mfa_codes_are_throttled_across_challenges, |stack| async move {
    let owner = stack.owner().await;
    let secret = stack.enrol_mfa(&owner.client).await;
    stack.clock.advance(Duration::from_secs(60));

    let auth = stack.client().await;
    let challenge = || async {
        let reply = auth
            .auth()
            .sign_in(SignInRequest {
                email: owner.email.clone(),
                password: PASSWORD.into(),
                organization: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        match reply.result {
            Some(sign_in_response::Result::MfaChallenge(c)) => c.challenge,
            other => panic!("expected a challenge, got {other:?}"),
        }
    };
    let verify = |challenge: String, code: String| {
        let auth = auth.clone();
        async move {
            auth.auth()
                .verify_mfa(VerifyMfaRequest {
                    challenge,
                    code: Some(verify_mfa_request::Code::TotpCode(code)),
                })
                .await
        }
    };
    let wrong = || {
        let now = stack.clock.now();
        let valid: Vec<String> = [-30, 0, 30]
            .iter()
            .map(|s| {
                steward_auth::totp::code_at(&secret, now + chrono::Duration::seconds(*s)).unwrap()
            })
            .collect();
        (0..10).map(|d| format!("{d}{d}{d}{d}{d}{d}")).find(|c| !valid.contains(c)).unwrap()
    };

    // Five wrong codes on one challenge use it up.
    let first = challenge().await;
    for _ in 0..5 {
        let err = verify(first.clone(), wrong()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    // The password still works (and clears the password counter), but a fresh challenge does
    // not buy fresh guesses: even the right code waits for the lock.
    let second = challenge().await;
    let right = steward_auth::totp::code_at(&secret, stack.clock.now()).unwrap();
    let err = verify(second.clone(), right).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.get_error_details().retry_info().is_some());

    // After the lock, the right code completes the sign-in, and the counter starts over.
    stack.clock.advance(Duration::from_secs(31));
    let right = steward_auth::totp::code_at(&secret, stack.clock.now()).unwrap();
    verify(second, right).await.unwrap();
    let third = challenge().await;
    let err = verify(third, wrong()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "one wrong code after a success is not locked");
});

backend_test!(parallel_guesses_cannot_exceed_a_challenges_attempts, |stack| async move {
    let owner = stack.owner().await;
    let secret = stack.enrol_mfa(&owner.client).await;
    stack.clock.advance(Duration::from_secs(60));
    let auth = stack.client().await;
    let reply = auth
        .auth()
        .sign_in(SignInRequest {
            email: owner.email.clone(),
            password: PASSWORD.into(),
            organization: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(sign_in_response::Result::MfaChallenge(challenge)) = reply.result else {
        panic!("expected a challenge")
    };
    // Twelve wrong guesses at once: at most five may be judged, the rest find no attempt left
    // or a locked account; either way none succeeds and afterwards the challenge is dead.
    let guesses = (0..12).map(|i| {
        let auth = auth.clone();
        let challenge = challenge.challenge.clone();
        async move {
            auth.auth()
                .verify_mfa(VerifyMfaRequest {
                    challenge,
                    code: Some(verify_mfa_request::Code::TotpCode(format!("{:06}", 999_000 + i))),
                })
                .await
        }
    });
    for result in futures::future::join_all(guesses).await {
        let code = result.map(|_| ()).unwrap_err().code();
        assert!(matches!(code, Code::Unauthenticated | Code::ResourceExhausted), "{code:?}");
    }
    // Only the five reserved attempts were judged and counted (a 2 s lock; six or more would
    // lock for 4 s or longer), and the challenge has none left.
    stack.clock.advance(Duration::from_secs(3));
    let right = steward_auth::totp::code_at(&secret, stack.clock.now()).unwrap();
    let err = auth
        .auth()
        .verify_mfa(VerifyMfaRequest {
            challenge: challenge.challenge.clone(),
            code: Some(verify_mfa_request::Code::TotpCode(right)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
});

backend_test!(oversized_system_lists_are_refused, |stack| async move {
    let owner = stack.owner().await;
    let systems: Vec<String> = (0..1001).map(|i| format!("{}/systems/s{i}", owner.org)).collect();
    let err = owner
        .client
        .commands()
        .create_command(CreateCommandRequest {
            parent: owner.org.clone(),
            command: Some(steward_proto::commands::v1::Command {
                display_name: "Too wide".into(),
                script: "true".into(),
                interpreter: steward_proto::commands::v1::Interpreter::Sh as i32,
                target_systems: systems.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_error_details().bad_request().unwrap().field_violations[0].field,
        "command.target_systems"
    );
    let err = owner
        .client
        .commands()
        .run_command(RunCommandRequest {
            command: format!("{}/commands/whatever", owner.org),
            systems,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(err.get_error_details().bad_request().unwrap().field_violations[0].field, "systems");
});

fn new_command(parent: &str, display_name: &str) -> CreateCommandRequest {
    CreateCommandRequest {
        parent: parent.to_string(),
        command: Some(Command {
            display_name: display_name.into(),
            script: "true".into(),
            interpreter: Interpreter::Sh as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

backend_test!(demoted_or_deleted_administrators_old_token_is_refused, |stack| async move {
    let owner = stack.owner().await;
    let command = owner
        .client
        .commands()
        .create_command(new_command(&owner.org, "Report"))
        .await
        .unwrap()
        .into_inner()
        .command
        .unwrap()
        .name;
    let demoted = stack.member(&owner, Role::Administrator, false).await;
    let deleted = stack.member(&owner, Role::Administrator, false).await;
    // While they are Administrators, their tokens work.
    for member in [&demoted, &deleted] {
        member.client.commands().create_command(new_command(&owner.org, "Mine")).await.unwrap();
        member
            .client
            .admin()
            .list_administrators(ListAdministratorsRequest {
                parent: owner.org.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    owner
        .client
        .admin()
        .update_administrator(UpdateAdministratorRequest {
            administrator: Some(Administrator {
                name: demoted.name.clone(),
                role: Role::CommandRunner as i32,
                ..Default::default()
            }),
            update_mask: mask(&["role"]),
        })
        .await
        .unwrap();
    owner
        .client
        .admin()
        .batch_delete_administrators(BatchDeleteAdministratorsRequest {
            parent: owner.org.clone(),
            names: vec![deleted.name.clone()],
            validate_only: false,
        })
        .await
        .unwrap();

    // Their old tokens still claim ROLE_ADMINISTRATOR, but the service asks who they are now.
    for (member, mutation_reason, run_reason) in
        [(&demoted, "ROLE_REQUIRED", "NO_GRANT"), (&deleted, "CALLER_DELETED", "CALLER_DELETED")]
    {
        let err = member
            .client
            .commands()
            .create_command(new_command(&owner.org, "Backdoor"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(reason(&err), mutation_reason);
        let err = member
            .client
            .commands()
            .delete_command(DeleteCommandRequest { name: command.clone(), etag: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(reason(&err), mutation_reason);
        // A demoted Administrator runs as the Command Runner it now is: held to grants.
        let err = member
            .client
            .commands()
            .run_command(RunCommandRequest { command: command.clone(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(reason(&err), run_reason);
        // Reads too: the demoted one sees only what a Command Runner without grants sees; the
        // deleted one sees nothing.
        let listed = member
            .client
            .commands()
            .list_commands(steward_proto::commands::v1::ListCommandsRequest {
                parent: owner.org.clone(),
                ..Default::default()
            })
            .await;
        let got = member
            .client
            .commands()
            .get_command(steward_proto::commands::v1::GetCommandRequest { name: command.clone() })
            .await
            .unwrap_err();
        assert_eq!(got.code(), Code::PermissionDenied, "{got:?}");
        if member.name == demoted.name {
            assert!(listed.unwrap().into_inner().commands.is_empty());
            assert_eq!(reason(&got), "NO_GRANT");
        } else {
            assert_eq!(reason(&listed.unwrap_err()), "CALLER_DELETED");
            assert_eq!(reason(&got), "CALLER_DELETED");
        }
        // The admin service's reads ask too: no administrator list, no audit log.
        let admin_reads = [
            member
                .client
                .admin()
                .list_administrators(ListAdministratorsRequest {
                    parent: owner.org.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            member
                .client
                .admin()
                .get_administrator(GetAdministratorRequest { name: owner.admin.clone() })
                .await
                .map(|_| ()),
            member
                .client
                .audit()
                .list_audit_events(ListAuditEventsRequest {
                    parent: owner.org.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ];
        for err in admin_reads.into_iter().map(Result::unwrap_err) {
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
            assert_eq!(reason(&err), mutation_reason);
        }
        // And the command service's Administrator-only reads: systems, connect keys, grants.
        use steward_proto::commands::v1 as cmd;
        let commands_reads = [
            member
                .client
                .systems()
                .list_systems(cmd::ListSystemsRequest {
                    parent: owner.org.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            member
                .client
                .systems()
                .get_system(cmd::GetSystemRequest { name: format!("{}/systems/s1", owner.org) })
                .await
                .map(|_| ()),
            member
                .client
                .systems()
                .list_connect_keys(cmd::ListConnectKeysRequest {
                    parent: owner.org.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            member
                .client
                .commands()
                .list_grants(cmd::ListGrantsRequest {
                    parent: command.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ];
        for err in commands_reads.into_iter().map(Result::unwrap_err) {
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
            assert_eq!(reason(&err), mutation_reason);
        }
        // Access checks answer for the caller as it is now.
        let checked = member
            .client
            .commands()
            .check_access(cmd::CheckAccessRequest {
                command: command.clone(),
                action: cmd::Action::Run as i32,
                ..Default::default()
            })
            .await;
        if member.name == demoted.name {
            let decision = checked.unwrap().into_inner().decision.unwrap();
            assert_eq!(decision.reason, cmd::DecisionReason::NoGrant as i32);
        } else {
            assert_eq!(reason(&checked.unwrap_err()), "CALLER_DELETED");
        }
    }

    // Nothing was created or deleted, and the refusals reach the audit log.
    let backdoors = owner
        .client
        .commands()
        .list_commands(steward_proto::commands::v1::ListCommandsRequest {
            parent: owner.org.clone(),
            filter: "display_name = \"Backdoor\"".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .commands;
    assert!(backdoors.is_empty(), "{backdoors:?}");
    for member in [&demoted, &deleted] {
        let mut found = false;
        for _ in 0..100 {
            let events = owner
                .client
                .audit()
                .list_audit_events(ListAuditEventsRequest {
                    parent: owner.org.clone(),
                    filter: format!("actor = \"{}\" AND result = RESULT_DENIED", member.name),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .audit_events;
            if events.iter().any(|e| e.action.ends_with("/CreateCommand"))
                && events.iter().any(|e| e.action.ends_with("/RunCommand"))
            {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(found, "refusals of {} were not audited", member.name);
    }
});

backend_test!(audit_pages_neither_repeat_nor_skip_while_the_log_grows, |stack| async move {
    let owner = stack.owner().await;
    let mut internal = AdminInternalServiceClient::new(stack.internal().await);
    let actor = format!("{}/administrators/pager", owner.org);
    let base = stack.clock.now().timestamp() - 3600;
    let event = |id: String, seconds: i64| AuditEvent {
        name: format!("{}/auditEvents/{id}", owner.org),
        actor: actor.clone(),
        action: "/steward.test.v1.Pager/Step".into(),
        result: audit_event::Result::Allowed as i32,
        create_time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    };
    // Eleven events, pairs of them at the same second (the name breaks the tie).
    let original: Vec<AuditEvent> =
        (0..11).map(|i| event(format!("original-{i:02}"), base + i / 2)).collect();
    internal
        .record_audit_events(RecordAuditEventsRequest { events: original.clone() })
        .await
        .unwrap();

    let mut seen: Vec<String> = Vec::new();
    let mut token = String::new();
    let mut round = 0;
    loop {
        let page = owner
            .client
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                parent: owner.org.clone(),
                page_size: 3,
                page_token: token.clone(),
                filter: format!("actor = \"{actor}\""),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.audit_events.iter().map(|e| e.name.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // Between pages the log grows: new events on top, and a late arrival from another
        // service stamped in the middle of the range.
        round += 1;
        internal
            .record_audit_events(RecordAuditEventsRequest {
                events: vec![
                    event(format!("newer-{round}"), base + 100 + round),
                    event(format!("newer-{round}-b"), base + 100 + round),
                    event(format!("late-{round}"), base + 2),
                ],
            })
            .await
            .unwrap();
        assert!(round < 50, "paging never ended");
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "an event was served twice: {seen:?}");
    for e in &original {
        assert!(seen.contains(&e.name), "{} was skipped: {seen:?}", e.name);
    }
    // The originals come newest first, in the documented order.
    let originals: Vec<&String> = seen.iter().filter(|n| n.contains("/original-")).collect();
    let mut expected: Vec<&String> = original.iter().map(|e| &e.name).collect();
    expected.reverse();
    assert_eq!(originals, expected);

    // A token is bound to its filter.
    let first = owner
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: owner.org.clone(),
            page_size: 1,
            filter: format!("actor = \"{actor}\""),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let err = owner
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: owner.org.clone(),
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
});

/// Mail files (dev file mailer) addressed to `email`.
fn mails_to(stack: &crate::harness::Stack, email: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(stack.mail_dir()) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|body| body.contains(email)))
        .count()
}

async fn mails_settle(stack: &crate::harness::Stack, email: &str, expected: usize) -> usize {
    let mut count = 0;
    for _ in 0..100 {
        count = mails_to(stack, email);
        if count >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count
}

backend_test!(password_reset_requests_are_throttled_per_email, |stack| async move {
    let owner = stack.owner().await;
    let auth = stack.client().await;
    let request =
        || RequestPasswordResetRequest { email: owner.email.clone(), organization: String::new() };
    let invites = mails_to(&stack, &owner.email);
    assert_eq!(invites, 1);
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(auth.auth().request_password_reset(request()).await.unwrap().into_inner());
    }
    assert_eq!(mails_settle(&stack, &owner.email, invites + 3).await, invites + 3);
    // The fourth within the hour answers the same and sends nothing.
    answers.push(auth.auth().request_password_reset(request()).await.unwrap().into_inner());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mails_to(&stack, &owner.email), invites + 3, "a throttled request sent mail");
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    // The newest link still works.
    let token = stack.wait_for_token(&owner.email).await;
    auth.auth()
        .reset_password(steward_proto::auth::v1::ResetPasswordRequest {
            token,
            new_password: "another horse battery staple 43?".into(),
        })
        .await
        .unwrap();
    // An hour later, the email may ask again.
    stack.clock.advance(Duration::from_secs(3601));
    auth.auth().request_password_reset(request()).await.unwrap();
    assert_eq!(mails_settle(&stack, &owner.email, invites + 4).await, invites + 4);
});

// A stolen access token cannot take over billing or someone's second factor: changing the card,
// granting billing and resetting MFA need a sign-in within five minutes, and refreshing the
// session does not renew it.
backend_test!(billing_and_mfa_changes_need_a_recent_sign_in, |stack| async move {
    use steward_proto::admin::v1::ResetAdministratorMfaRequest;
    use steward_proto::auth::v1::RefreshSessionRequest;
    use steward_proto::billing::v1::{PaymentCard, UpdatePaymentCardRequest};
    let owner = stack.owner().await;
    let member = stack.member(&owner, Role::CommandRunner, false).await;
    let year = stack.clock.now().format("%Y").to_string().parse::<i32>().unwrap();
    let card = || UpdatePaymentCardRequest {
        payment_card: Some(PaymentCard {
            name: format!("{}/paymentCard", owner.org),
            card_number: "4242 4242 4242 4242".into(),
            cvc: "913".into(),
            exp_month: 12,
            exp_year: year + 2,
            cardholder_name: "Ada Lovelace".into(),
            ..Default::default()
        }),
        update_mask: None,
    };
    let grant_billing = || CreateAdministratorRequest {
        parent: owner.org.clone(),
        administrator: Some(Administrator {
            email: format!("thief-{}@example.com", uuid::Uuid::new_v4().simple()),
            role: Role::Administrator as i32,
            billing: true,
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let reset = || ResetAdministratorMfaRequest { name: member.name.clone() };
    // Six minutes after signing in, the (still valid) token is not enough.
    stack.clock.advance(Duration::from_secs(6 * 60));
    let client = &owner.client;
    let refusals = [
        client.billing().update_payment_card(card()).await.map(|_| ()),
        client.admin().create_administrator(grant_billing()).await.map(|_| ()),
        client.admin().reset_administrator_mfa(reset()).await.map(|_| ()),
    ];
    for err in refusals.into_iter().map(Result::unwrap_err) {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(reason(&err), "RECENT_AUTHENTICATION_REQUIRED");
    }
    // A refreshed token keeps the sign-in's time.
    let refreshed = stack
        .client()
        .await
        .auth()
        .refresh_session(RefreshSessionRequest {
            refresh_token: owner.tokens.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let refreshed = stack.client().await.with_token(&refreshed.access_token).unwrap();
    let err = refreshed.billing().update_payment_card(card()).await.unwrap_err();
    assert_eq!(reason(&err), "RECENT_AUTHENTICATION_REQUIRED");
    // Signing in again (password, and second factor if enrolled) allows all three.
    let tokens = stack.sign_in(&owner.email, PASSWORD).await;
    let fresh = stack.client().await.with_token(&tokens.access_token).unwrap();
    fresh.billing().update_payment_card(card()).await.unwrap();
    fresh.admin().create_administrator(grant_billing()).await.unwrap();
    fresh.admin().reset_administrator_mfa(reset()).await.unwrap();
});
