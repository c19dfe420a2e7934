//! Periodic removal of rows that can no longer matter: links a day past their expiry, MFA
//! challenges, sessions past their absolute expiry (with their refresh tokens), revoked
//! sessions after a grace day and stale throttle counters. (Idempotency records expire on their
//! own: [`steward_storage::idempotency`].)

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use steward_runtime::service::Clock;
use steward_runtime::ApiResult;

use crate::entity::{link_token, mfa_challenge, refresh_token, session, throttle};

/// Time between passes.
const INTERVAL: Duration = Duration::from_secs(600);
/// How long spent or revoked rows are kept (for investigations) before removal.
const KEEP_DAYS: i64 = 1;
/// Sessions handled per pass, bounding each transaction.
const BATCH: u64 = 500;

/// One pass; returns the number of rows removed.
pub async fn sweep(db: &DatabaseConnection, now: DateTime<Utc>) -> ApiResult<u64> {
    let old = now - chrono::Duration::days(KEEP_DAYS);
    let mut removed = 0;
    // A used link stays until a day past its expiry, like an unused one: a mail message still
    // being retried finds it spent (`state::issue_link`) instead of issuing it again.
    removed += link_token::Entity::delete_many()
        .filter(link_token::Column::ExpiresAt.lt(old))
        .exec(db)
        .await?
        .rows_affected;
    removed += mfa_challenge::Entity::delete_many()
        .filter(mfa_challenge::Column::ExpiresAt.lt(old))
        .exec(db)
        .await?
        .rows_affected;
    let dead: Vec<String> = session::Entity::find()
        .select_only()
        .column(session::Column::Id)
        .filter(
            Condition::any()
                .add(session::Column::ExpiresAt.lt(old))
                .add(session::Column::RevokedAt.lt(old)),
        )
        .limit(BATCH)
        .into_tuple()
        .all(db)
        .await?;
    if !dead.is_empty() {
        removed += refresh_token::Entity::delete_many()
            .filter(refresh_token::Column::SessionId.is_in(dead.clone()))
            .exec(db)
            .await?
            .rows_affected;
        removed += session::Entity::delete_many()
            .filter(session::Column::Id.is_in(dead))
            .exec(db)
            .await?
            .rows_affected;
    }
    removed += throttle::Entity::delete_many()
        .filter(throttle::Column::UpdatedAt.lt(old))
        .filter(throttle::Column::Key.not_like(crate::throttle::KNOWN_MARKERS))
        .exec(db)
        .await?
        .rows_affected;
    let known_until = now - chrono::Duration::days(crate::throttle::KNOWN_ADDRESS_DAYS);
    removed += throttle::Entity::delete_many()
        .filter(throttle::Column::UpdatedAt.lt(known_until))
        .filter(throttle::Column::Key.like(crate::throttle::KNOWN_MARKERS))
        .exec(db)
        .await?
        .rows_affected;
    Ok(removed)
}

/// Runs [`sweep`] every ten minutes until aborted.
#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
pub fn spawn(db: DatabaseConnection, clock: Clock) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sweep(&db, clock()).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "expired auth rows removed"),
                Err(err) => tracing::warn!(error = %err, "auth cleanup pass failed"),
            }
            tokio::time::sleep(INTERVAL).await;
        }
    })
}
