//! RefreshSession's statements, shared by concurrent calls ([`steward_runtime::coalesce`]):
//! the presented tokens with their sessions read in one statement, the credentials in another,
//! and the rotations committed together in one transaction (group commit). Each call still
//! returns only after its own rotation is durable, and a token rotates at most once: of two
//! calls presenting it, in one batch or two, one rotates it and the other finds it used.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
};
use steward_runtime::coalesce::{self, padded, power_of_two_chunks, Coalescer, Loaded};
use steward_runtime::service::Clock;
use steward_runtime::ApiError;

use crate::entity::{credential, refresh_token, session};

/// One refresh token exchanged for the next.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Rotation {
    /// Digest of the token presented.
    pub used: String,
    /// Its session.
    pub session: String,
    /// The token issued in its place (not its digest: the caller returns it).
    pub next: String,
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `next` is a live credential.
        f.debug_struct("Rotation")
            .field("used", &self.used)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// RefreshSession's coalesced statements.
pub struct Refreshes {
    /// A presented token (by digest) with its session.
    tokens: Coalescer<String, (refresh_token::Model, Option<session::Model>)>,
    /// Credentials by administrator id.
    credentials: Coalescer<String, credential::Model>,
    /// Rotations committed together: `true` for a rotation that happened, absent for a token
    /// already used (by an earlier call, or by another call in the same batch).
    rotations: Coalescer<Rotation, bool>,
}

impl std::fmt::Debug for Refreshes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshes").finish_non_exhaustive()
    }
}

impl Refreshes {
    /// Statements on `db`; rotations are stamped with `clock`.
    pub fn new(db: &DatabaseConnection, clock: Clock) -> Self {
        let conn = db.clone();
        let tokens = Coalescer::new(move |digests: Vec<String>| {
            let db = conn.clone();
            async move {
                let to_session = refresh_token::Entity::belongs_to(session::Entity)
                    .from(refresh_token::Column::SessionId)
                    .to(session::Column::Id)
                    .into();
                let found = refresh_token::Entity::find()
                    .filter(refresh_token::Column::TokenHash.is_in(padded(digests)))
                    .join(JoinType::InnerJoin, to_session)
                    .select_also(session::Entity)
                    .all(&db)
                    .await?;
                Ok(found.into_iter().map(|row| (row.0.token_hash.clone(), row)).collect())
            }
        });
        let credentials =
            coalesce::rows_by::<credential::Entity>(db, credential::Column::Administrator, |row| {
                row.administrator.clone()
            });
        let conn = db.clone();
        // No time limit: a rotation given up mid-commit may have landed, and its callers,
        // told to retry, would present their used tokens and end their sessions.
        let rotate_batch = move |batch: Vec<Rotation>| {
            let (db, now) = (conn.clone(), clock());
            async move { rotate(&db, batch, now).await }
        };
        let rotations = Coalescer::without_timeout(rotate_batch);
        Self { tokens, credentials, rotations }
    }

    /// The token of `digest` with its session, as they are now.
    pub async fn token(
        &self,
        digest: String,
    ) -> Result<Option<(refresh_token::Model, Option<session::Model>)>, ApiError> {
        self.tokens.get(digest).await
    }

    /// The credential of `administrator`, as it is now.
    pub async fn credential(
        &self,
        administrator: String,
    ) -> Result<Option<credential::Model>, ApiError> {
        self.credentials.get(administrator).await
    }

    /// Marks `rotation.used` used and stores `rotation.next`, durably, unless the used token
    /// was used already; `false` then.
    pub async fn rotate(&self, rotation: Rotation) -> Result<bool, ApiError> {
        Ok(self.rotations.get(rotation).await?.unwrap_or(false))
    }
}

