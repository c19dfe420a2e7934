//! Event-driven dispatch: the agent sessions a replica holds, and waking exactly the ones a
//! write concerns.
//!
//! Each replica keeps its open agent sessions in a `Dispatch` hub, keyed by system. A write
//! that gives a system something to do (a queued run, a cancellation, a claim put back) or
//! takes its stream away (a newer session claimed the system, the system was deleted)
//! announces (`Dispatch::announce`) the systems it concerns:
//!
//! - on this replica, the sessions of those systems are woken once the write has committed;
//! - on PostgreSQL, the transaction also sends `NOTIFY steward_dispatch` with the systems'
//!   names, delivered to every replica when (and only if) the write commits. Each replica
//!   `LISTEN`s on one dedicated connection and wakes the sessions it holds for those systems.
//!   After the listening connection is lost and re-established, every local session is woken
//!   once, since notifications sent meanwhile are gone.
//!
//! A woken session reads its system and its pending work; an idle session costs no query. Two
//! per-replica passes are the safety net, and neither grows with the number of idle agents
//! beyond one batched statement per `TOUCH_BATCH` systems:
//!
//! - the **sweep** (every `streams.dispatch_sweep_secs`) asks the database which connected
//!   systems have unclaimed work or an unsent cancellation and wakes those held here. On SQLite,
//!   which has no notifications, it is how a run created by another process sharing the file
//!   reaches its agents, and there every third sweep also checks (in batches) that each local
//!   session still holds its system, so a newer stream or a deletion by another process ends it;
//! - the **touch** (every `TOUCH_INTERVAL`) records `last_seen_time` for every system
//!   connected here, and wakes the sessions whose system now has another stream (or is gone),
//!   so they end.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect, Statement,
};
use steward_proto::commands::v1::RunState;
use tokio::sync::Notify;

use crate::entity::{result, system};
use crate::State;

/// The PostgreSQL notification channel that carries wakes between replicas.
pub(crate) const CHANNEL: &str = "steward_dispatch";
/// How often each replica records that its connected systems are still there: a third of the
/// agent deadline, so two missed passes still leave a connected system fresh.
pub(crate) const TOUCH_INTERVAL: Duration = Duration::from_secs(20);
/// Systems touched (or checked) per statement.
pub(crate) const TOUCH_BATCH: usize = 500;
/// On SQLite, every how many sweeps each local session's system is checked (a statement per
/// [`TOUCH_BATCH`] sessions).
const REPLACED_EVERY: u64 = 3;
/// Largest NOTIFY payload sent (PostgreSQL's limit is 8,000 bytes).
const MAX_PAYLOAD: usize = 7_000;

/// The agent sessions of one replica.
#[derive(Debug)]
pub(crate) struct Dispatch {
    /// Tells this replica's own notifications apart (it has woken its sessions already).
    replica: String,
    sessions: Mutex<HashMap<String, Vec<Slot>>>,
}

#[derive(Debug, Clone)]
struct Slot {
    stream: String,
    wake: Arc<Notify>,
}

/// One session's place in the hub; leaves it when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    dispatch: Arc<Dispatch>,
    system: String,
    stream: String,
    /// Notified when the session has something to look at.
    pub wake: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sessions = self.dispatch.lock();
        if let Some(slots) = sessions.get_mut(&self.system) {
            slots.retain(|slot| slot.stream != self.stream);
            if slots.is_empty() {
                sessions.remove(&self.system);
            }
        }
    }
}

impl Dispatch {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { replica: steward_runtime::names::new_id(), sessions: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Slot>>> {
        // The map stays consistent whatever a panicking holder did: recover it.
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the session `stream` of `system`, waking any older local session of the same system
    /// (so it ends). The new session looks for work once its agent says hello.
    pub(crate) fn register(self: &Arc<Self>, system: &str, stream: &str) -> Registration {
        let wake = Arc::new(Notify::new());
        let mut sessions = self.lock();
        let slots = sessions.entry(system.to_string()).or_default();
        for older in slots.iter() {
            older.wake.notify_one();
        }
        slots.push(Slot { stream: stream.to_string(), wake: wake.clone() });
        drop(sessions);
        Registration {
            dispatch: self.clone(),
            system: system.to_string(),
            stream: stream.to_string(),
            wake,
        }
    }

