//! Concurrent statements by key coalesced into one, never stale.
//!
//! Under load, many calls make the same kind of statement at once, each for its own key (an
//! administrator by id, a refresh token by digest). Every statement pays the same fixed cost —
//! a pooled connection, a round trip or a hop to SQLite's worker thread, parsing and planning —
//! however little it reads. A [`Coalescer`] runs one load at a time; keys asked for while it
//! runs queue, and the next load takes them all (up to [`MAX_BATCH`]) in one statement. One at
//! a time measured faster than two or four (larger batches, fewer statements: GetAdministrator
//! 0.38 of an empty call against 0.34, RefreshSession 0.14 against 0.13 and 0.11). Nothing
//! waits on a timer: an idle service loads each key as it comes, with no added latency, and
//! batches form only while the database is busy.
//!
//! Never stale: a key joins only a load that has not *started*. A call is answered by a load
//! that began after the call arrived, so it sees every write that returned before it, exactly
//! as its own statement would have.
//!
//! The queue holds one entry per call in flight, so the server's concurrency limit bounds it.
//! A caller that went away (cancelled, past its deadline) before its load started is left out
//! of it, and a load that takes longer than [`LOAD_TIMEOUT`] answers its callers `UNAVAILABLE`
//! (unless it commits: [`Coalescer::without_timeout`]). A load that finds the database unreachable
//! (`UNAVAILABLE`) answers the callers queued behind it the same at once, so in an outage a call
//! fails within one load's timeouts, as its own statement would, not after several.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::error::ApiError;

/// What a load answers: a value for each key it found (keys it did not find are absent), or
/// the error every caller of the load gets.
pub type Loaded<K, V> = Result<HashMap<K, V>, ApiError>;

type Load<K, V> =
    dyn Fn(Vec<K>) -> Pin<Box<dyn Future<Output = Loaded<K, V>> + Send>> + Send + Sync;

/// Longest a load may take before its callers are answered `UNAVAILABLE`: a stuck statement
/// must not hold the load slot for good.
pub const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Keys per load: a power of two, so [`padded`] lists stay within it.
pub const MAX_BATCH: usize = 128;

type Waiter<V> = oneshot::Sender<Result<Option<V>, ApiError>>;

/// Coalesces concurrent loads by key (see the module documentation).
pub struct Coalescer<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K, V> fmt::Debug for Coalescer<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer").field("timeout", &self.inner.timeout).finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    load: Box<Load<K, V>>,
    timeout: Option<std::time::Duration>,
    queue: Mutex<Queue<K, V>>,
}

struct Queue<K, V> {
    waiting: Vec<(K, Waiter<V>)>,
    /// Whether a load (a drain) is running.
    running: bool,
}

impl<K, V> Coalescer<K, V>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Loads with `load`, which is given distinct keys, at most [`MAX_BATCH`] at once, and
    /// answers those it found. A load is given up after [`LOAD_TIMEOUT`].
    pub fn new<F, Fut>(load: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Loaded<K, V>> + Send + 'static,
    {
        Self::with_timeout(Some(LOAD_TIMEOUT), load)
    }

    /// [`Coalescer::new`] for a load that commits: never given up on, as its callers must not
    /// be told it failed when it may have landed.
    pub fn without_timeout<F, Fut>(load: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Loaded<K, V>> + Send + 'static,
    {
        Self::with_timeout(None, load)
    }

    fn with_timeout<F, Fut>(timeout: Option<std::time::Duration>, load: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Loaded<K, V>> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                load: Box::new(move |keys| Box::pin(load(keys))),
                timeout,
                queue: Mutex::new(Queue { waiting: Vec::new(), running: false }),
            }),
        }
    }

    /// The value for `key` from a load that starts after this call (`None`: not found).
    pub async fn get(&self, key: K) -> Result<Option<V>, ApiError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.waiting.push((key, tx));
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(drain(Running::new(self.inner.clone())));
        }
        match rx.await {
            Ok(answer) => answer,
            // The load was dropped mid-way (its task aborted at shutdown).
            Err(_) => Err(ApiError::Unavailable("the read was interrupted, retry".into())),
        }
    }
}

