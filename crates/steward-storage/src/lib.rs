//! Storage shared by every Steward service: connecting to SQLite (the embedded default) or
//! PostgreSQL (production) by URL, running a service's migrations, the transaction helper for
//! invariant-bearing writes, the [`outbox`] and [`idempotency`] tables every service keeps, and
//! fresh per-test databases on both backends.

use std::path::Path;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

pub mod idempotency;
pub mod outbox;
pub mod testing;

pub use sea_orm;
pub use sea_orm_migration;

/// Storage failures at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL names neither SQLite nor PostgreSQL.
    #[error("unsupported database url `{0}`: use sqlite://... or postgres://...")]
    UnsupportedUrl(String),
    /// The database could not be reached or migrated.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The SQLite URL of `service`'s database file under `data_dir`, creating the directory.
pub fn sqlite_url(data_dir: &Path, service: &str) -> Result<String, StorageError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|source| StorageError::DataDir { path: data_dir.display().to_string(), source })?;
    Ok(format!("sqlite://{}?mode=rwc", data_dir.join(format!("{service}.db")).display()))
}

/// Opens a pool on `url`. SQLite gets WAL, foreign keys and a busy timeout so that writers
/// queue instead of failing.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, StorageError> {
    connect_with(url, max_connections, Duration::from_millis(DEFAULT_ACQUIRE_TIMEOUT_MS)).await
}

/// The default of `database.acquire_timeout_ms`: short enough that a call fails within 2 s
/// while the database is unreachable, long enough that a busy pool is not mistaken for it.
pub const DEFAULT_ACQUIRE_TIMEOUT_MS: u64 = 1500;

/// [`connect`] with the time a statement may wait for a pooled connection (or for a new one to
/// open) before failing: the bound on a call while the database is down.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<DatabaseConnection, StorageError> {
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres:")
        || url.starts_with("postgresql:"))
    {
        return Err(StorageError::UnsupportedUrl(redact(url)));
    }
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(max_connections.max(1))
        .min_connections(0)
        .acquire_timeout(acquire_timeout.max(Duration::from_millis(100)))
        // No round trip to check each connection as it leaves the pool: a broken connection
        // fails its statement instead, and is dropped. (The check cost a ping per query.)
        .test_before_acquire(false)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(15))
                // 512 KiB of page cache per connection instead of 2 MiB: every pooled
                // connection of every service keeps its own, and the operating system caches
                // the file for all of them. 10,000 agents on SQLite: 49 KiB of memory each
                // instead of 51.5, with the same call rates (docs/benchmarks.md).
                .pragma("cache_size", "-512")
        });
    let db = Database::connect(options).await?;
    tracing::info!(url = %redact(url), backend = ?db.get_database_backend(), "database connected");
    Ok(db)
}

/// Statement counters by label ([`count_statements`]).
static STATEMENTS: std::sync::LazyLock<
    std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Arc<std::sync::atomic::AtomicU64>>,
    >,
> = std::sync::LazyLock::new(Default::default);

fn statement_counter(label: &str) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let mut counters = STATEMENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    counters.entry(label.to_string()).or_default().clone()
}

/// Counts every statement `db` (and the clones made of it afterwards) runs under `label`, for
/// [`statements`]: what lets a test show that some work costs no query at all (an idle agent,
/// a heartbeat). One atomic add per statement. sea-orm reports statements made through its
/// query API; `execute_unprepared` (migrations, the readiness ping) and statements made on the
/// sqlx pool directly (the auth service's refresh-token rotation on PostgreSQL) are not counted.
pub fn count_statements(db: &mut DatabaseConnection, label: &str) {
    let counter = statement_counter(label);
    db.set_metric_callback(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Statements counted under `label` so far in this process (0 for an unknown label).
pub fn statements(label: &str) -> u64 {
    statement_counter(label).load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs every pending migration of `M`.
pub async fn migrate<M: MigratorTrait>(db: &DatabaseConnection) -> Result<(), StorageError> {
    M::up(db, None).await?;
    Ok(())
}

/// Connections of `db`'s pool: `(open, idle)`.
pub fn pool_connections(db: &DatabaseConnection) -> (u32, u32) {
    let idle = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    // Each accessor is called only on its own backend (they panic on another).
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), idle(pool.num_idle()))
        }
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), idle(pool.num_idle()))
        }
        _ => (0, 0),
    }
}

/// Answers whether the database responds (the readiness probe).
pub async fn ping(db: &DatabaseConnection) -> bool {
    db.execute_unprepared("SELECT 1").await.is_ok()
}

/// True for SQLite, whose writers are serialized by the database lock.
pub fn is_sqlite(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Sqlite
}

/// Opens a transaction that is going to write.
///
/// On SQLite a plain `BEGIN` is deferred: a transaction that reads first holds only a snapshot,
/// and if another connection commits before its first write, that write fails at once with
/// `SQLITE_BUSY` (the busy timeout does not apply to a stale snapshot). So on SQLite this takes
/// the database write lock before anything else, by a write that touches no row of `lock_table`
/// (any table of the service); concurrent writers then queue on the busy timeout instead of
/// failing. On PostgreSQL it is a plain `BEGIN`; row locks do the serializing there.
pub async fn begin_write(
    db: &DatabaseConnection,
    lock_table: &str,
) -> Result<DatabaseTransaction, DbErr> {
    let txn = db.begin().await?;
    if is_sqlite(&txn) {
        txn.execute_unprepared(&format!("DELETE FROM \"{lock_table}\" WHERE 1 = 0")).await?;
    }
    Ok(txn)
}

/// True when `err` is a unique-constraint violation (on either backend).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// `url` with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }
}
