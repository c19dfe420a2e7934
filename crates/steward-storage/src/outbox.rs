//! The transactional outbox: a cross-service side effect (send the invite, revoke sessions,
//! remove grants, record an audit event) is written to the service's own outbox table in the
//! same transaction as the change, and a background relay delivers it with retries and
//! exponential backoff. Delivery is at-least-once; each message carries an idempotency key the
//! receiver uses to ignore repeats. A crash or a peer outage delays a message, never drops it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sea_orm::sea_query::{Alias, ColumnDef, Expr, Order, Query, Table, TableCreateStatement};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};

/// One message waiting for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMessage {
    /// Row id (delivery order).
    pub id: i64,
    /// What to do, e.g. `auth.issue_invite`.
    pub topic: String,
    /// Stable key the receiver uses to deduplicate.
    pub idempotency_key: String,
    /// Arguments.
    pub payload: serde_json::Value,
    /// Failed attempts so far.
    pub attempts: i32,
}

/// Delivers one message; `Err` schedules a retry.
pub type Deliver =
    Arc<dyn Fn(OutboxMessage) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A service's outbox table.
#[derive(Clone, Copy, Debug)]
pub struct Outbox {
    table: &'static str,
}

const BATCH: u64 = 32;
const POLL: Duration = Duration::from_millis(200);
const MAX_BACKOFF_SECS: i64 = 60;

impl Outbox {
    /// The outbox stored in `table` (e.g. `admin_outbox`).
    pub const fn new(table: &'static str) -> Self {
        Self { table }
    }

    fn t(&self) -> Alias {
        Alias::new(self.table)
    }

    /// The table, for the owning service's migration.
    pub fn create_table(&self) -> TableCreateStatement {
        Table::create()
            .table(self.t())
            .if_not_exists()
            .col(
                ColumnDef::new(Alias::new("id"))
                    .big_integer()
                    .not_null()
                    .auto_increment()
                    .primary_key(),
            )
            .col(ColumnDef::new(Alias::new("topic")).string().not_null())
            .col(ColumnDef::new(Alias::new("idempotency_key")).string().not_null())
            .col(ColumnDef::new(Alias::new("payload")).text().not_null())
            .col(ColumnDef::new(Alias::new("attempts")).integer().not_null().default(0))
            .col(
                ColumnDef::new(Alias::new("next_attempt_at")).timestamp_with_time_zone().not_null(),
            )
            .col(ColumnDef::new(Alias::new("last_error")).text().null())
            .col(ColumnDef::new(Alias::new("created_at")).timestamp_with_time_zone().not_null())
            .to_owned()
    }

    /// Queues a message on `conn` (pass the transaction that makes the change).
    pub async fn enqueue<C: ConnectionTrait>(
        &self,
        conn: &C,
        topic: &str,
        idempotency_key: &str,
        payload: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let insert = Query::insert()
            .into_table(self.t())
            .columns(
                [
                    "topic",
                    "idempotency_key",
                    "payload",
                    "attempts",
                    "next_attempt_at",
                    "created_at",
                ]
                .map(Alias::new),
            )
            .values_panic([
                topic.into(),
                idempotency_key.into(),
                payload.to_string().into(),
                0.into(),
                now.into(),
                now.into(),
            ])
            .to_owned();
        conn.execute(conn.get_database_backend().build(&insert)).await?;
        Ok(())
    }

    /// Messages due at `now`, oldest first.
    pub async fn due(
        &self,
        db: &DatabaseConnection,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxMessage>, DbErr> {
        let select = Query::select()
            .columns(["id", "topic", "idempotency_key", "payload", "attempts"].map(Alias::new))
            .from(self.t())
            .and_where(Expr::col(Alias::new("next_attempt_at")).lte(now))
            .order_by(Alias::new("id"), Order::Asc)
            .limit(BATCH)
            .to_owned();
        let rows = db.query_all(db.get_database_backend().build(&select)).await?;
        rows.into_iter()
            .map(|row| {
                let payload: String = row.try_get("", "payload")?;
                Ok(OutboxMessage {
                    id: row.try_get("", "id")?,
                    topic: row.try_get("", "topic")?,
                    idempotency_key: row.try_get("", "idempotency_key")?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| DbErr::Custom(e.to_string()))?,
                    attempts: row.try_get("", "attempts")?,
                })
            })
            .collect()
    }

    /// The outbox's table.
    pub const fn table(&self) -> &'static str {
        self.table
    }

    /// Number of messages not yet delivered.
    pub async fn pending(&self, db: &DatabaseConnection) -> Result<i64, DbErr> {
        let sql = format!("SELECT COUNT(*) AS n FROM {}", self.table);
        let row = db
            .query_one(Statement::from_string(db.get_database_backend(), sql))
            .await?
            .ok_or_else(|| DbErr::Custom("count returned no row".into()))?;
        row.try_get("", "n")
    }

    async fn delivered(&self, db: &DatabaseConnection, id: i64) -> Result<(), DbErr> {
        let delete = Query::delete()
            .from_table(self.t())
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .to_owned();
        db.execute(db.get_database_backend().build(&delete)).await?;
        Ok(())
    }

    async fn failed(
        &self,
        db: &DatabaseConnection,
        message: &OutboxMessage,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let backoff =
            1_i64.checked_shl(message.attempts.clamp(0, 6) as u32).unwrap_or(MAX_BACKOFF_SECS);
        let next = now + chrono::Duration::seconds(backoff.min(MAX_BACKOFF_SECS));
        let update = Query::update()
            .table(self.t())
            .value(Alias::new("attempts"), message.attempts + 1)
            .value(Alias::new("next_attempt_at"), next)
            .value(Alias::new("last_error"), error.chars().take(500).collect::<String>())
            .and_where(Expr::col(Alias::new("id")).eq(message.id))
            .to_owned();
        db.execute(db.get_database_backend().build(&update)).await?;
        Ok(())
    }

    /// Delivers everything due once; returns how many messages were delivered.
    pub async fn relay_once(
        &self,
        db: &DatabaseConnection,
        deliver: &Deliver,
        now: DateTime<Utc>,
    ) -> Result<usize, DbErr> {
        let mut delivered = 0;
        for message in self.due(db, now).await? {
            let id = message.id;
            let topic = message.topic.clone();
            match deliver(message.clone()).await {
                Ok(()) => {
                    self.delivered(db, id).await?;
                    delivered += 1;
                }
                Err(error) => {
                    tracing::warn!(outbox = self.table, %topic, attempts = message.attempts + 1, %error, "outbox delivery failed, will retry");
                    self.failed(db, &message, &error, now).await?;
                }
            }
        }
        Ok(delivered)
    }

    /// Runs the relay until the task is aborted.
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    pub fn spawn_relay(
        self,
        db: DatabaseConnection,
        deliver: Deliver,
        clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.relay_once(&db, &deliver, clock()).await {
                    // A full batch went out: more is likely waiting, so a burst drains at
                    // delivery speed rather than one batch per poll.
                    Ok(delivered) if u64::try_from(delivered).unwrap_or(u64::MAX) >= BATCH => {
                        continue
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(outbox = self.table, error = %err, "outbox relay pass failed");
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }
}