/// A coalescer of `E`'s rows by a text column (`column IN (...)`, [`padded`]), each answered
/// under `key_of(row)`: e.g. administrators by id.
pub fn rows_by<E>(
    db: &sea_orm::DatabaseConnection,
    column: E::Column,
    key_of: fn(&E::Model) -> String,
) -> Coalescer<String, E::Model>
where
    E: sea_orm::EntityTrait,
    E::Model: Clone + Send + Sync + 'static,
    E::Column: Send + Sync + 'static,
{
    use sea_orm::{ColumnTrait, QueryFilter};
    let db = db.clone();
    Coalescer::new(move |keys: Vec<String>| {
        let db = db.clone();
        async move {
            let rows = E::find().filter(column.is_in(padded(keys))).all(&db).await?;
            Ok(rows.into_iter().map(|row| (key_of(&row), row)).collect())
        }
    })
}

/// `keys` padded to a power of two by repeating the last one, for an `IN (...)` list: a load
/// then makes one of a few statement shapes (1, 2, 4, ... keys) instead of one per batch size,
/// so the statements each pooled connection prepares and keeps stay few.
pub fn padded<T: Clone>(mut keys: Vec<T>) -> Vec<T> {
    if let Some(last) = keys.last().cloned() {
        keys.resize(keys.len().next_power_of_two(), last);
    }
    keys
}

/// `items` in chunks whose lengths are powers of two, longest first (13 items: 8, 4 and 1), for
/// multi-row inserts that cannot repeat a row: the same few statement shapes as [`padded`].
pub fn power_of_two_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let len = 1 << items.len().ilog2();
        let (chunk, rest) = items.split_at(len);
        items = rest;
        Some(chunk)
    })
}

/// Marks the drain stopped when it ends, however it ends. If callers still wait (a load that
/// panicked must not strand them), a new drain takes its place; a drain dropped before it ever
/// ran (its runtime shutting down) only marks it stopped.
struct Running<K, V>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    inner: Arc<Inner<K, V>>,
    started: bool,
    finished: bool,
}

impl<K, V> Running<K, V>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Marked running already (by the caller, under the queue's lock).
    fn new(inner: Arc<Inner<K, V>>) -> Self {
        Self { inner, started: false, finished: false }
    }
}

impl<K, V> Drop for Running<K, V>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Without a runtime (it is shutting down) no drain can take this one's place.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut queue = self.inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.running = self.started && !queue.waiting.is_empty() && runtime.is_some();
        if let Some(runtime) = runtime.filter(|_| queue.running) {
            // Still marked running: the new drain takes this one's place.
            runtime.spawn(drain(Running::new(self.inner.clone())));
        }
    }
}

