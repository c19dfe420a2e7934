//! RefreshSession's statements, shared by concurrent calls ([`steward_runtime::coalesce`]).
//!
//! A refresh token is `<family>.<secret>` (22 and 43 base64url characters). The family names
//! its session (`auth_sessions.refresh_family` holds its digest; it is random and in no other
//! token or answer), and the session keeps the digest of its current token alone. A rotation
//! replaces that digest: one row updated, nothing inserted. A token of the family that is not
//! the current one has been rotated already, and presenting it revokes the session (reuse
//! detection, as with a table of used tokens, without one).
//!
//! The presented tokens' sessions and credentials are read in one statement, and the rotations
//! commit together (group commit: one statement on PostgreSQL, one transaction on SQLite). Each
//! call still returns only after its own rotation is durable, and a token rotates at most once:
//! of two calls presenting it, in one batch or two, one rotates it and the other finds it
//! replaced.
//!
//! Tokens without a `.` were issued before families (or by the previous release's pods during a
//! rollout) and are rows of `auth_refresh_tokens`; presenting one rotates it into a new family,
//! one call at a time. That table and this path go two releases on.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    Iterable, QueryFilter, Statement,
};
use steward_runtime::coalesce::{padded, power_of_two_chunks, Coalescer, Loaded};
use steward_runtime::service::Clock;
use steward_runtime::ApiError;

use crate::entity::{credential, refresh_token, session};
use crate::secrets;

/// Length of a family (16 random bytes, base64url).
const FAMILY_LEN: usize = 22;
/// Length of a secret, and of a whole token from before families (32 random bytes, base64url).
const SECRET_LEN: usize = 43;

/// Whether `part` is `len` base64url characters.
fn is_base64url(part: &str, len: usize) -> bool {
    part.len() == len && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A session as a presented token finds it, and whether its administrator's credential has a
/// second factor enrolled (None: there is no credential).
pub type Found = (session::Model, Option<bool>);

/// A presented refresh token, read.
pub struct Presented {
    /// Its session.
    pub session: session::Model,
    /// Whether the session's administrator has a second factor enrolled; None when it has no
    /// credential (deleted).
    pub mfa_enrolled: Option<bool>,
    /// Whether it is the session's current token; any other was rotated already.
    pub current: bool,
    /// Its family and digest.
    kind: Kind,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The family is as good as a token for ending the session.
        f.debug_struct("Presented")
            .field("session", &self.session.id)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// Where a presented token came from: its family (in clear, for the next token) and the
/// token's digest.
enum Kind {
    Family { family: String, digest: String },
    Legacy { digest: String },
}

/// One session's current token exchanged for the next, in a batch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Rotation {
    /// The session.
    pub session: String,
    /// Digest of the token presented, which must still be the session's current one.
    pub used: String,
    /// The token issued in its place (not its digest: the caller returns it).
    pub next: String,
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `next` is a live credential.
        f.debug_struct("Rotation")
            .field("session", &self.session)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

/// A new refresh family: its first token, and the digests its session stores.
pub struct NewFamily {
    /// The first token, for the caller.
    pub token: String,
    /// `auth_sessions.refresh_family`.
    pub family_hash: String,
    /// `auth_sessions.refresh_hash`.
    pub token_hash: String,
}

/// A new refresh family. The family is as random as a link token (128 bits), the secret after
/// the `.` as any token (256 bits).
pub fn new_family() -> NewFamily {
    let family = secrets::new_link_token();
    let token = token_of(&family);
    NewFamily { family_hash: secrets::digest(&family), token_hash: secrets::digest(&token), token }
}

/// A new token of `family`.
fn token_of(family: &str) -> String {
    format!("{family}.{}", secrets::new_token())
}

/// RefreshSession's coalesced statements.
pub struct Refreshes {
    db: DatabaseConnection,
    clock: Clock,
    /// A family's session (by the family's digest) with its administrator's MFA enrolment.
    families: Coalescer<String, Found>,
    /// Rotations committed together: `true` for a rotation that happened, absent for a token
    /// no longer current (rotated by an earlier call, or by another in the same batch) or a
    /// session revoked meanwhile.
    rotations: Coalescer<Rotation, bool>,
}

impl std::fmt::Debug for Refreshes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshes").finish_non_exhaustive()
    }
}

