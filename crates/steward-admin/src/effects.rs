//! Cross-service side effects, queued in `admin_outbox` in the same transaction as the change
//! and delivered by the relay spawned in `start`. Each message carries a fresh idempotency key
//! (a UUID) that the receiving service uses to ignore repeats, so the relay (one per replica)
//! may deliver a message more than once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use sea_orm::{ConnectionTrait, DbErr};
use serde::{Deserialize, Serialize};
use steward_proto::auth::v1::auth_internal_service_client::AuthInternalServiceClient;
use steward_proto::auth::v1::{
    DeleteCredentialsRequest, IssueInviteRequest, ResetMfaRequest, RevokeSessionsRequest,
};
use steward_proto::commands::v1::commands_internal_service_client::CommandsInternalServiceClient;
use steward_proto::commands::v1::RemoveAdministratorGrantsRequest;
use steward_runtime::service::Peers;
use steward_storage::outbox::{Deliver, Outbox, OutboxMessage};

/// The admin service's outbox table.
pub const OUTBOX: Outbox = Outbox::new("admin_outbox");

/// One side effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// AuthInternalService.IssueInvite.
    IssueInvite {
        /// Administrator resource name.
        administrator: String,
        /// Where to send the invite.
        email: String,
        /// For the email text.
        organization_display_name: String,
        /// For the email text; empty for an owner.
        inviter_email: String,
    },
    /// AuthInternalService.RevokeSessions.
    RevokeSessions {
        /// Administrator resource name.
        administrator: String,
        /// Why, for the auth service's audit.
        reason: String,
    },
    /// AuthInternalService.DeleteCredentials.
    DeleteCredentials {
        /// Administrator resource name.
        administrator: String,
    },
    /// AuthInternalService.ResetMfa.
    ResetMfa {
        /// Administrator resource name.
        administrator: String,
    },
    /// CommandsInternalService.RemoveAdministratorGrants.
    RemoveGrants {
        /// Administrator resource name.
        administrator: String,
    },
}

impl Effect {
    fn topic(&self) -> &'static str {
        match self {
            Self::IssueInvite { .. } => "auth.issue_invite",
            Self::RevokeSessions { .. } => "auth.revoke_sessions",
            Self::DeleteCredentials { .. } => "auth.delete_credentials",
            Self::ResetMfa { .. } => "auth.reset_mfa",
            Self::RemoveGrants { .. } => "commands.remove_grants",
        }
    }
}

/// Queues `effect` on `conn` (the transaction making the change).
pub async fn enqueue<C: ConnectionTrait>(
    conn: &C,
    effect: &Effect,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let payload = serde_json::to_value(effect).map_err(|e| DbErr::Custom(e.to_string()))?;
    let key = uuid::Uuid::new_v4().to_string();
    OUTBOX.enqueue(conn, effect.topic(), &key, &payload, now).await
}

/// A message queued by [`enqueue_urgent`]: the change's answer waits for its delivery
/// ([`deliver_now`]).
#[derive(Clone, Debug)]
pub struct Urgent {
    topic: &'static str,
    idempotency_key: String,
    payload: serde_json::Value,
}

/// Queues `effect` like [`enqueue`] and answers it for [`deliver_now`] after the commit.
pub async fn enqueue_urgent<C: ConnectionTrait>(
    conn: &C,
    effect: &Effect,
    now: DateTime<Utc>,
) -> Result<Urgent, DbErr> {
    let payload = serde_json::to_value(effect).map_err(|e| DbErr::Custom(e.to_string()))?;
    let key = uuid::Uuid::new_v4().to_string();
    OUTBOX.enqueue(conn, effect.topic(), &key, &payload, now).await?;
    Ok(Urgent { topic: effect.topic(), idempotency_key: key, payload })
}

/// Delivers `urgent` messages at once, once their transaction has committed, so that the change
/// is answered only after its effects took place. RemoveAdministratorGrants needs this: a run
/// the demoted or deleted administrator started before the change (its caller re-check passed)
/// holds its grant's row until it commits, and removing the grants waits for it; after that no
/// run can use them, so none commits after the change is answered (with the relay alone, one
/// could, until the relay's next pass). The queued copy stays: when this delivery fails
/// (logged) the relay retries it, and when it succeeded the relay's repeat is answered from the
/// receiver's idempotency record (same key) and removes nothing granted since.
pub async fn deliver_now(peers: &Peers, urgent: Vec<Urgent>) {
    let deliveries = urgent.into_iter().map(|u| async move {
        let message = OutboxMessage {
            id: 0,
            topic: u.topic.to_string(),
            idempotency_key: u.idempotency_key,
            payload: u.payload,
            attempts: 0,
            created_at: None,
        };
        if let Err(error) = deliver(peers, message).await {
            tracing::warn!(topic = u.topic, %error, "immediate delivery failed; the outbox relay will retry");
        }
    });
    futures::future::join_all(deliveries).await;
}

/// The relay's delivery function: one internal RPC per message, over `peers` with the service
/// credential.
pub fn deliverer(peers: Peers) -> Deliver {
    let peers = Arc::new(peers);
    Arc::new(move |message: OutboxMessage| {
        let peers = peers.clone();
        async move { deliver(&peers, message).await }.boxed()
    })
}

async fn deliver(peers: &Peers, message: OutboxMessage) -> Result<(), String> {
    let effect: Effect = serde_json::from_value(message.payload)
        .map_err(|e| format!("undecodable outbox payload: {e}"))?;
    let key = message.idempotency_key;
    let mut auth = AuthInternalServiceClient::new(peers.internal(&peers.auth));
    let result = match effect {
        Effect::IssueInvite { administrator, email, organization_display_name, inviter_email } => {
            auth.issue_invite(IssueInviteRequest {
                administrator,
                email,
                organization_display_name,
                inviter_email,
                idempotency_key: key,
            })
            .await
            .map(|_| ())
        }
        Effect::RevokeSessions { administrator, reason } => auth
            .revoke_sessions(RevokeSessionsRequest { administrator, reason, idempotency_key: key })
            .await
            .map(|_| ()),
        Effect::DeleteCredentials { administrator } => auth
            .delete_credentials(DeleteCredentialsRequest { administrator, idempotency_key: key })
            .await
            .map(|_| ()),
        Effect::ResetMfa { administrator } => {
            auth.reset_mfa(ResetMfaRequest { administrator }).await.map(|_| ())
        }
        Effect::RemoveGrants { administrator } => {
            CommandsInternalServiceClient::new(peers.internal(&peers.commands))
                .remove_administrator_grants(RemoveAdministratorGrantsRequest {
                    administrator,
                    idempotency_key: key,
                })
                .await
                .map(|_| ())
        }
    };
    result.map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let effect = Effect::IssueInvite {
            administrator: "organizations/o/administrators/a".into(),
            email: "a@example.com".into(),
            organization_display_name: "Acme".into(),
            inviter_email: String::new(),
        };
        let value = serde_json::to_value(&effect).unwrap();
        assert_eq!(value["kind"], "issue_invite");
        assert_eq!(serde_json::from_value::<Effect>(value).unwrap(), effect);
    }
}
