//! The Rust SDK (`steward_proto::client::Steward`) against a real server, as the Python and
//! TypeScript SDKs are tested: a session outlives its access tokens (renewed ahead of expiry,
//! one renewal at a time), a refused token is renewed and the call retried, lists stream every
//! page, and idempotent calls (only those) are retried through a TCP proxy that resets the
//! first connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, GetProfileRequest, ListAdministratorsRequest,
};
use steward_proto::client::{paginate, RetryPolicy, Steward};
use steward_proto::commands::v1::WatchRunRequest;
use steward_runtime::config::Config;
use steward_server::ServiceKind;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

use crate::harness::{Stack, PASSWORD};

/// The access tokens' lifetime: the stack's clock is advanced past it, never waited for.
const TTL: u64 = 60;

/// Short access tokens and no leeway, so that an expired token is refused at once.
fn short_tokens(config: &mut Config) {
    config.auth.access_token_ttl_secs = TTL;
    config.auth.leeway_secs = 0;
}

/// A client on the stack's clock (which the server follows), signed in as `email`.
async fn signed_in(stack: &Stack, email: &str) -> Steward {
    let clock = stack.clock.clone();
    let client = stack.client().await.with_clock(move || SystemTime::from(clock.now()));
    client.sign_in(email, PASSWORD, "").await.unwrap();
    client
}

fn list(org: &str) -> ListAdministratorsRequest {
    ListAdministratorsRequest { parent: org.to_string(), ..Default::default() }
}

backend_test!(
    a_session_outlives_its_access_tokens,
    start = |backend| Stack::start_with(backend, short_tokens),
    |stack| async move {
        let owner = stack.owner().await;
        let client = signed_in(&stack, &owner.email).await;
        assert!(client.has_refresh_token() && !client.uses_api_key());
        let expiry = client.access_token_expire_time().unwrap();
        let lifetime = expiry.duration_since(SystemTime::from(stack.clock.now())).unwrap();
        assert!(lifetime <= Duration::from_secs(TTL), "{lifetime:?}");

        let first = client.access_token().unwrap();
        let mut tokens = vec![first.clone()];
        for step in 0..5 {
            // Two thirds of a lifetime on: within the renewal margin, not expired yet. The
            // token sent would still be accepted; only renewing ahead changes it.
            stack.clock.advance(Duration::from_secs(TTL * 2 / 3));
            client.admin().get_profile(GetProfileRequest {}).await.unwrap();
            client.admin().list_administrators(list(&owner.org)).await.unwrap();
            let token = client.access_token().unwrap();
            assert_ne!(Some(&token), tokens.last(), "step {step}: renewed before expiry");
            tokens.push(token);
        }
        // The first token has long expired: the server refuses it.
        let stale = stack.client().await.with_token(&first).unwrap();
        let refused = stale.admin().get_profile(GetProfileRequest {}).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);

        // Concurrent calls due for renewal share one: the refresh token is single-use, and a
        // second RefreshSession with it would be taken as reuse and end the session.
        stack.clock.advance(Duration::from_secs(TTL * 2 / 3));
        let calls = (0..8).map(|_| {
            let client = client.clone();
            async move { client.admin().get_profile(GetProfileRequest {}).await }
        });
        for answer in futures::future::join_all(calls).await {
            answer.unwrap();
        }
        // Past every token issued so far: the session must still renew.
        stack.clock.advance(Duration::from_secs(TTL * 2));
        client.admin().get_profile(GetProfileRequest {}).await.unwrap();
    }
);

backend_test!(
    an_api_key_session_is_renewed_with_the_key,
    start = |backend| Stack::start_with(backend, short_tokens),
    |stack| async move {
        use crate::service_accounts::{create_account, create_key};
        let owner = stack.owner().await;
        let account = create_account(&owner.client, &owner.org, "roles/read-only", false);
        let account = account.await.unwrap();
        let (_, api_key) = create_key(&stack, &owner.client, &account.name, 30).await.unwrap();
        let clock = stack.clock.clone();
        let client = stack.client().await.with_clock(move || SystemTime::from(clock.now()));
        client.sign_in_with_api_key(&api_key).await.unwrap();
        assert!(client.uses_api_key() && !client.has_refresh_token());
        let mut token = client.access_token().unwrap();
        for step in 0..3 {
            stack.clock.advance(Duration::from_secs(TTL * 2 / 3));
            client.admin().list_administrators(list(&owner.org)).await.unwrap();
            let renewed = client.access_token().unwrap();
            assert_ne!(renewed, token, "step {step}: exchanged again before expiry");
            token = renewed;
        }
        // A refused key changes nothing: the client keeps acting as the account.
        let refused = client.sign_in_with_api_key("stw_not_a_key").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(client.uses_api_key() && client.access_token().unwrap() == token);
    }
);

