//! Idempotent requests: the answer to a request that carries a client `request_id` (public
//! RPCs) or an outbox `idempotency_key` (internal receivers), kept so that a retry returns the
//! first answer instead of acting twice.
//!
//! - **Key scheme**: `{operation}|{scope}|{request}` ([`Key`]). The operation keeps two RPCs
//!   that share a request id apart; the scope is whose request it is (the organization, the
//!   caller, or `internal` for service calls), so one tenant's request id never replays
//!   another's answer. A request id that unlocks a secret on replay is stored as a digest by
//!   the caller, never as is.
//! - **Storage**: one table per service (e.g. `admin_idempotency_keys`), written in the same
//!   transaction as the change it answers for, next to that service's [`outbox`](crate::outbox).
//! - **Replay**: [`Idempotency::recall`] returns what [`Idempotency::record`] stored: a resource
//!   name or a JSON answer, as the operation chooses.
//! - **Expiry**: rows older than [`RETENTION`] are removed by [`Idempotency::spawn_expiry`]; a
//!   retry after that acts as a new request.
//! - **Concurrency**: of two concurrent first requests with one key, one records its answer and
//!   the other gets [`RecordError::Conflict`] (ABORTED to the client, whose retry replays).
//! - **Upgrades** (expand, then contract): [`Adopt`] copies a service's earlier table into its
//!   current one and keeps it; until a later release drops it, [`Idempotency::recall`] also finds
//!   answers that pods of the previous version wrote there during a rolling deploy ([`Legacy`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    Alias, ColumnDef, Expr, Index, IndexCreateStatement, Query, Table, TableCreateStatement,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};

/// How long an answer is kept: longer than any client retries a request, and longer than any
/// outbox message waits for a peer that is down.
pub const RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// How often [`Idempotency::spawn_expiry`] removes expired rows.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// The key of one request: `{operation}|{scope}|{request}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    text: String,
    operation: usize,
    scope: usize,
}

impl Key {
    /// The key of `operation` requested by `scope` with `request`, or `None` when the request
    /// carries no id (it is then not idempotent).
    pub fn new(operation: &str, scope: &str, request: &str) -> Option<Self> {
        (!request.is_empty()).then(|| Self {
            text: format!("{operation}|{scope}|{request}"),
            operation: operation.len(),
            scope: operation.len() + 1 + scope.len(),
        })
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The operation part.
    pub fn operation(&self) -> &str {
        self.text.get(..self.operation).unwrap_or_default()
    }

    /// The scope part.
    pub fn scope(&self) -> &str {
        self.text.get(self.operation + 1..self.scope).unwrap_or_default()
    }

    /// The request part.
    pub fn request(&self) -> &str {
        self.text.get(self.scope + 1..).unwrap_or_default()
    }
}

/// Why an answer was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Another request with the same key recorded its answer first (a concurrent duplicate).
    #[error("a request with this id is already being served")]
    Conflict,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A service's earlier idempotency table, still read for one release after [`Adopt`] copied
/// it: pods of the previous version keep writing there during a rolling deploy.
#[derive(Clone, Copy, Debug)]
pub struct Legacy {
    /// The earlier table.
    pub table: &'static str,
    /// Its answer column.
    pub answer: &'static str,
    /// The earlier table's primary key for a current key (columns and values), or `None` when
    /// the earlier version never served that operation.
    pub lookup: fn(&Key) -> Option<LegacyKey>,
}

/// The primary key of a row of a [`Legacy`] table: column names and values.
pub type LegacyKey = Vec<(&'static str, String)>;

/// A service's idempotency table.
#[derive(Clone, Copy, Debug)]
pub struct Idempotency {
    table: &'static str,
    legacy: Option<Legacy>,
}

impl Idempotency {
    /// The answers stored in `table` (e.g. `admin_idempotency_keys`).
    pub const fn new(table: &'static str) -> Self {
        Self { table, legacy: None }
    }

    /// The same, also reading `legacy` on a miss (for the release after an [`Adopt`]).
    pub const fn with_legacy(table: &'static str, legacy: Legacy) -> Self {
        Self { table, legacy: Some(legacy) }
    }

    /// The table's name.
    pub const fn table(&self) -> &'static str {
        self.table
    }

    fn t(&self) -> Alias {
        Alias::new(self.table)
    }

    /// The table, for the owning service's migration.
    pub fn create_table(&self) -> TableCreateStatement {
        Table::create()
            .table(self.t())
            .if_not_exists()
            .col(ColumnDef::new(Alias::new("key")).string().not_null().primary_key())
            .col(ColumnDef::new(Alias::new("answer")).text().not_null())
            .col(ColumnDef::new(Alias::new("created_at")).timestamp_with_time_zone().not_null())
            .to_owned()
    }

    /// The index expiry uses, for the owning service's migration.
    pub fn create_index(&self) -> IndexCreateStatement {
        Index::create()
            .if_not_exists()
            .name(format!("{}_created_at", self.table))
            .table(self.t())
            .col(Alias::new("created_at"))
            .to_owned()
    }

    /// The answer recorded for `key`, if any (none for a request without an id).
    pub async fn recall<C: ConnectionTrait>(
        &self,
        conn: &C,
        key: Option<&Key>,
    ) -> Result<Option<String>, DbErr> {
        let Some(key) = key else { return Ok(None) };
        let select = Query::select()
            .expr_as(Expr::col(Alias::new("answer")), Alias::new("answer"))
            .from(self.t())
            .and_where(Expr::col(Alias::new("key")).eq(key.as_str()))
            .to_owned();
        let row = conn.query_one(conn.get_database_backend().build(&select)).await?;
        if let Some(row) = row {
            return row.try_get::<String>("", "answer").map(Some);
        }
        let Some(legacy) = self.legacy else { return Ok(None) };
        let Some(columns) = (legacy.lookup)(key) else { return Ok(None) };
        let mut select = Query::select()
            .expr_as(Expr::col(Alias::new(legacy.answer)), Alias::new("answer"))
            .from(Alias::new(legacy.table))
            .to_owned();
        for (column, value) in columns {
            select.and_where(Expr::col(Alias::new(column)).eq(value));
        }
        let row = conn.query_one(conn.get_database_backend().build(&select)).await?;
        row.map(|row| row.try_get::<String>("", "answer")).transpose()
    }

    /// Records `answer` for `key` on `conn` (pass the transaction that makes the change); does
    /// nothing for a request without an id. A second record of one key is
    /// [`RecordError::Conflict`], so two concurrent first requests cannot both act.
    pub async fn record<C: ConnectionTrait>(
        &self,
        conn: &C,
        key: Option<&Key>,
        answer: &str,
        now: DateTime<Utc>,
    ) -> Result<(), RecordError> {
        let Some(key) = key else { return Ok(()) };
        let insert = Query::insert()
            .into_table(self.t())
            .columns(["key", "answer", "created_at"].map(Alias::new))
            .values_panic([key.as_str().into(), answer.into(), now.into()])
            .to_owned();
        match conn.execute(conn.get_database_backend().build(&insert)).await {
            Ok(_) => Ok(()),
            Err(err) if crate::is_unique_violation(&err) => Err(RecordError::Conflict),
            Err(err) => Err(err.into()),
        }
    }

    /// Removes answers recorded before `now - RETENTION`; returns how many.
    pub async fn expire<C: ConnectionTrait>(
        &self,
        conn: &C,
        now: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        let delete = Query::delete()
            .from_table(self.t())
            .and_where(Expr::col(Alias::new("created_at")).lt(now - RETENTION))
            .to_owned();
        Ok(conn.execute(conn.get_database_backend().build(&delete)).await?.rows_affected())
    }

    /// Runs [`expire`](Self::expire) every hour until the task is aborted.
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    pub fn spawn_expiry(
        self,
        db: DatabaseConnection,
        clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.expire(&db, clock()).await {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::debug!(table = self.table, removed, "idempotency keys expired")
                    }
                    Err(err) => {
                        tracing::warn!(table = self.table, error = %err, "idempotency expiry failed")
                    }
                }
                tokio::time::sleep(EXPIRY_INTERVAL).await;
            }
        })
    }
}