/// One transaction for a batch of rotations: the unused tokens among those presented, locked;
/// each rotated by the first rotation presenting it; the next tokens inserted.
async fn rotate(
    db: &DatabaseConnection,
    batch: Vec<Rotation>,
    now: chrono::DateTime<chrono::Utc>,
) -> Loaded<Rotation, bool> {
    let txn = steward_storage::begin_write(db, crate::IDEMPOTENCY.table()).await?;
    let presented: Vec<String> = batch.iter().map(|r| r.used.clone()).collect();
    // Locked on PostgreSQL until the commit (SQLite's write lock is already held): a
    // concurrent batch waits, then finds them used. Locked in the order of their digests, so
    // two batches presenting the same tokens cannot deadlock.
    let unused: HashSet<String> = refresh_token::Entity::find()
        .select_only()
        .column(refresh_token::Column::TokenHash)
        .filter(refresh_token::Column::TokenHash.is_in(padded(presented)))
        .filter(refresh_token::Column::UsedAt.is_null())
        .order_by_asc(refresh_token::Column::TokenHash)
        .lock_exclusive()
        .into_tuple()
        .all(&txn)
        .await?
        .into_iter()
        .collect();
    let mut claimed = HashSet::new();
    let winners: Vec<Rotation> = batch
        .into_iter()
        .filter(|r| unused.contains(&r.used) && claimed.insert(r.used.clone()))
        .collect();
    if winners.is_empty() {
        txn.rollback().await?;
        return Ok(HashMap::new());
    }
    let marked = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(
            refresh_token::Column::TokenHash
                .is_in(padded(winners.iter().map(|r| r.used.clone()).collect())),
        )
        .filter(refresh_token::Column::UsedAt.is_null())
        .exec(&txn)
        .await?;
    // Every winner's token was unused and locked: anything else is a bug, and nothing rotates.
    if marked.rows_affected != winners.len() as u64 {
        txn.rollback().await?;
        return Err(ApiError::Internal(format!(
            "{} of {} refresh tokens marked used",
            marked.rows_affected,
            winners.len()
        )));
    }
    for chunk in power_of_two_chunks(&winners) {
        refresh_token::Entity::insert_many(
            chunk.iter().map(|r| crate::state::refresh_row(&r.session, &r.next, now)),
        )
        .exec(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(winners.into_iter().map(|r| (r, true)).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use chrono::{DateTime, Utc};
    use sea_orm::{ActiveModelTrait, IntoActiveModel};

    use super::*;
    use crate::secrets;

    /// A fixed time: rotation does not judge expiry.
    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000, 0).unwrap()
    }

    async fn session_with_token(conn: &DatabaseConnection, id: &str, token: &str) {
        let now = at();
        session::Model {
            id: id.into(),
            administrator: "o1/a1".into(),
            organization: "o1".into(),
            amr: "pwd".into(),
            scope: "full".into(),
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            revoked_at: None,
        }
        .into_active_model()
        .insert(conn)
        .await
        .unwrap();
        crate::state::insert_refresh(conn, id, token, now).await.unwrap();
    }

    fn rotation(token: &str, session: &str, next: &str) -> Rotation {
        Rotation { used: secrets::digest(token), session: session.into(), next: next.into() }
    }

    // One batch holding two rotations of one token (and one of another): the first rotates it,
    // the second does not, and only the first's next token is stored. A later batch presenting
    // it again rotates nothing.
    #[tokio::test]
    async fn a_token_rotates_once_within_and_across_batches() {
        for (db, conn) in crate::testing::databases().await {
            session_with_token(&conn, "s1", "token-1").await;
            session_with_token(&conn, "s2", "token-2").await;
            let first = rotation("token-1", "s1", "next-a");
            let second = rotation("token-1", "s1", "next-b");
            let other = rotation("token-2", "s2", "next-c");
            let batch = vec![first.clone(), second.clone(), other.clone()];
            let done = rotate(&conn, batch, at()).await.unwrap();
            let on = db.backend();
            assert_eq!(done.get(&first), Some(&true), "on {on:?}");
            assert_eq!(done.get(&second), None, "on {on:?}");
            assert_eq!(done.get(&other), Some(&true), "on {on:?}");
            let stored = |token: &str| {
                let conn = conn.clone();
                let digest = secrets::digest(token);
                async move { refresh_token::Entity::find_by_id(digest).one(&conn).await.unwrap() }
            };
            assert!(stored("next-a").await.is_some(), "on {on:?}");
            assert!(stored("next-b").await.is_none(), "on {on:?}");
            assert!(stored("token-1").await.unwrap().used_at.is_some(), "on {on:?}");
            let again = rotate(&conn, vec![rotation("token-1", "s1", "next-d")], at());
            assert!(again.await.unwrap().is_empty(), "on {on:?}");
            assert!(stored("next-d").await.is_none(), "on {on:?}");
        }
    }

    // A batch presenting a token that another transaction has marked used, not yet committed,
    // waits for that transaction (PostgreSQL: the row lock; SQLite: the write lock), then
    // finds the token used: nothing rotates and nothing fails.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // Gives the batch time to reach the lock.
    async fn a_batch_waits_for_a_concurrent_use_then_finds_the_token_used() {
        for (db, conn) in crate::testing::databases().await {
            session_with_token(&conn, "s1", "token-1").await;
            let holder =
                steward_storage::begin_write(&conn, crate::IDEMPOTENCY.table()).await.unwrap();
            refresh_token::Entity::update_many()
                .col_expr(refresh_token::Column::UsedAt, Expr::value(at()))
                .filter(refresh_token::Column::TokenHash.eq(secrets::digest("token-1")))
                .exec(&holder)
                .await
                .unwrap();
            let batch = tokio::spawn({
                let conn = conn.clone();
                async move { rotate(&conn, vec![rotation("token-1", "s1", "next-a")], at()).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let on = db.backend();
            assert!(!batch.is_finished(), "on {on:?}: the batch did not wait for the lock");
            holder.commit().await.unwrap();
            let done = batch.await.unwrap().unwrap();
            assert!(done.is_empty(), "on {on:?}: {done:?}");
        }
    }

    // Two batches presenting one token at once, on two connections: one rotates it, the other
    // finds it used (on PostgreSQL it waits on the row lock, then sees the commit), and
    // neither fails.
    #[tokio::test]
    async fn concurrent_batches_rotate_a_token_once() {
        for (db, conn) in crate::testing::databases().await {
            session_with_token(&conn, "s1", "token-1").await;
            let (a, b) = (rotation("token-1", "s1", "next-a"), rotation("token-1", "s1", "next-b"));
            let (first, second) = tokio::join!(
                rotate(&conn, vec![a.clone()], at()),
                rotate(&conn, vec![b.clone()], at())
            );
            let (first, second) = (first.unwrap(), second.unwrap());
            let on = db.backend();
            assert_eq!(first.len() + second.len(), 1, "on {on:?}: {first:?} {second:?}");
        }
    }
}
