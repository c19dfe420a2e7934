//! Throttles under parallel bursts: every throttle reserves before it evaluates, so a burst of
//! concurrent guesses, spread over two replicas sharing the database, evaluates at most the free
//! allowance and refuses the rest with RESOURCE_EXHAUSTED before any password is hashed.

use futures::future::join_all;
use steward_auth::throttle::{ACCOUNT, LINK_ADDRESS, RESET_EMAIL};
use steward_proto::auth::v1::{
    sign_in_response, verify_mfa_request, AcceptInviteRequest, RequestPasswordResetRequest,
    SignInRequest, VerifyMfaRequest,
};
use steward_proto::client::Steward;
use steward_server::ServiceKind;
use tonic::Code;

use crate::harness::{Stack, PASSWORD};

const BURST: usize = 100;

/// (evaluated, refused) of a burst's outcomes: UNAUTHENTICATED means the guess was checked,
/// RESOURCE_EXHAUSTED that the throttle refused it first. Anything else fails the test.
fn tally<T>(results: &[Result<T, tonic::Status>]) -> (usize, usize) {
    let mut evaluated = 0;
    let mut refused = 0;
    for result in results {
        match result {
            Err(status) if status.code() == Code::Unauthenticated => evaluated += 1,
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => panic!("unexpected answer in a burst: {status:?}"),
            Ok(_) => panic!("a wrong guess was accepted"),
        }
    }
    (evaluated, refused)
}

/// Anonymous clients of the stack and of a second replica, alternated by the bursts.
async fn two_replicas(stack: &mut Stack) -> [Steward; 2] {
    let second = stack.add_replica().await;
    [stack.client_for(ServiceKind::Auth).await, stack.client_at(&second).await]
}

