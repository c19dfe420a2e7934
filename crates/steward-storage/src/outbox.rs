//! The transactional outbox: a cross-service side effect (send the invite, revoke sessions,
//! remove grants, record an audit event) is written to the service's own outbox table in the
//! same transaction as the change, and a background relay delivers it with retries and
//! exponential backoff. A crash or a peer outage delays a message, never drops it.
//!
//! # Delivery guarantee
//!
//! Every replica of a service runs a relay over the same table. Before delivering a message a
//! relay **claims** it: one conditional update pushes the row's `next_attempt_at` to
//! `now + lease` where the row is still due (`next_attempt_at <= now`), and the relay delivers
//! only when that update changed the row. On PostgreSQL the row lock makes a concurrent claim
//! wait and then re-check the condition, which no longer holds; SQLite has one writer at a time.
//! So two relays never deliver the same message at once, and no schema change was needed: the
//! lease is the retry time the table always had.
//!
//! Each delivery is abandoned after half the lease ([`Outbox::delivery_timeout`]; the other
//! half covers the bookkeeping after it and clock skew between replicas), so a relay that is
//! alive always finishes with a message before its lease ends. Delivered, the row is deleted;
//! failed, it is given back with a backoff (1 s doubling to 60 s), unless another relay has
//! claimed it since. A relay killed mid-delivery leaves its claim behind, and the message is
//! taken again once the lease has passed. Delivery is therefore **at least once, never
//! concurrent**: a message can be delivered again only when an earlier attempt's outcome was
//! lost (the relay died, or the receiver did the work but its answer did not arrive), so each
//! message carries an idempotency key its receiver uses to ignore repeats.
//!
//! The lease is `outbox.lease_secs` (120 s by default, at least 2 s), so a delivery gets 60 s:
//! more than an internal call, which times out after 15 s, and as much as one command of the
//! SMTP client. A delivery abandoned after its server did the work is delivered again, so half
//! the lease must stay above the slowest delivery that can still succeed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
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
    /// When it was queued (unset for a message that never went through the table).
    pub created_at: Option<DateTime<Utc>>,
}

/// Delivers one message; `Err` schedules a retry.
pub type Deliver =
    Arc<dyn Fn(OutboxMessage) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The time a relay goes by (the service's injected clock).
pub type Now<'a> = &'a (dyn Fn() -> DateTime<Utc> + Send + Sync);

/// A service's outbox table.
#[derive(Clone, Copy, Debug)]
pub struct Outbox {
    table: &'static str,
    lease: Duration,
}

/// The lease of an outbox that was not given one ([`Outbox::with_lease`]).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

const BATCH: u64 = 32;
const POLL: Duration = Duration::from_millis(200);
const MAX_BACKOFF_SECS: i64 = 60;

/// What one relay pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pass {
    /// Messages that were due when the pass began.
    due: usize,
    /// Delivered and deleted.
    delivered: usize,
    /// Claimed by another relay first.
    taken: usize,
}

impl Outbox {
    /// The outbox stored in `table` (e.g. `admin_outbox`).
    pub const fn new(table: &'static str) -> Self {
        Self { table, lease: DEFAULT_LEASE }
    }

    /// The same outbox, claiming each message for `lease` (at least 2 s) before delivering it.
    pub const fn with_lease(self, lease: Duration) -> Self {
        let lease = if lease.as_secs() < 2 { Duration::from_secs(2) } else { lease };
        Self { table: self.table, lease }
    }

    /// How long a claim holds a message.
    pub const fn lease(&self) -> Duration {
        self.lease
    }

    /// How long one delivery may take before it is abandoned (and counted as failed): half the
    /// lease.
    pub fn delivery_timeout(&self) -> Duration {
        self.lease / 2
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
            .columns(
                ["id", "topic", "idempotency_key", "payload", "attempts", "created_at"]
                    .map(Alias::new),
            )
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
                    created_at: Some(row.try_get("", "created_at")?),
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

    /// Claims message `id` for one delivery at `now`: its next attempt moves to the end of the
    /// lease, provided it is due. Returns the end of the lease when this caller holds the
    /// message, `None` when it is not due (another relay holds it, it is backing off, or it is
    /// gone).
    pub async fn claim(
        &self,
        db: &DatabaseConnection,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, DbErr> {
        let lease = chrono::Duration::from_std(self.lease)
            .map_err(|e| DbErr::Custom(format!("outbox lease: {e}")))?;
        // Microseconds, as both databases store them: the lease end is compared for equality
        // when the message is given back.
        let until = (now + lease).trunc_subsecs(6);
        let update = Query::update()
            .table(self.t())
            .value(Alias::new("next_attempt_at"), until)
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .and_where(Expr::col(Alias::new("next_attempt_at")).lte(now))
            .to_owned();
        let done = db.execute(db.get_database_backend().build(&update)).await?;
        Ok((done.rows_affected() == 1).then_some(until))
    }

    async fn delivered(&self, db: &DatabaseConnection, id: i64) -> Result<(), DbErr> {
        let delete = Query::delete()
            .from_table(self.t())
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .to_owned();
        db.execute(db.get_database_backend().build(&delete)).await?;
        Ok(())
    }

    /// Gives a message whose delivery failed back with a backoff, unless its lease (ending at
    /// `until`) was lost meanwhile: then another relay holds it and its claim stands.
    async fn failed(
        &self,
        db: &DatabaseConnection,
        message: &OutboxMessage,
        until: DateTime<Utc>,
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
            .and_where(Expr::col(Alias::new("next_attempt_at")).eq(until))
            .to_owned();
        db.execute(db.get_database_backend().build(&update)).await?;
        Ok(())
    }

    /// Delivers everything due, each message under a claim of its own; returns how many
    /// messages this relay delivered. `now` is read again for each claim, so a slow batch never
    /// claims with a stale time.
    pub async fn relay_once(
        &self,
        db: &DatabaseConnection,
        deliver: &Deliver,
        now: Now<'_>,
    ) -> Result<usize, DbErr> {
        Ok(self.pass(db, deliver, now).await?.delivered)
    }

    async fn pass(
        &self,
        db: &DatabaseConnection,
        deliver: &Deliver,
        now: Now<'_>,
    ) -> Result<Pass, DbErr> {
        let due = self.due(db, now()).await?;
        let mut pass = Pass { due: due.len(), ..Pass::default() };
        for message in due {
            let Some(until) = self.claim(db, message.id, now()).await? else {
                pass.taken += 1;
                continue;
            };
            let topic = message.topic.clone();
            let outcome = tokio::time::timeout(self.delivery_timeout(), deliver(message.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("delivery took longer than {:?}", self.delivery_timeout()))
                });
            match outcome {
                Ok(()) => {
                    self.delivered(db, message.id).await?;
                    pass.delivered += 1;
                }
                Err(error) => {
                    tracing::warn!(outbox = self.table, %topic, attempts = message.attempts + 1, %error, "outbox delivery failed, will retry");
                    self.failed(db, &message, until, &error, now()).await?;
                }
            }
        }
        Ok(pass)
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
                match self.pass(&db, &deliver, clock.as_ref()).await {
                    // A full batch went out (here or on another replica): more is likely
                    // waiting, so a burst drains at delivery speed rather than one batch per
                    // poll. Claimed and failed rows are no longer due, so this never spins.
                    Ok(pass)
                        if u64::try_from(pass.due).unwrap_or(0) >= BATCH
                            && pass.delivered + pass.taken > 0 =>
                    {
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
