//! Invite and password-reset emails, queued in `auth_mail_outbox` and sent by its own relay.
//!
//! Queuing happens in the transaction of the change (IssueInvite) or of the throttled request
//! (RequestPasswordReset), so no SMTP conversation ever runs inside a transaction (on SQLite, the
//! write lock). The link itself is issued when the message is delivered, in a short transaction
//! committed before sending, so the outbox never holds a token in clear. A failed send is retried
//! with backoff: at-least-once delivery, one relay working through at most a batch at a time,
//! whatever the request rate. The relay claims each message for its lease before delivering it
//! (`steward_storage::outbox`), so replicas polling the same table never send one message at once.
//!
//! Every delivery of one message is the same message: its link is derived from the outbox key
//! (`Sealer::mail_link`) and its `Message-ID` too. SMTP cannot make a send exactly once (a relay
//! that dies after the server took the message, before it deleted the row, sends it again); the
//! copy is then identical, its link works like the first's, and mail stores that deduplicate by
//! `Message-ID` keep one. A message whose link was already used is not sent again.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use steward_runtime::{ApiError, ApiResult};
use steward_storage::outbox::{Deliver, Outbox, OutboxMessage};

use crate::entity::credential;
use crate::mailer::Invite;
use crate::state::{self, Shared, INVITE, RESET};

/// The mail outbox (separate from the audit outbox, so a mail outage never delays audit).
pub const OUTBOX: Outbox = Outbox::new("auth_mail_outbox");
/// Topic of an invite.
pub const INVITE_TOPIC: &str = "mail.invite";
/// Topic of a password-reset request.
pub const RESET_TOPIC: &str = "mail.reset";

/// An invite waiting to be sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InviteMail {
    /// The invited administrator.
    pub administrator: String,
    /// Its organization, `organizations/{o}`.
    pub organization: String,
    /// Recipient.
    pub email: String,
    /// The organization's display name.
    pub organization_display_name: String,
    /// Who invited (may be empty).
    pub inviter_email: String,
}

/// A password-reset request waiting to be served.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResetMail {
    /// The email as asked for (trimmed, lowercase).
    pub email: String,
    /// Restricts to one organization when not empty.
    pub organization: String,
}

async fn enqueue<C: ConnectionTrait, T: Serialize>(
    conn: &C,
    topic: &str,
    mail: &T,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let payload =
        serde_json::to_value(mail).map_err(|e| ApiError::internal(format!("mail payload: {e}")))?;
    let key = steward_runtime::names::new_id();
    OUTBOX.enqueue(conn, topic, &key, &payload, now).await?;
    Ok(())
}

/// Queues an invite on `conn` (the transaction issuing it).
pub async fn queue_invite<C: ConnectionTrait>(
    conn: &C,
    mail: &InviteMail,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    enqueue(conn, INVITE_TOPIC, mail, now).await
}

/// Queues a password-reset request on `conn`.
pub async fn queue_reset<C: ConnectionTrait>(
    conn: &C,
    mail: &ResetMail,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    enqueue(conn, RESET_TOPIC, mail, now).await
}

async fn send_invite(
    state: &Shared,
    mail: InviteMail,
    key: &str,
    queued: Option<DateTime<Utc>>,
) -> ApiResult<()> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let Some(current) = credential::Entity::find_by_id(mail.administrator.clone()).one(&tx).await?
    else {
        tracing::info!(administrator = %mail.administrator, "invite dropped: administrator deleted");
        return Ok(());
    };
    if queued.is_some_and(|queued| current.updated_at > queued) {
        // A newer invite (ResendInvite) replaced this one and has a message of its own.
        tracing::info!(administrator = %mail.administrator, "invite dropped: a newer invite replaced it");
        return Ok(());
    }
    if current.password_hash.is_some() {
        // Already active: an invite would let its link overwrite the password.
        tracing::info!(administrator = %mail.administrator, "invite dropped: already active");
        return Ok(());
    }
    let token = state.sealer.mail_link(key);
    let facts = (mail.administrator.as_str(), mail.organization.as_str(), INVITE);
    if !state::issue_link(&tx, &token, facts, now, state.link_expiry()).await? {
        tracing::info!(administrator = %mail.administrator, "invite dropped: its link was used");
        return Ok(());
    }
    tx.commit().await?;
    state
        .mailer
        .send_invite(&Invite {
            to: &mail.email,
            organization: &mail.organization_display_name,
            inviter: &mail.inviter_email,
            token: &token,
            valid_hours: state.link_hours(),
            mail_id: key,
        })
        .await?;
    tracing::info!(administrator = %mail.administrator, "invite sent");
    Ok(())
}

async fn send_resets(state: &Shared, mail: ResetMail, key: &str) -> ApiResult<()> {
    let mut query = credential::Entity::find()
        .filter(credential::Column::Email.eq(&mail.email))
        .filter(credential::Column::PasswordHash.is_not_null());
    if !mail.organization.is_empty() {
        query = query.filter(credential::Column::Organization.eq(&mail.organization));
    }
    for credential in query.all(&state.db).await? {
        let now = state.now();
        let mail_id = format!("{key}/{}", credential.administrator);
        let token = state.sealer.mail_link(&mail_id);
        let tx = state.begin_write().await?;
        let facts = (credential.administrator.as_str(), credential.organization.as_str(), RESET);
        if !state::issue_link(&tx, &token, facts, now, state.link_expiry()).await? {
            tracing::info!(administrator = %credential.administrator, "reset mail dropped: its link was used");
            continue;
        }
        tx.commit().await?;
        state
            .mailer
            .send_reset(
                &credential.email,
                &credential.organization_display_name,
                (&token, state.link_hours()),
                &mail_id,
            )
            .await?;
        tracing::info!(administrator = %credential.administrator, "password reset link sent");
    }
    Ok(())
}

/// The mail relay's delivery function.
pub fn deliver(state: Shared) -> Deliver {
    std::sync::Arc::new(move |message: OutboxMessage| {
        let state = state.clone();
        Box::pin(async move {
            // A message older than a link's lifetime is dropped, not delivered: its link would
            // be past its time, and a spent link's row may be gone by then.
            if let Some(queued) = message.created_at {
                let stale = queued
                    .checked_add_signed(state.link_lifetime())
                    .is_some_and(|until| until < state.now());
                if stale {
                    tracing::warn!(topic = %message.topic, %queued, "mail dropped: undelivered for longer than a link lives");
                    return Ok(());
                }
            }
            let result = match message.topic.as_str() {
                INVITE_TOPIC => match serde_json::from_value(message.payload) {
                    Ok(mail) => {
                        send_invite(&state, mail, &message.idempotency_key, message.created_at)
                            .await
                    }
                    Err(e) => return Err(format!("bad payload: {e}")),
                },
                RESET_TOPIC => match serde_json::from_value(message.payload) {
                    Ok(mail) => send_resets(&state, mail, &message.idempotency_key).await,
                    Err(e) => return Err(format!("bad payload: {e}")),
                },
                other => return Err(format!("unknown outbox topic {other}")),
            };
            result.map_err(|e| e.to_string())
        })
    })
}