impl Refreshes {
    /// Statements on `db`; a token from before families is marked used at `clock`'s time.
    pub fn new(db: &DatabaseConnection, clock: Clock) -> Self {
        let conn = db.clone();
        let families = Coalescer::new(move |families: Vec<String>| {
            let db = conn.clone();
            async move {
                // The session's columns and the one credential column refresh needs, decoded
                // by name: a column that does not decode is an error, never a missing row.
                let query = Query::select()
                    .columns(session::Column::iter().map(|c| (session::Entity, c)))
                    .expr_as(
                        Expr::col((credential::Entity, credential::Column::MfaEnrolled)),
                        Alias::new("credential_mfa_enrolled"),
                    )
                    .from(session::Entity)
                    .left_join(
                        credential::Entity,
                        Expr::col((credential::Entity, credential::Column::Administrator))
                            .equals((session::Entity, session::Column::Administrator)),
                    )
                    .and_where(
                        Expr::col((session::Entity, session::Column::RefreshFamily))
                            .is_in(padded(families)),
                    )
                    .to_owned();
                let rows = db.query_all(db.get_database_backend().build(&query)).await?;
                let mut found = HashMap::with_capacity(rows.len());
                for row in rows {
                    let session = session::Model::from_query_result(&row, "")?;
                    let enrolled = row.try_get::<Option<bool>>("", "credential_mfa_enrolled")?;
                    if let Some(family) = session.refresh_family.clone() {
                        found.insert(family, (session, enrolled));
                    }
                }
                Ok(found)
            }
        });
        let conn = db.clone();
        // No time limit: a rotation given up mid-commit may have landed, and its callers,
        // told to retry, would present their replaced tokens and end their sessions.
        let rotate_batch = move |batch: Vec<Rotation>| {
            let db = conn.clone();
            async move { rotate(&db, batch).await }
        };
        let rotations = Coalescer::without_timeout(rotate_batch);
        Self { db: db.clone(), clock, families, rotations }
    }

    /// The session `token` belongs to, as it is now, or None for a token of no session.
    pub async fn read(&self, token: &str) -> Result<Option<Presented>, ApiError> {
        // Anything not shaped like an issued token is none, before any statement.
        match token.split_once('.') {
            Some((family, secret))
                if is_base64url(family, FAMILY_LEN) && is_base64url(secret, SECRET_LEN) =>
            {
                let found = self.families.get(secrets::digest(family)).await?;
                let Some((session, mfa_enrolled)) = found else {
                    return Ok(None);
                };
                let digest = secrets::digest(token);
                let current = session.refresh_hash.as_deref() == Some(digest.as_str());
                let kind = Kind::Family { family: family.to_string(), digest };
                Ok(Some(Presented { session, mfa_enrolled, current, kind }))
            }
            None if is_base64url(token, SECRET_LEN) => {
                let digest = secrets::digest(token);
                let Some(token) = refresh_token::Entity::find_by_id(digest).one(&self.db).await?
                else {
                    return Ok(None);
                };
                let Some(session) =
                    session::Entity::find_by_id(token.session_id).one(&self.db).await?
                else {
                    return Ok(None);
                };
                let mfa_enrolled = credential::Entity::find_by_id(session.administrator.clone())
                    .one(&self.db)
                    .await?
                    .map(|c| c.mfa_enrolled);
                let current = token.used_at.is_none();
                let kind = Kind::Legacy { digest: token.token_hash };
                Ok(Some(Presented { session, mfa_enrolled, current, kind }))
            }
            _ => Ok(None),
        }
    }

    /// Exchanges a current token for the next, durably: the token to return, or None when it
    /// was no longer current (a concurrent call rotated it) or its session was revoked
    /// meanwhile.
    pub async fn rotate(&self, presented: &Presented) -> Result<Option<String>, ApiError> {
        let session = presented.session.id.clone();
        match &presented.kind {
            Kind::Family { family, digest } => {
                let rotation = Rotation { session, used: digest.clone(), next: token_of(family) };
                let rotated = self.rotations.get(rotation.clone()).await?.unwrap_or(false);
                Ok(rotated.then_some(rotation.next))
            }
            Kind::Legacy { digest } => {
                let next = new_family();
                let now = (self.clock)();
                let rotated = adopt(&self.db, digest, &session, &next, now).await?;
                Ok(rotated.then_some(next.token))
            }
        }
    }
}