backend_test!(
    a_refused_token_is_renewed_and_the_call_retried_once,
    start = |backend| Stack::start_with(backend, short_tokens),
    |stack| async move {
        let owner = stack.owner().await;
        let clock = stack.clock.clone();
        let client = stack.client().await.with_clock(move || SystemTime::from(clock.now()));
        // Blind to its token's expiry, the client cannot renew ahead: only the refusal tells.
        let blind = |mut tokens: steward_proto::auth::v1::TokenSet| {
            tokens.access_token_expire_time = None;
            tokens
        };
        let tokens = blind(stack.sign_in(&owner.email, PASSWORD).await);
        client.set_tokens(&tokens).unwrap();
        assert!(client.access_token_expire_time().is_none());
        stack.clock.advance(Duration::from_secs(TTL * 2));
        client.admin().get_profile(GetProfileRequest {}).await.unwrap();
        assert_ne!(client.access_token().unwrap(), tokens.access_token, "renewed once refused");

        // A stream too (one request message): renewed and retried, the run is then unknown.
        let tokens = blind(stack.sign_in(&owner.email, PASSWORD).await);
        client.set_tokens(&tokens).unwrap();
        stack.clock.advance(Duration::from_secs(TTL * 2));
        let run = format!("{}/runs/{}", owner.org, uuid::Uuid::new_v4());
        let code = match client.commands().watch_run(WatchRunRequest { name: run }).await {
            Err(status) => status.code(),
            Ok(stream) => stream.into_inner().message().await.err().map_or(Code::Ok, |s| s.code()),
        };
        assert_ne!(code, Code::Unauthenticated);
        assert_ne!(client.access_token().unwrap(), tokens.access_token);

        // Without a refresh token (a token set by hand) the refusal is the caller's.
        let expired = client.access_token().unwrap();
        stack.clock.advance(Duration::from_secs(TTL * 2));
        let bare = stack.client().await.with_token(&expired).unwrap();
        let refused = bare.admin().get_profile(GetProfileRequest {}).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        // Nor is a session whose refresh token was revoked (signed out) renewed: refused once.
        let tokens = blind(stack.sign_in(&owner.email, PASSWORD).await);
        client.set_tokens(&tokens).unwrap();
        let signed_out = stack.client().await.with_token(&tokens.access_token).unwrap();
        signed_out.auth().sign_out(steward_proto::auth::v1::SignOutRequest {}).await.unwrap();
        stack.clock.advance(Duration::from_secs(TTL * 2));
        let refused = client.admin().get_profile(GetProfileRequest {}).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert_eq!(client.access_token().unwrap(), tokens.access_token);
    }
);