/// The migration that moves a service's earlier idempotency records into its [`Idempotency`]
/// table (the "expand" step): creates the table and its index and copies every row `copy`
/// selects (as `key`, `answer`, `created_at`, the keys rewritten to the current scheme). The
/// earlier table stays for the previous version's pods during a rolling deploy (and a rollback);
/// a later release drops it. Every step is idempotent, so a migration interrupted on SQLite
/// (where it runs without a transaction) completes on the next start.
pub struct Adopt {
    /// The migration's name (`mYYYYMMDD_HHMMSS_...`).
    pub name: &'static str,
    /// The table moved into.
    pub into: Idempotency,
    /// The earlier table (kept).
    pub from: &'static str,
    /// `SELECT key, answer, created_at FROM {from} WHERE true`, portable to SQLite and PostgreSQL
    /// (SQLite needs the `WHERE` before the `ON CONFLICT` this is followed by).
    pub copy: &'static str,
}

impl sea_orm_migration::MigrationName for Adopt {
    fn name(&self) -> &str {
        self.name
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl sea_orm_migration::MigrationTrait for Adopt {
    async fn up(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), DbErr> {
        manager.create_table(self.into.create_table()).await?;
        manager.create_index(self.into.create_index()).await?;
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "INSERT INTO \"{}\" (\"key\", \"answer\", \"created_at\") {} \
             ON CONFLICT (\"key\") DO NOTHING",
            self.into.table, self.copy
        ))
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_scheme_and_need_a_request_id() {
        let key = Key::new("create_grant", "organizations/o/administrators/a", "r|1");
        let key = key.as_ref();
        assert_eq!(key.map(Key::as_str), Some("create_grant|organizations/o/administrators/a|r|1"));
        assert_eq!(key.map(Key::operation), Some("create_grant"));
        assert_eq!(key.map(Key::scope), Some("organizations/o/administrators/a"));
        assert_eq!(key.map(Key::request), Some("r|1"));
        assert_eq!(Key::new("create_grant", "scope", ""), None);
    }
}
