//! The mail relay's delivery, on its own outbox rows: a message older than a link's lifetime,
//! or an invite a newer invite replaced, is dropped without issuing a link; a current one is
//! delivered with the link derived from its own outbox key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod support;

use chrono::Duration;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use steward_auth::entity::{credential, link_token};
use steward_auth::mail_queue::{self, InviteMail, OUTBOX};
use steward_auth::secrets::digest;

#[tokio::test]
async fn stale_or_replaced_invites_are_dropped_and_the_current_one_is_sent() {
    let h = support::harness().await;
    let db = &h.state.db;
    let now = h.state.now();
    let administrator = "organizations/o/administrators/a";
    // Invited (no password yet): `a` last now, `b` 200 hours ago.
    for (who, invited) in
        [(administrator, now), ("organizations/o/administrators/b", now - Duration::hours(200))]
    {
        credential::ActiveModel {
            administrator: Set(who.into()),
            organization: Set("organizations/o".into()),
            organization_display_name: Set("Acme".into()),
            email: Set("ada@example.com".into()),
            password_hash: Set(None),
            activated_at: Set(None),
            mfa_secret: Set(None),
            mfa_enrolled: Set(false),
            mfa_pending_secret: Set(None),
            mfa_pending_expires_at: Set(None),
            mfa_last_step: Set(None),
            created_at: Set(now - Duration::hours(200)),
            updated_at: Set(invited),
        }
        .insert(db)
        .await
        .unwrap();
    }
    let mail = InviteMail {
        administrator: administrator.into(),
        organization: "organizations/o".into(),
        email: "ada@example.com".into(),
        organization_display_name: "Acme".into(),
        inviter_email: String::new(),
    };
    // `b`'s only invite, queued longer ago than a link lives (72 hours); for `a`, one queued
    // before its newer invite, and the current one.
    let stale =
        InviteMail { administrator: "organizations/o/administrators/b".into(), ..mail.clone() };
    mail_queue::queue_invite(db, &stale, now - Duration::hours(100)).await.unwrap();
    for queued in [now - Duration::hours(1), now] {
        mail_queue::queue_invite(db, &mail, queued).await.unwrap();
    }
    let messages = OUTBOX.due(db, now).await.unwrap();
    assert_eq!(messages.len(), 3);
    // The current one first: a stale message sent after it would replace its link.
    let deliver = mail_queue::deliver(h.state.clone());
    for message in messages.iter().rev() {
        deliver(message.clone()).await.unwrap();
    }
    let links = link_token::Entity::find().all(db).await.unwrap();
    let current = h.state.sealer.mail_link(&messages[2].idempotency_key);
    let issued: Vec<&str> = links.iter().map(|l| l.token_hash.as_str()).collect();
    assert_eq!(issued, [digest(&current).as_str()], "only the current invite's link, none for b");
}
