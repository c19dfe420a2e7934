//! RefreshSession's statements, shared by concurrent calls ([`steward_runtime::coalesce`]):
//! the presented tokens with their sessions and credentials read in one statement, and the
//! rotations committed together (group commit: on PostgreSQL one statement, on SQLite one
//! transaction). Each call still
//! returns only after its own rotation is durable, and a token rotates at most once: of two
//! calls presenting it, in one batch or two, one rotates it and the other finds it used.

use std::collections::HashSet;

use sea_orm::sea_query::Query;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, JoinType,
    QueryFilter, QuerySelect,
};
use steward_runtime::coalesce::{padded, power_of_two_chunks, Coalescer, Loaded};
use steward_runtime::service::Clock;
use steward_runtime::ApiError;

use crate::entity::{credential, refresh_token, session};
use crate::secrets;

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

/// A presented refresh token as read: the token, its session, and the credential of the
/// session's administrator.
pub type Presented = (refresh_token::Model, Option<session::Model>, Option<credential::Model>);

/// RefreshSession's coalesced statements.
pub struct Refreshes {
    /// A presented token (by digest) with its session and its administrator's credential.
    tokens: Coalescer<String, Presented>,
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
                let to_credential = session::Entity::belongs_to(credential::Entity)
                    .from(session::Column::Administrator)
                    .to(credential::Column::Administrator)
                    .into();
                let found = refresh_token::Entity::find()
                    .filter(refresh_token::Column::TokenHash.is_in(padded(digests)))
                    .join(JoinType::InnerJoin, to_session)
                    .join(JoinType::LeftJoin, to_credential)
                    .select_also(session::Entity)
                    .select_also(credential::Entity)
                    .all(&db)
                    .await?;
                Ok(found.into_iter().map(|row| (row.0.token_hash.clone(), row)).collect())
            }
        });
        let conn = db.clone();
        // No time limit: a rotation given up mid-commit may have landed, and its callers,
        // told to retry, would present their used tokens and end their sessions.
        let rotate_batch = move |batch: Vec<Rotation>| {
            let (db, now) = (conn.clone(), clock());
            async move { rotate(&db, batch, now).await }
        };
        let rotations = Coalescer::without_timeout(rotate_batch);
        Self { tokens, rotations }
    }

    /// The token of `digest` with its session and its administrator's credential, as they are
    /// now.
    pub async fn token(&self, digest: String) -> Result<Option<Presented>, ApiError> {
        self.tokens.get(digest).await
    }

    /// Marks `rotation.used` used and stores `rotation.next`, durably, unless the used token
    /// was used already; `false` then.
    pub async fn rotate(&self, rotation: Rotation) -> Result<bool, ApiError> {
        Ok(self.rotations.get(rotation).await?.unwrap_or(false))
    }
}

/// Rotates a batch: each presented token that is still unused is marked used by the first
/// rotation presenting it, and that rotation's next token is stored, atomically. A token
/// presented concurrently (by another batch or another replica) rotates once: the other waits
/// for its row lock, then finds it used.
async fn rotate(
    db: &DatabaseConnection,
    batch: Vec<Rotation>,
    now: chrono::DateTime<chrono::Utc>,
) -> Loaded<Rotation, bool> {
    // The first rotation presenting each token; later ones in the batch find it used.
    let mut presented = HashSet::new();
    let candidates: Vec<Rotation> =
        batch.into_iter().filter(|r| presented.insert(r.used.clone())).collect();
    let rotated = if db.get_database_backend() == DbBackend::Postgres {
        rotate_postgres(db, &candidates, now).await?
    } else {
        rotate_in_transaction(db, &candidates, now).await?
    };
    Ok(candidates.into_iter().filter(|r| rotated.contains(&r.used)).map(|r| (r, true)).collect())
}