/// Rotates a batch: each session whose current token is still the one presented, and which is
/// not revoked, gets the next token of the first rotation presenting it; later rotations of the
/// same session in the batch are left out (they lose, as they would to an earlier batch). A
/// session rotated concurrently (by another batch or replica) rotates once: the other waits for
/// its row lock, then finds its token replaced.
async fn rotate(db: &DatabaseConnection, batch: Vec<Rotation>) -> Loaded<Rotation, bool> {
    let mut presented = HashSet::new();
    let candidates: Vec<Rotation> =
        batch.into_iter().filter(|r| presented.insert(r.session.clone())).collect();
    let rotated = if db.get_database_backend() == DbBackend::Postgres {
        rotate_postgres(db, &candidates).await?
    } else {
        rotate_sqlite(db, &candidates).await?
    };
    Ok(candidates.into_iter().filter(|r| rotated.contains(&r.session)).map(|r| (r, true)).collect())
}

/// PostgreSQL: one statement, so a batch costs one round trip and no transaction of its own.
/// The sessions are locked in the order of their ids (two batches presenting the same sessions
/// cannot deadlock, nor a batch and `state::revoke_sessions`, which locks in that order too),
/// re-checked after any wait (`refresh_hash`, `revoked_at`), and given their next tokens; the arrays make one statement shape for every batch size. Returns the sessions
/// rotated.
async fn rotate_postgres(
    db: &DatabaseConnection,
    candidates: &[Rotation],
) -> Result<HashSet<String>, ApiError> {
    // A single-table UPDATE: joined to `unnest(...)` it would build a whole-row copy of every
    // presented row for the re-check after a lock wait. The batch is deduplicated by session,
    // so `array_position` finds each session's own entry.
    const ROTATE: &str = "WITH locked AS ( \
            SELECT id FROM auth_sessions WHERE id = ANY($1) \
            ORDER BY id COLLATE \"C\" FOR NO KEY UPDATE \
        ) \
        UPDATE auth_sessions SET refresh_hash = ($3::text[])[array_position($1::text[], id)] \
        WHERE id = ANY(ARRAY(SELECT id FROM locked)) \
          AND refresh_hash = ($2::text[])[array_position($1::text[], id)] \
          AND revoked_at IS NULL \
        RETURNING id";
    let sessions: Vec<&str> = candidates.iter().map(|r| r.session.as_str()).collect();
    let used: Vec<&str> = candidates.iter().map(|r| r.used.as_str()).collect();
    let next: Vec<String> = candidates.iter().map(|r| secrets::digest(&r.next)).collect();
    let rotated = sea_orm::sqlx::query_scalar::<_, String>(ROTATE)
        .bind(&sessions)
        .bind(&used)
        .bind(&next)
        .fetch_all(db.get_postgres_connection_pool())
        .await
        .map_err(|err| sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err)))?;
    Ok(rotated.into_iter().collect())
}

/// SQLite (its write lock, taken first, orders batches): one `UPDATE … FROM (VALUES …)` per
/// power-of-two chunk, so a few statement shapes serve every batch size, in one transaction:
/// a batch that fails has rotated nothing (its callers retry with tokens still current).
/// Returns the sessions rotated.
async fn rotate_sqlite(
    db: &DatabaseConnection,
    candidates: &[Rotation],
) -> Result<HashSet<String>, ApiError> {
    let txn = steward_storage::begin_write(db, crate::IDEMPOTENCY.table()).await?;
    let mut rotated = HashSet::new();
    for chunk in power_of_two_chunks(candidates) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "UPDATE auth_sessions SET refresh_hash = presented.column3 FROM (VALUES {rows}) AS presented \
             WHERE auth_sessions.id = presented.column1 AND auth_sessions.refresh_hash = presented.column2 \
               AND auth_sessions.revoked_at IS NULL RETURNING id"
        );
        let values = chunk.iter().flat_map(|r| {
            [r.session.clone().into(), r.used.clone().into(), secrets::digest(&r.next).into()]
        });
        let statement = Statement::from_sql_and_values(DbBackend::Sqlite, sql, values);
        for row in txn.query_all(statement).await? {
            rotated.insert(row.try_get::<String>("", "id")?);
        }
    }
    txn.commit().await?;
    Ok(rotated)
}