/// Runs loads until no caller waits.
async fn drain<K, V>(mut running: Running<K, V>)
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    running.started = true;
    loop {
        let batch: Vec<(K, Waiter<V>)> = {
            let mut queue = running.inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            // Callers that went away (cancelled, past their deadline) are not loaded for: a
            // rotation nobody will receive must not be made.
            queue.waiting.retain(|(_, waiter)| !waiter.is_closed());
            if queue.waiting.is_empty() {
                queue.running = false;
                drop(queue);
                running.finished = true;
                return;
            }
            let take = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..take).collect()
        };
        let mut keys: Vec<K> = Vec::with_capacity(batch.len());
        for (key, _) in &batch {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        let load = (running.inner.load)(keys);
        let loaded = match running.inner.timeout {
            None => load.await,
            Some(limit) => match tokio::time::timeout(limit, load).await {
                Ok(loaded) => loaded,
                Err(_) => {
                    Err(ApiError::Unavailable("the database did not answer in time, retry".into()))
                }
            },
        };
        if let Err(unreachable @ ApiError::Unavailable(_)) = &loaded {
            // The database is unreachable: the callers that queued meanwhile are told so at
            // once instead of each waiting out another load's timeouts behind this one (an
            // error is no stale data; `UNAVAILABLE` asks them to retry).
            let mut queue = running.inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            for (_, waiter) in queue.waiting.drain(..) {
                let _ = waiter.send(Err(unreachable.clone()));
            }
            drop(queue);
        }
        for (key, waiter) in batch {
            let answer = match &loaded {
                Ok(found) => Ok(found.get(&key).cloned()),
                Err(err) => Err(err.clone()),
            };
            // A caller that went away no longer needs its answer.
            let _ = waiter.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// The keys of each load, in order.
    type Seen = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A load that records the keys of each call and answers `key * 10 + the load's number`,
    /// after `gate` is notified when one is given.
    fn counting(gate: Option<Arc<Notify>>) -> (Coalescer<u32, u32>, Seen, Arc<AtomicUsize>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (calls.clone(), started.clone());
        let coalescer = Coalescer::new(move |keys: Vec<u32>| {
            let (seen, count, gate) = (seen.clone(), count.clone(), gate.clone());
            async move {
                let number = u32::try_from(count.fetch_add(1, Ordering::SeqCst)).unwrap();
                seen.lock().unwrap().push(keys.clone());
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                Ok(keys.into_iter().filter(|k| *k != 0).map(|k| (k, k * 10 + number)).collect())
            }
        });
        (coalescer, calls, started)
    }

    #[test]
    fn statement_shapes_are_powers_of_two() {
        assert_eq!(padded(vec![1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(padded(vec![1, 2, 3, 4]), vec![1, 2, 3, 4]);
        assert_eq!(padded(Vec::<u8>::new()), Vec::<u8>::new());
        let items: Vec<u32> = (0..13).collect();
        let lengths: Vec<usize> = power_of_two_chunks(&items).map(<[u32]>::len).collect();
        assert_eq!(lengths, vec![8, 4, 1]);
        assert_eq!(power_of_two_chunks(&items).flatten().count(), 13);
    }

    #[tokio::test]
    async fn a_call_never_joins_a_load_that_started_before_it() {
        let gate = Arc::new(Notify::new());
        let (coalescer, calls, started) = counting(Some(gate.clone()));
        let first = tokio::spawn({
            let c = coalescer.clone();
            async move { c.get(7).await.unwrap() }
        });
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The first load is running: these three must wait for the next one.
        let later: Vec<_> = [7, 8, 7]
            .into_iter()
            .map(|k| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.get(k).await.unwrap() })
            })
            .collect();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Some(70));
        while started.load(Ordering::SeqCst) == 1 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        let mut answers = Vec::new();
        for task in later {
            answers.push(task.await.unwrap());
        }
        assert_eq!(answers, vec![Some(71), Some(81), Some(71)]);
        // One load for the three, each key once.
        assert_eq!(*calls.lock().unwrap(), vec![vec![7], vec![7, 8]]);
    }

    #[tokio::test]
    async fn an_idle_coalescer_loads_at_once_and_reports_what_is_missing() {
        let (coalescer, calls, _) = counting(None);
        assert_eq!(coalescer.get(3).await.unwrap(), Some(30));
        assert_eq!(coalescer.get(0).await.unwrap(), None);
        assert_eq!(*calls.lock().unwrap(), vec![vec![3], vec![0]]);
    }

    // A load that finds the database unreachable answers the callers queued behind it at
    // once: one load, five UNAVAILABLE answers.
    #[tokio::test]
    async fn an_unreachable_database_fails_the_queue_at_once() {
        let gate = Arc::new(Notify::new());
        let loads = Arc::new(AtomicUsize::new(0));
        let coalescer: Coalescer<u32, u32> = Coalescer::new({
            let (gate, loads) = (gate.clone(), loads.clone());
            move |_keys: Vec<u32>| {
                let (gate, loads) = (gate.clone(), loads.clone());
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Err(ApiError::Unavailable("database unavailable, retry later".into()))
                }
            }
        });
        let first = tokio::spawn({
            let c = coalescer.clone();
            async move { c.get(1).await }
        });
        while loads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let queued: Vec<_> = (2..6)
            .map(|k| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.get(k).await })
            })
            .collect();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert!(matches!(first.await.unwrap(), Err(ApiError::Unavailable(_))));
        for task in queued {
            assert!(matches!(task.await.unwrap(), Err(ApiError::Unavailable(_))));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "the queue waited for loads of its own");
    }

    #[tokio::test]
    async fn every_caller_of_a_failed_load_gets_its_error() {
        let coalescer: Coalescer<u32, u32> = Coalescer::new(|_keys: Vec<u32>| async {
            Err(ApiError::Unavailable("database unavailable, retry later".into()))
        });
        let tasks: Vec<_> = (0..5)
            .map(|k| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.get(k).await })
            })
            .collect();
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
        }
    }
}