backend_test!(lists_are_streamed_over_every_page, |stack| async move {
    let owner = stack.owner().await;
    let client = signed_in(&stack, &owner.email).await;
    let mut emails = Vec::new();
    for i in 0..12 {
        let email = format!("pager-{i:02}-{}@example.com", uuid::Uuid::new_v4().simple());
        let request = CreateAdministratorRequest {
            parent: owner.org.clone(),
            administrator: Some(Administrator {
                email: email.clone(),
                role_name: "roles/read-only".into(),
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        client.admin().create_administrator(request).await.unwrap();
        emails.push(email);
    }

    let request = ListAdministratorsRequest { page_size: 5, ..list(&owner.org) };
    let listed: Vec<String> = client
        .administrators()
        .list_all(request.clone())
        .map_ok(|a| a.email)
        .try_collect()
        .await
        .unwrap();
    let pagers: Vec<&String> = listed.iter().filter(|e| e.starts_with("pager-")).collect();
    assert_eq!(pagers, emails.iter().collect::<Vec<_>>());
    assert!(listed.contains(&owner.email) && listed.len() == emails.len() + 1, "{listed:?}");

    // The generic form fetches each page as the stream reaches it.
    let pages = Arc::new(Mutex::new(Vec::new()));
    let seen = pages.clone();
    let listed: Vec<_> = paginate(request, |page: ListAdministratorsRequest| {
        seen.lock().unwrap().push(page.page_token.clone());
        let mut admin = client.admin();
        async move { admin.list_administrators(page).await }
    })
    .try_collect()
    .await
    .unwrap();
    assert_eq!(listed.len(), emails.len() + 1);
    let pages = pages.lock().unwrap().clone();
    assert!(pages.len() == 3 && pages[0].is_empty() && pages[1..].iter().all(|t| !t.is_empty()));

    // Another filter and page size.
    let request = ListAdministratorsRequest {
        page_size: 4,
        filter: "role = ROLE_READ_ONLY".into(),
        ..list(&owner.org)
    };
    let mut read_only: Vec<String> =
        client.administrators().list_all(request).map_ok(|a| a.email).try_collect().await.unwrap();
    read_only.sort();
    assert_eq!(read_only, emails);
});

/// A TCP proxy in front of the server whose next `refuse` connections are reset at once.
struct FlakyProxy {
    url: String,
    refuse: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let refuse = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (to_refuse, counted) = (refuse.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let take = |n: usize| n.checked_sub(1);
                if to_refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, take).is_ok() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.set_zero_linger();
                    drop(conn); // RST
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut server).await;
                    }
                });
            }
        });
        Self { url, refuse, refused, task }
    }

    /// Resets the next `n` connections; counts from zero again.
    fn reset_next(&self, n: usize) {
        self.refuse.store(n, Ordering::SeqCst);
        self.refused.store(0, Ordering::SeqCst);
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// A client on a new connection through the proxy, acting with `token`.
    fn client(&self, stack: &Stack, token: &str) -> Steward {
        let client = Steward::from_channel(stack.endpoint(&self.url).connect_lazy());
        client.set_access_token(Some(token)).unwrap();
        client
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

backend_test!(idempotent_calls_are_retried_when_unavailable, |stack| async move {
    let owner = stack.owner().await;
    let upstream = stack.url(ServiceKind::Admin).trim_start_matches("http://").parse().unwrap();
    let proxy = FlakyProxy::start(upstream).await;
    let token = &owner.tokens.access_token;

    // The first two connections are reset: UNAVAILABLE twice, then the list is answered.
    proxy.reset_next(2);
    let client = proxy.client(&stack, token);
    let listed = client.admin().list_administrators(list(&owner.org)).await.unwrap();
    assert_eq!(listed.into_inner().administrators.len(), 1);
    assert_eq!(proxy.refused(), 2);

    // Without retries, the same outage fails the call.
    proxy.reset_next(2);
    let client = proxy.client(&stack, token).with_retry_policy(None).unwrap();
    let failed = client.admin().list_administrators(list(&owner.org)).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert_eq!(proxy.refused(), 1);

    // A call with side effects is never retried.
    proxy.reset_next(2);
    let client = proxy.client(&stack, token);
    let request = CreateAdministratorRequest {
        parent: owner.org.clone(),
        administrator: Some(Administrator {
            email: "never@example.com".into(),
            role_name: "roles/read-only".into(),
            ..Default::default()
        }),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let failed = client.admin().create_administrator(request).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert_eq!(proxy.refused(), 1, "CreateAdministrator is not retried");
    let listed = owner.client.admin().list_administrators(list(&owner.org)).await.unwrap();
    assert!(listed.into_inner().administrators.iter().all(|a| a.email != "never@example.com"));

    // Retries stop at the call's deadline, however many attempts the policy allows.
    proxy.reset_next(usize::MAX);
    let patient = RetryPolicy {
        max_attempts: 100,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        jitter: 0.0,
    };
    let client = proxy.client(&stack, token).with_retry_policy(Some(patient)).unwrap();
    let mut request = tonic::Request::new(list(&owner.org));
    request.set_timeout(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let failed = client.admin().list_administrators(request).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?} for {failed:?}");
    assert!(proxy.refused() >= 3, "retried until the deadline: {}", proxy.refused());
});