backend_test!(parallel_wrong_passwords_evaluate_only_the_allowance, |stack| async move {
    let mut stack = stack;
    let admin = stack.owner().await;
    // The victim has a password but never signed in from this address (an address it signed in
    // from has an allowance of its own while the account is locked).
    let email = format!("victim-{}@example.com", uuid::Uuid::new_v4().simple());
    admin
        .client
        .admin()
        .create_administrator(steward_proto::admin::v1::CreateAdministratorRequest {
            parent: admin.org.clone(),
            administrator: Some(steward_proto::admin::v1::Administrator {
                email: email.clone(),
                role: steward_proto::admin::v1::Role::Administrator as i32,
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap();
    let token = stack.wait_for_token(&email).await;
    let accept = AcceptInviteRequest { token, password: PASSWORD.into() };
    stack.client().await.auth().accept_invite(accept).await.unwrap();
    struct Victim {
        email: String,
    }
    let owner = Victim { email };
    let clients = two_replicas(&mut stack).await;
    let guesses = (0..BURST).map(|i| {
        let mut auth = clients[i % 2].auth();
        let request = SignInRequest {
            email: owner.email.clone(),
            password: format!("wrong guess {i}"),
            organization: String::new(),
        };
        async move { auth.sign_in(request).await }
    });
    let results = join_all(guesses).await;
    let (evaluated, refused) = tally(&results);
    assert!(
        evaluated <= ACCOUNT.free_failures as usize,
        "{evaluated} of {BURST} parallel guesses were evaluated (allowance {})",
        ACCOUNT.free_failures
    );
    assert!(evaluated >= 1, "at least one guess is checked");
    assert_eq!(evaluated + refused, BURST);
    // The account is locked now, for the correct password too, until the lock passes.
    let correct = SignInRequest {
        email: owner.email.clone(),
        password: PASSWORD.into(),
        organization: String::new(),
    };
    let status = clients[0].auth().sign_in(correct.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    stack.clock.advance(std::time::Duration::from_secs(901));
    let reply = clients[1].auth().sign_in(correct).await.unwrap().into_inner();
    assert!(matches!(reply.result, Some(sign_in_response::Result::Tokens(_))));
});

backend_test!(parallel_wrong_codes_evaluate_only_the_allowance, |stack| async move {
    let mut stack = stack;
    let owner = stack.owner().await;
    let secret = stack.enrol_mfa(&owner.client).await;
    let clients = two_replicas(&mut stack).await;
    // Several challenges (the open ones are capped), then a burst of wrong codes over all of them.
    let mut challenges = Vec::new();
    for _ in 0..5 {
        let reply = clients[0]
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
            Some(sign_in_response::Result::MfaChallenge(c)) => challenges.push(c.challenge),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }
    // The three newest are open (older ones were closed when newer ones were issued).
    let open = &challenges[2..];
    let guesses = (0..BURST).map(|i| {
        let mut auth = clients[i % 2].auth();
        let request = VerifyMfaRequest {
            challenge: open[i % open.len()].clone(),
            code: Some(verify_mfa_request::Code::TotpCode(format!("{:06}", i * 7919 % 1_000_000))),
        };
        async move { auth.verify_mfa(request).await }
    });
    let results = join_all(guesses).await;
    // A guess that happened to be right would be Ok; with 100 of 10^6 it is unlikely but legal.
    let results: Vec<_> = results.into_iter().filter(|r| r.is_err()).collect();
    let (evaluated, refused) = tally(&results);
    assert!(
        evaluated <= ACCOUNT.free_failures as usize,
        "{evaluated} of {BURST} parallel codes were evaluated"
    );
    assert_eq!(evaluated + refused, results.len());
    // A closed challenge is refused even with the right code, once the throttle allows a try.
    stack.clock.advance(std::time::Duration::from_secs(901));
    let code = steward_auth::totp::code_at(&secret, stack.clock.now()).unwrap();
    let closed = clients[0]
        .auth()
        .verify_mfa(VerifyMfaRequest {
            challenge: challenges[0].clone(),
            code: Some(verify_mfa_request::Code::TotpCode(code)),
        })
        .await
        .unwrap_err();
    assert_eq!(closed.code(), Code::Unauthenticated, "{closed:?}");
});

backend_test!(parallel_reset_requests_send_only_the_allowance, |stack| async move {
    let mut stack = stack;
    let owner = stack.owner().await;
    let clients = two_replicas(&mut stack).await;
    let requests = (0..BURST).map(|i| {
        let mut auth = clients[i % 2].auth();
        let request =
            RequestPasswordResetRequest { email: owner.email.clone(), organization: String::new() };
        async move { auth.request_password_reset(request).await }
    });
    for result in join_all(requests).await {
        // Throttled or not, the answer is the same (it says nothing about the email).
        result.unwrap();
    }
    // The invite plus at most RESET_EMAIL.free_failures resets are mailed.
    let expected = 1 + RESET_EMAIL.free_failures as usize;
    for _ in 0..100 {
        if mails_to(&stack, &owner.email) >= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sent = mails_to(&stack, &owner.email);
    assert!(sent > 1, "some reset mail was sent");
    assert!(sent <= expected, "{sent} mails for {BURST} parallel reset requests");
});

backend_test!(parallel_invalid_links_evaluate_only_the_allowance, |stack| async move {
    let mut stack = stack;
    let clients = two_replicas(&mut stack).await;
    let attempts = (0..BURST).map(|i| {
        let mut auth = clients[i % 2].auth();
        let request = AcceptInviteRequest {
            token: format!("not-a-real-token-{i}"),
            password: PASSWORD.into(),
        };
        async move { auth.accept_invite(request).await }
    });
    let results = join_all(attempts).await;
    let (evaluated, refused) = tally(&results);
    assert!(evaluated <= LINK_ADDRESS.free_failures as usize, "{evaluated} links evaluated");
    assert!(refused >= BURST - LINK_ADDRESS.free_failures as usize);
});

fn mails_to(stack: &Stack, email: &str) -> usize {
    std::fs::read_dir(stack.mail_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .filter(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|t| t.contains(&format!("To: {email}")))
                })
                .count()
        })
        .unwrap_or(0)
}