/// PostgreSQL: one statement, so a batch costs one round trip and no transaction of its own.
/// The unused tokens are locked in the order of their digests (two batches presenting the same
/// tokens cannot deadlock), re-checked after any wait, marked used, and the next tokens of
/// those rotations inserted; the arrays make one statement shape for every batch size.
/// Returns the digests of the tokens it used.
async fn rotate_postgres(
    db: &DatabaseConnection,
    candidates: &[Rotation],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<HashSet<String>, ApiError> {
    const ROTATE: &str = "WITH locked AS ( \
            SELECT token_hash FROM auth_refresh_tokens \
            WHERE token_hash = ANY($1) AND used_at IS NULL \
            ORDER BY token_hash FOR UPDATE \
        ), used AS ( \
            UPDATE auth_refresh_tokens SET used_at = $4 \
            WHERE token_hash = ANY(ARRAY(SELECT token_hash FROM locked)) AND used_at IS NULL \
            RETURNING token_hash \
        ) \
        INSERT INTO auth_refresh_tokens (token_hash, session_id, used_at, created_at) \
        SELECT presented.next, presented.session, NULL, $4 \
        FROM unnest($1::text[], $2::text[], $3::text[]) AS presented (used, next, session) \
        JOIN used ON used.token_hash = presented.used \
        RETURNING token_hash";
    let used: Vec<String> = candidates.iter().map(|r| r.used.clone()).collect();
    let next: Vec<String> = candidates.iter().map(|r| secrets::digest(&r.next)).collect();
    let sessions: Vec<String> = candidates.iter().map(|r| r.session.clone()).collect();
    let inserted: HashSet<String> = sea_orm::sqlx::query_scalar::<_, String>(ROTATE)
        .bind(&used)
        .bind(&next)
        .bind(&sessions)
        .bind(now)
        .fetch_all(db.get_postgres_connection_pool())
        .await
        .map_err(|err| sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err)))?
        .into_iter()
        .collect();
    Ok(used
        .into_iter()
        .zip(next)
        .filter(|(_, next)| inserted.contains(next))
        .map(|(used, _)| used)
        .collect())
}

/// SQLite (its write lock, taken first, orders batches): the unused tokens marked used, the
/// next tokens of those rotations inserted, in one transaction. Returns the digests of the
/// tokens it used.
async fn rotate_in_transaction(
    db: &DatabaseConnection,
    candidates: &[Rotation],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<HashSet<String>, ApiError> {
    let txn = steward_storage::begin_write(db, crate::IDEMPOTENCY.table()).await?;
    let presented = padded(candidates.iter().map(|r| r.used.clone()).collect());
    let mark = Query::update()
        .table(refresh_token::Entity)
        .value(refresh_token::Column::UsedAt, now)
        .and_where(refresh_token::Column::TokenHash.is_in(presented))
        .and_where(refresh_token::Column::UsedAt.is_null())
        .returning_col(refresh_token::Column::TokenHash)
        .to_owned();
    let used = txn
        .query_all(txn.get_database_backend().build(&mark))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "token_hash"))
        .collect::<Result<HashSet<String>, _>>()?;
    if used.is_empty() {
        txn.rollback().await?;
        return Ok(used);
    }
    let winners: Vec<&Rotation> = candidates.iter().filter(|r| used.contains(&r.used)).collect();
    for chunk in power_of_two_chunks(&winners) {
        refresh_token::Entity::insert_many(
            chunk.iter().map(|r| crate::state::refresh_row(&r.session, &r.next, now)),
        )
        .exec(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(used)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use chrono::{DateTime, Utc};
    use sea_orm::sea_query::Expr;
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

    // Two batches presenting the same two tokens in opposite orders, at once, many times: the
    // tokens are locked in the order of their digests, so neither batch deadlocks or fails, and
    // each token rotates exactly once.
    #[tokio::test]
    async fn batches_presenting_tokens_in_opposite_orders_rotate_each_once() {
        for (db, conn) in crate::testing::databases().await {
            let on = db.backend();
            for round in 0..20 {
                let (s1, s2) = (format!("s1-{round}"), format!("s2-{round}"));
                let (t1, t2) = (format!("token-1-{round}"), format!("token-2-{round}"));
                session_with_token(&conn, &s1, &t1).await;
                session_with_token(&conn, &s2, &t2).await;
                let forwards = vec![
                    rotation(&t1, &s1, &format!("next-1a-{round}")),
                    rotation(&t2, &s2, &format!("next-2a-{round}")),
                ];
                let backwards = vec![
                    rotation(&t2, &s2, &format!("next-2b-{round}")),
                    rotation(&t1, &s1, &format!("next-1b-{round}")),
                ];
                let (a, b) =
                    tokio::join!(rotate(&conn, forwards, at()), rotate(&conn, backwards, at()));
                let (a, b) = (a.unwrap(), b.unwrap());
                for token in [&t1, &t2] {
                    let used = secrets::digest(token);
                    let rotations = a.keys().chain(b.keys()).filter(|r| r.used == used).count();
                    assert_eq!(rotations, 1, "on {on:?}, round {round}: {a:?} {b:?}");
                }
                let sessions = [s1.clone(), s2.clone()];
                let stored = refresh_token::Entity::find()
                    .filter(refresh_token::Column::SessionId.is_in(sessions))
                    .filter(refresh_token::Column::UsedAt.is_null())
                    .all(&conn)
                    .await
                    .unwrap();
                assert_eq!(stored.len(), 2, "on {on:?}, round {round}: one live token each");
            }
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