    /// Wakes the local sessions of `systems`.
    pub(crate) fn wake<'a>(&self, systems: impl IntoIterator<Item = &'a str>) {
        let sessions = self.lock();
        for system in systems {
            for slot in sessions.get(system).into_iter().flatten() {
                slot.wake.notify_one();
            }
        }
    }

    /// Wakes every local session.
    pub(crate) fn wake_all(&self) {
        for slot in self.lock().values().flatten() {
            slot.wake.notify_one();
        }
    }

    /// Systems connected to this replica.
    pub(crate) fn connected(&self) -> usize {
        self.lock().len()
    }

    /// The (system, stream) pairs held here.
    fn streams(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .flat_map(|(system, slots)| {
                slots.iter().map(move |slot| (system.clone(), slot.stream.clone()))
            })
            .collect()
    }

    /// Wakes the local sessions whose stream is not among `current` (system → its stream now).
    fn wake_replaced(&self, checked: &[(String, String)], current: &HashMap<String, String>) {
        let sessions = self.lock();
        for (system, stream) in checked {
            if current.get(system) != Some(stream) {
                for slot in sessions.get(system).into_iter().flatten() {
                    if &slot.stream == stream {
                        slot.wake.notify_one();
                    }
                }
            }
        }
    }

    /// Tells the other replicas, when `conn`'s transaction commits, that `systems` have
    /// something for their sessions (PostgreSQL `NOTIFY`; nothing to send on SQLite). The
    /// caller wakes this replica's own sessions with [`Dispatch::wake`] after the commit.
    pub(crate) async fn announce<C: ConnectionTrait>(
        &self,
        conn: &C,
        systems: &[String],
    ) -> Result<(), DbErr> {
        if conn.get_database_backend() != DbBackend::Postgres || systems.is_empty() {
            return Ok(());
        }
        let mut payload = self.replica.clone();
        for system in systems {
            if payload.len() + system.len() + 1 > MAX_PAYLOAD {
                notify(conn, std::mem::replace(&mut payload, self.replica.clone())).await?;
            }
            payload.push('\n');
            payload.push_str(system);
        }
        notify(conn, payload).await
    }

    /// Wakes the local sessions named by a notification from another replica.
    fn deliver(&self, payload: &str) {
        let mut lines = payload.lines();
        if lines.next() == Some(self.replica.as_str()) {
            return;
        }
        self.wake(lines);
    }
}

async fn notify<C: ConnectionTrait>(conn: &C, payload: String) -> Result<(), DbErr> {
    conn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), payload.into()],
    ))
    .await
    .map(|_| ())
}

/// Listens for other replicas' wakes on PostgreSQL, on a connection of its own (outside the
/// request pool), until the task is aborted. Does nothing on SQLite.
#[allow(clippy::disallowed_methods)] // wall-clock backoff between reconnection attempts
pub(crate) fn spawn_listener(
    db: &DatabaseConnection,
    url: String,
    dispatch: Arc<Dispatch>,
) -> Option<tokio::task::JoinHandle<()>> {
    if db.get_database_backend() != DbBackend::Postgres {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot connect the dispatch listener, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(err) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %err, "cannot LISTEN for dispatch, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Anything announced before this point was missed: every session looks once.
            dispatch.wake_all();
            tracing::debug!("dispatch listener ready");
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => dispatch.deliver(notification.payload()),
                    Ok(None) => {
                        tracing::info!("dispatch listener reconnected; waking every session");
                        dispatch.wake_all();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "dispatch listener failed, reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }))
}

/// Runs the sweep and the touch (see the module docs) until the task is aborted.
#[allow(clippy::disallowed_methods)] // wall-clock timers on purpose: safety-net polling
pub(crate) fn spawn_maintenance(state: State) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sweep_every = Duration::from_secs(state.streams.dispatch_sweep_secs.max(1));
        let mut sweep = tokio::time::interval(sweep_every);
        let mut touch = tokio::time::interval(TOUCH_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweeps: u64 = 0;
        loop {
            tokio::select! {
                _ = sweep.tick() => {
                    sweeps = sweeps.wrapping_add(1);
                    let swept = match sweep_pending(&state).await {
                        Ok(()) => sweep_replaced(&state, sweeps).await,
                        Err(err) => Err(err),
                    };
                    if let Err(err) = swept {
                        tracing::warn!(error = %err, "dispatch sweep failed");
                    }
                }
                _ = touch.tick() => {
                    if let Err(err) = touch_connected(&state).await {
                        tracing::warn!(error = %err, "recording connected systems failed");
                    }
                }
            }
        }
    })
}

