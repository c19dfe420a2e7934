//! The cleanup pass removes what can no longer matter and keeps what still can.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

mod support;

use chrono::{Duration, Utc};
use sea_orm::{EntityTrait, PaginatorTrait, Set};
use steward_auth::entity::{link_token, refresh_token, session};

fn session_row(
    id: &str,
    expires: chrono::DateTime<Utc>,
    revoked: Option<chrono::DateTime<Utc>>,
) -> session::ActiveModel {
    session::ActiveModel {
        id: Set(id.into()),
        administrator: Set("organizations/o/administrators/a".into()),
        organization: Set("organizations/o".into()),
        amr: Set("pwd".into()),
        scope: Set("full".into()),
        created_at: Set(expires - Duration::days(30)),
        expires_at: Set(expires),
        revoked_at: Set(revoked),
        refresh_family: Set(Some(format!("family-{id}"))),
        refresh_hash: Set(None),
    }
}

#[tokio::test]
async fn sweeps_expired_and_revoked_rows_only() {
    let h = support::harness().await;
    let db = &h.state.db;
    let now = Utc::now();
    session::Entity::insert_many([
        session_row("live", now + Duration::days(1), None),
        session_row("expired", now - Duration::days(2), None),
        session_row("revoked-long-ago", now + Duration::days(9), Some(now - Duration::days(2))),
        session_row("revoked-just-now", now + Duration::days(9), Some(now)),
    ])
    .exec(db)
    .await
    .unwrap();
    for (hash, sid) in [("r1", "live"), ("r2", "expired"), ("r3", "revoked-long-ago")] {
        refresh_token::Entity::insert(refresh_token::ActiveModel {
            token_hash: Set(hash.into()),
            session_id: Set(sid.into()),
            used_at: Set(None),
            created_at: Set(now),
        })
        .exec(db)
        .await
        .unwrap();
    }
    for (hash, expires) in [("l1", now + Duration::hours(1)), ("l2", now - Duration::days(3))] {
        link_token::Entity::insert(link_token::ActiveModel {
            token_hash: Set(hash.into()),
            administrator: Set("organizations/o/administrators/a".into()),
            organization: Set("organizations/o".into()),
            kind: Set("invite".into()),
            expires_at: Set(expires),
            used_at: Set(None),
            created_at: Set(now - Duration::days(4)),
        })
        .exec(db)
        .await
        .unwrap();
    }

    let removed = steward_auth::janitor::sweep(db, now).await.unwrap();
    assert_eq!(removed, 5, "two sessions, their two refresh tokens, one link");
    let mut left: Vec<String> =
        session::Entity::find().all(db).await.unwrap().into_iter().map(|s| s.id).collect();
    left.sort();
    assert_eq!(left, vec!["live", "revoked-just-now"]);
    assert_eq!(refresh_token::Entity::find().count(db).await.unwrap(), 1);
    assert!(link_token::Entity::find_by_id("l1".to_string()).one(db).await.unwrap().is_some());
    assert_eq!(steward_auth::janitor::sweep(db, now).await.unwrap(), 0);
}

// A mail message's link (derived from its outbox key) is issued once with one expiry; a
// redelivery issues it again unchanged, and a message retried after its link was used or
// expired issues nothing. The used row outlives a day past its use, so it is still there to
// say so (before, the janitor removed used links a day after use and a retry revived the link).
#[tokio::test]
async fn a_spent_mail_link_is_never_issued_again() {
    use steward_auth::secrets::digest;
    use steward_auth::state::{issue_link, use_link};
    let h = support::harness().await;
    let db = &h.state.db;
    let now = Utc::now();
    let a = ("organizations/o/administrators/a", "organizations/o", "reset");
    let token = h.state.sealer.mail_link("message-1");
    assert!(issue_link(db, &token, a, now, now + Duration::hours(72)).await.unwrap());
    let first = link_token::Entity::find_by_id(digest(&token)).one(db).await.unwrap().unwrap();
    let later = now + Duration::hours(1);
    assert!(issue_link(db, &token, a, later, later + Duration::hours(72)).await.unwrap());
    let again = link_token::Entity::find_by_id(digest(&token)).one(db).await.unwrap().unwrap();
    assert_eq!(again.expires_at, first.expires_at, "a redelivery does not extend the link");
    assert!(use_link(db, &digest(&token), now + Duration::hours(2)).await.unwrap());

    // Two days after its use, before its expiry: kept by the janitor, and not issued again.
    let then = now + Duration::hours(50);
    steward_auth::janitor::sweep(db, then).await.unwrap();
    assert!(link_token::Entity::find_by_id(digest(&token)).one(db).await.unwrap().is_some());
    assert!(!issue_link(db, &token, a, then, then + Duration::hours(72)).await.unwrap());

    // Expired unused: not issued again either.
    let b = ("organizations/o/administrators/b", "organizations/o", "invite");
    let other = h.state.sealer.mail_link("message-2");
    assert!(issue_link(db, &other, b, now, now + Duration::hours(1)).await.unwrap());
    assert!(!issue_link(db, &other, b, now + Duration::hours(2), then).await.unwrap());
}