/// Rotates a token from before families into a new family: the token marked used and the
/// session given the family `next`, in one transaction, unless the token was used already or
/// the session revoked (or, defensively, already in a family). A concurrent use waits on the
/// token's row (PostgreSQL) or the write lock (SQLite), then finds it used.
async fn adopt(
    db: &DatabaseConnection,
    used: &str,
    session: &str,
    next: &NewFamily,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<bool, ApiError> {
    let txn = steward_storage::begin_write(db, crate::IDEMPOTENCY.table()).await?;
    let marked = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(refresh_token::Column::TokenHash.eq(used))
        .filter(refresh_token::Column::UsedAt.is_null())
        .exec(&txn)
        .await?
        .rows_affected;
    let moved = marked > 0
        && session::Entity::update_many()
            .col_expr(session::Column::RefreshFamily, Expr::value(next.family_hash.as_str()))
            .col_expr(session::Column::RefreshHash, Expr::value(next.token_hash.as_str()))
            .filter(session::Column::Id.eq(session))
            .filter(session::Column::RevokedAt.is_null())
            .filter(session::Column::RefreshFamily.is_null())
            .exec(&txn)
            .await?
            .rows_affected
            > 0;
    if moved {
        txn.commit().await?;
    } else {
        txn.rollback().await?;
    }
    Ok(moved)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use sea_orm::{ActiveModelTrait, IntoActiveModel};

    use super::*;

    /// A fixed time: rotation does not judge expiry.
    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000, 0).unwrap()
    }

    /// A live session `id` of a family; returns its first token.
    async fn session_with_token(conn: &DatabaseConnection, id: &str) -> String {
        let family = new_family();
        session_row(conn, id, Some(family.family_hash), Some(family.token_hash)).await;
        family.token
    }

    async fn session_row(
        conn: &DatabaseConnection,
        id: &str,
        refresh_family: Option<String>,
        refresh_hash: Option<String>,
    ) {
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
            refresh_family,
            refresh_hash,
        }
        .into_active_model()
        .insert(conn)
        .await
        .unwrap();
    }

    fn rotation(session: &str, token: &str) -> Rotation {
        let family = token.split_once('.').unwrap().0;
        Rotation { session: session.into(), used: secrets::digest(token), next: token_of(family) }
    }

    /// Starts a batch rotating `token` of session `s1` while `holder` holds its lock, checks
    /// that the batch waits for it, commits `holder`, and returns what the batch rotated.
    #[allow(clippy::disallowed_methods)] // Gives the batch time to reach the lock.
    async fn rotate_behind(
        conn: &DatabaseConnection,
        holder: sea_orm::DatabaseTransaction,
        token: &str,
        on: steward_storage::testing::Backend,
    ) -> HashMap<Rotation, bool> {
        let batch = tokio::spawn({
            let (conn, rotation) = (conn.clone(), rotation("s1", token));
            async move { rotate(&conn, vec![rotation]).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!batch.is_finished(), "on {on:?}: the batch did not wait for the lock");
        holder.commit().await.unwrap();
        batch.await.unwrap().unwrap()
    }

    async fn current(conn: &DatabaseConnection, id: &str) -> Option<String> {
        session::Entity::find_by_id(id.to_string()).one(conn).await.unwrap().unwrap().refresh_hash
    }

    // One batch holding two rotations of one session's token (and one of another session): the
    // first rotates it, the second does not, and the session keeps the first's next token. A
    // later batch presenting the replaced token rotates nothing.
    #[tokio::test]
    async fn a_token_rotates_once_within_and_across_batches() {
        for (db, conn) in crate::testing::databases().await {
            let t1 = session_with_token(&conn, "s1").await;
            let t2 = session_with_token(&conn, "s2").await;
            let (first, second, other) =
                (rotation("s1", &t1), rotation("s1", &t1), rotation("s2", &t2));
            let batch = vec![first.clone(), second.clone(), other.clone()];
            let done = rotate(&conn, batch).await.unwrap();
            let on = db.backend();
            assert_eq!(done.get(&first), Some(&true), "on {on:?}");
            assert_eq!(done.get(&second), None, "on {on:?}");
            assert_eq!(done.get(&other), Some(&true), "on {on:?}");
            assert_eq!(current(&conn, "s1").await, Some(secrets::digest(&first.next)), "on {on:?}");
            assert_eq!(current(&conn, "s2").await, Some(secrets::digest(&other.next)), "on {on:?}");
            let again = rotate(&conn, vec![rotation("s1", &t1)]).await.unwrap();
            assert!(again.is_empty(), "on {on:?}");
            assert_eq!(current(&conn, "s1").await, Some(secrets::digest(&first.next)), "on {on:?}");
        }
    }

    // A revoked session's token does not rotate, current or not.
    #[tokio::test]
    async fn a_revoked_session_does_not_rotate() {
        for (db, conn) in crate::testing::databases().await {
            let token = session_with_token(&conn, "s1").await;
            crate::state::revoke_session(&conn, "s1", at()).await.unwrap();
            let done = rotate(&conn, vec![rotation("s1", &token)]).await.unwrap();
            assert!(done.is_empty(), "on {:?}: {done:?}", db.backend());
            assert_eq!(current(&conn, "s1").await, Some(secrets::digest(&token)));
        }
    }

    // A batch presenting a token that another transaction has replaced, not yet committed,
    // waits for that transaction (PostgreSQL: the row lock; SQLite: the write lock), then finds
    // the token replaced: nothing rotates and nothing fails.
    #[tokio::test]
    async fn a_batch_waits_for_a_concurrent_rotation_then_finds_the_token_replaced() {
        for (db, conn) in crate::testing::databases().await {
            let token = session_with_token(&conn, "s1").await;
            let holder =
                steward_storage::begin_write(&conn, crate::IDEMPOTENCY.table()).await.unwrap();
            session::Entity::update_many()
                .col_expr(session::Column::RefreshHash, Expr::value("elsewhere"))
                .filter(session::Column::Id.eq("s1"))
                .exec(&holder)
                .await
                .unwrap();
            let on = db.backend();
            let done = rotate_behind(&conn, holder, &token, on).await;
            assert!(done.is_empty(), "on {on:?}: {done:?}");
            assert_eq!(current(&conn, "s1").await.as_deref(), Some("elsewhere"), "on {on:?}");
        }
    }

    // Two batches presenting the same two sessions' tokens in opposite orders, at once, many
    // times: the sessions are locked in the order of their ids, so neither batch deadlocks or
    // fails, and each token rotates exactly once.
    #[tokio::test]
    async fn batches_presenting_tokens_in_opposite_orders_rotate_each_once() {
        for (db, conn) in crate::testing::databases().await {
            let on = db.backend();
            for round in 0..20 {
                let (s1, s2) = (format!("s1-{round}"), format!("s2-{round}"));
                let t1 = session_with_token(&conn, &s1).await;
                let t2 = session_with_token(&conn, &s2).await;
                let forwards = vec![rotation(&s1, &t1), rotation(&s2, &t2)];
                let backwards = vec![rotation(&s2, &t2), rotation(&s1, &t1)];
                let (a, b) = tokio::join!(rotate(&conn, forwards), rotate(&conn, backwards));
                let (a, b) = (a.unwrap(), b.unwrap());
                for session in [&s1, &s2] {
                    let won: Vec<&Rotation> =
                        a.keys().chain(b.keys()).filter(|r| &r.session == session).collect();
                    assert_eq!(won.len(), 1, "on {on:?}, round {round}: {a:?} {b:?}");
                    let stored = current(&conn, session).await;
                    assert_eq!(stored, Some(secrets::digest(&won[0].next)), "on {on:?}");
                }
            }
        }
    }

    // Two batches presenting one token at once, on two connections: one rotates it, the other
    // finds it replaced (on PostgreSQL it waits on the row lock, then sees the commit), and
    // neither fails.
    #[tokio::test]
    async fn concurrent_batches_rotate_a_token_once() {
        for (db, conn) in crate::testing::databases().await {
            let token = session_with_token(&conn, "s1").await;
            let (first, second) = tokio::join!(
                rotate(&conn, vec![rotation("s1", &token)]),
                rotate(&conn, vec![rotation("s1", &token)])
            );
            let (first, second) = (first.unwrap(), second.unwrap());
            let on = db.backend();
            assert_eq!(first.len() + second.len(), 1, "on {on:?}: {first:?} {second:?}");
        }
    }

    // Through `Refreshes`: a family token reads as current until it is rotated, then as
    // replaced; the next token reads as current; a token of an unknown family, or without the
    // family's secret, reads as none or as replaced (never current).
    #[tokio::test]
    async fn a_family_token_is_current_until_rotated() {
        for (db, conn) in crate::testing::databases().await {
            let on = db.backend();
            let refreshes = Refreshes::new(&conn, Arc::new(at));
            let token = session_with_token(&conn, "s1").await;
            let presented = refreshes.read(&token).await.unwrap().unwrap();
            assert!(presented.current, "on {on:?}");
            assert_eq!(presented.session.id, "s1");
            let next = refreshes.rotate(&presented).await.unwrap().unwrap();
            assert_eq!(next.split_once('.').unwrap().0, token.split_once('.').unwrap().0);
            assert!(!refreshes.read(&token).await.unwrap().unwrap().current, "on {on:?}");
            assert!(refreshes.read(&next).await.unwrap().unwrap().current, "on {on:?}");
            assert!(refreshes.rotate(&presented).await.unwrap().is_none(), "on {on:?}");
            let (family, _) = token.split_once('.').unwrap();
            let forged = format!("{family}.{}", secrets::new_token());
            assert!(!refreshes.read(&forged).await.unwrap().unwrap().current, "on {on:?}");
            let stranger = new_family().token;
            assert!(refreshes.read(&stranger).await.unwrap().is_none(), "on {on:?}");
        }
    }

    // Anything not shaped like an issued token reads as none without failing the shared read
    // (PostgreSQL refuses a NUL in text, which would fail every call in the batch), and a
    // family is found only by its token's family, never by the digest the row stores.
    #[tokio::test]
    async fn tokens_not_shaped_like_issued_ones_are_none() {
        for (db, conn) in crate::testing::databases().await {
            let on = db.backend();
            let refreshes = Refreshes::new(&conn, Arc::new(at));
            let token = session_with_token(&conn, "s1").await;
            let (family, secret) = token.split_once('.').unwrap();
            let stored = secrets::digest(family);
            let nul = format!("{}\0.{secret}", &family[1..]);
            let malformed = [
                String::new(),
                ".".into(),
                format!("{family}."),
                format!(".{secret}"),
                format!("{family}.{secret}.{secret}"),
                format!("{family}.{secret}x"),
                nul,
                format!("{}é.{secret}", &family[2..]),
                format!("{stored}.{secret}"),
                "x".repeat(100_000),
            ];
            for presented in malformed {
                let read = refreshes.read(&presented).await;
                assert!(read.unwrap().is_none(), "on {on:?}: {presented:?}");
            }
            assert!(refreshes.read(&token).await.unwrap().unwrap().current, "on {on:?}");
        }
    }

    // A batch waiting on a session row that another transaction revokes finds it revoked after
    // the wait and rotates nothing.
    #[tokio::test]
    async fn a_batch_waiting_on_a_revocation_rotates_nothing() {
        for (db, conn) in crate::testing::databases().await {
            let token = session_with_token(&conn, "s1").await;
            let holder =
                steward_storage::begin_write(&conn, crate::IDEMPOTENCY.table()).await.unwrap();
            crate::state::revoke_sessions(&holder, "o1/a1", None, at()).await.unwrap();
            let on = db.backend();
            let done = rotate_behind(&conn, holder, &token, on).await;
            assert!(done.is_empty(), "on {on:?}: {done:?}");
            assert_eq!(current(&conn, "s1").await, Some(secrets::digest(&token)), "on {on:?}");
        }
    }

    // A token from before families (a row of `auth_refresh_tokens`) is current once: rotating
    // it marks it used and moves its session into a new family, whose token then rotates as
    // any; presenting the old token again reads as used.
    #[tokio::test]
    async fn a_token_from_before_families_moves_its_session_into_one() {
        for (db, conn) in crate::testing::databases().await {
            let on = db.backend();
            let refreshes = Refreshes::new(&conn, Arc::new(at));
            session_row(&conn, "s1", None, None).await;
            let legacy = secrets::new_token();
            refresh_token::Model {
                token_hash: secrets::digest(&legacy),
                session_id: "s1".into(),
                used_at: None,
                created_at: at(),
            }
            .into_active_model()
            .insert(&conn)
            .await
            .unwrap();
            let presented = refreshes.read(&legacy).await.unwrap().unwrap();
            assert!(presented.current, "on {on:?}");
            let next = refreshes.rotate(&presented).await.unwrap().unwrap();
            assert!(refreshes.rotate(&presented).await.unwrap().is_none(), "on {on:?}");
            assert!(!refreshes.read(&legacy).await.unwrap().unwrap().current, "on {on:?}");
            let moved = refreshes.read(&next).await.unwrap().unwrap();
            assert!(moved.current, "on {on:?}");
            assert_eq!(moved.session.id, "s1");
            assert!(refreshes.rotate(&moved).await.unwrap().is_some(), "on {on:?}");
        }
    }
}