/// Wakes the local sessions of connected systems with unclaimed work or an unsent cancellation.
async fn sweep_pending(state: &State) -> Result<(), DbErr> {
    if state.dispatch.connected() == 0 {
        return Ok(());
    }
    let connected = Query::select()
        .column(system::Column::Name)
        .from(system::Entity)
        .and_where(Expr::col(system::Column::StreamId).is_not_null())
        .to_owned();
    let unclaimed: Vec<String> = result::Entity::find()
        .select_only()
        .column(result::Column::System)
        .distinct()
        .filter(result::Column::State.eq(RunState::Queued as i32))
        .filter(result::Column::ClaimedBy.is_null())
        .filter(result::Column::CancelTime.is_null())
        .filter(result::Column::System.in_subquery(connected.clone()))
        .into_tuple()
        .all(&state.db)
        .await?;
    let cancelling: Vec<String> = result::Entity::find()
        .select_only()
        .column(result::Column::System)
        .distinct()
        .filter(result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]))
        .filter(result::Column::CancelTime.is_not_null())
        .filter(result::Column::CancelSent.eq(false))
        .filter(result::Column::System.in_subquery(connected))
        .into_tuple()
        .all(&state.db)
        .await?;
    state.dispatch.wake(unclaimed.iter().chain(&cancelling).map(String::as_str));
    Ok(())
}

/// Without notifications (SQLite), finds local sessions whose system another process gave a
/// newer stream or deleted, every [`REPLACED_EVERY`] sweeps.
async fn sweep_replaced(state: &State, sweeps: u64) -> Result<(), DbErr> {
    if state.db.get_database_backend() == DbBackend::Postgres || sweeps % REPLACED_EVERY != 0 {
        return Ok(());
    }
    for batch in state.dispatch.streams().chunks(TOUCH_BATCH) {
        wake_replaced(state, batch).await?;
    }
    Ok(())
}

/// Wakes the local sessions of `batch` whose system has another stream now (or was deleted),
/// so they end.
async fn wake_replaced(state: &State, batch: &[(String, String)]) -> Result<(), DbErr> {
    let systems: HashSet<&str> = batch.iter().map(|(system, _)| system.as_str()).collect();
    let current: HashMap<String, String> = system::Entity::find()
        .select_only()
        .column(system::Column::Name)
        .column(system::Column::StreamId)
        .filter(system::Column::Name.is_in(systems))
        .filter(system::Column::StreamId.is_not_null())
        .into_tuple::<(String, String)>()
        .all(&state.db)
        .await?
        .into_iter()
        .collect();
    state.dispatch.wake_replaced(batch, &current);
    Ok(())
}

/// Records `last_seen_time` of every system connected here, in batches, and wakes the sessions
/// whose system has another stream now (or was deleted) so they end.
async fn touch_connected(state: &State) -> Result<(), DbErr> {
    let held = state.dispatch.streams();
    let now = state.now();
    for batch in held.chunks(TOUCH_BATCH) {
        wake_replaced(state, batch).await?;
        system::Entity::update_many()
            .col_expr(system::Column::LastSeenTime, Expr::value(Some(now)))
            .filter(system::Column::StreamId.is_in(batch.iter().map(|(_, stream)| stream.clone())))
            .exec(&state.db)
            .await?;
    }
    Ok(())
}
