//! Concurrent calls share statements (`steward_runtime::coalesce`) and never read stale data:
//! GetAdministrator calls in flight together read their rows in fewer statements than calls,
//! yet each sees every write that returned before it; pages of ListAdministrators remembered at
//! an organization revision are read again after any write; concurrent RefreshSession calls
//! commit their rotations together, and a token presented by several at once rotates once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use steward_proto::admin::v1::{
    GetAdministratorRequest, GetProfileRequest, ListAdministratorsRequest, UpdateProfileRequest,
};
use steward_proto::auth::v1::RefreshSessionRequest;
use steward_proto::client::Steward;
use steward_server::ServiceKind;
use tonic::Code;

use crate::harness::{Owner, Stack, PASSWORD};

async fn whats_new(client: &Steward, name: &str) -> bool {
    let request = GetAdministratorRequest { name: name.to_string() };
    let got = client.admin().get_administrator(request).await.unwrap().into_inner();
    got.administrator.unwrap().whats_new
}

async fn whats_new_in_page(owner: &Owner) -> bool {
    let request = ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() };
    let page = owner.client.admin().list_administrators(request).await.unwrap().into_inner();
    page.administrators.into_iter().find(|a| a.name == owner.admin).unwrap().whats_new
}

async fn set_whats_new(owner: &Owner, value: bool) {
    let request = UpdateProfileRequest {
        whats_new: value,
        update_mask: Some(prost_types::FieldMask { paths: vec!["whats_new".into()] }),
    };
    owner.client.admin().update_profile(request).await.unwrap();
}

// Two hundred GetAdministrator calls at once run far fewer statements than two hundred reads.
// While sixteen readers keep loads of the row running all the time, every read made after a
// write returned shows it, by GetAdministrator and in a page of ListAdministrators (a call
// that joined a load started before it, or a page reused across the write, would not).
backend_test!(concurrent_reads_share_statements_and_see_every_write, |stack| async move {
    let owner = stack.owner().await;
    let client = owner.client.clone();
    whats_new(&client, &owner.admin).await;
    let before = stack.statements(ServiceKind::Admin);
    let reads = (0..200).map(|_| whats_new(&client, &owner.admin));
    join_all(reads).await;
    let ran = stack.statements(ServiceKind::Admin) - before;
    assert!(ran < 150, "{ran} statements for 200 concurrent reads: none were shared");

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (client, name, stop) = (client.clone(), owner.admin.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    whats_new(&client, &name).await;
                }
            })
        })
        .collect();
    for round in 0..12 {
        let value = round % 2 == 0;
        whats_new_in_page(&owner).await;
        set_whats_new(&owner, value).await;
        assert_eq!(whats_new(&client, &owner.admin).await, value, "round {round}: a stale read");
        assert_eq!(whats_new_in_page(&owner).await, value, "round {round}: a stale page");
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
});

async fn refresh(stack: &Stack, token: &str) -> Result<String, tonic::Status> {
    let request = RefreshSessionRequest { refresh_token: token.to_string() };
    let tokens = stack.client().await.auth().refresh_session(request).await?.into_inner();
    Ok(tokens.tokens.unwrap().refresh_token)
}

// Twelve calls presenting one refresh token at once: exactly one rotates it; the others are
// reuse, which ends the session, so the winner's new token is refused too.
backend_test!(a_token_presented_by_concurrent_refreshes_rotates_once, |stack| async move {
    let owner = stack.owner().await;
    let token = owner.tokens.refresh_token.clone();
    let answers = join_all((0..12).map(|_| refresh(&stack, &token))).await;
    let rotated: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    assert_eq!(rotated.len(), 1, "{answers:?}");
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    let after = refresh(&stack, rotated[0]).await.unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "the session outlived a reused token");
});

// Sessions refreshed all at once, three times over: every rotation commits (each new token
// works on the next round, each old one is spent), whatever batch it shared.
backend_test!(concurrent_refreshes_of_many_sessions_all_rotate, |stack| async move {
    let owner = stack.owner().await;
    let mut tokens = vec![owner.tokens.refresh_token.clone()];
    for _ in 0..5 {
        tokens.push(stack.sign_in(&owner.email, PASSWORD).await.refresh_token);
    }
    let spent = tokens[0].clone();
    for round in 0..3 {
        let answers = join_all(tokens.iter().map(|t| refresh(&stack, t))).await;
        tokens = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|e| panic!("round {round}: {e:?}")))
            .collect();
    }
    // The sessions are live: a spent token of the first still ends it.
    let reused = refresh(&stack, &spent).await.unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert_eq!(refresh(&stack, &tokens[0]).await.unwrap_err().code(), Code::Unauthenticated);
    refresh(&stack, &tokens[1]).await.unwrap();
    owner.client.admin().get_profile(GetProfileRequest {}).await.unwrap();
});
