//! Short leases on the caller re-check, never stale across replicas.
//!
//! Every call re-checks its caller against the data (a token outlives a demotion or deletion by
//! its lifetime). A service answering thousands of calls a second from one caller may reuse
//! that answer for a short *lease* (`internal.caller_lease_ms`) instead of reading it again, on
//! one condition that keeps it never stale: every write that narrows what a caller holds (its
//! role or billing flag, `mfa_required`, the account or key existing, a role's permissions)
//! returns only once a lease has passed since its commit ([`wait_out`]).
//!
//! A lease runs from the moment its read *started*, before the database could have shown it
//! anything. A read that saw the state before a commit started before that commit, so its lease
//! ends before the writer's wait does: once the write has returned, no replica holds a lease on
//! what it changed, and the next call anywhere reads again. This is commit-wait, as in Spanner's
//! TrueTime, with each process's monotonic clock: it assumes only that clocks of the replicas
//! advance at the same rate within a margin ([`MARGIN`]), not that they agree.
//!
//! Only positive answers are kept: an account that is missing is read again on each call, so
//! creating one needs no wait.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Added to every writer's wait: tolerance for the rate of the replicas' monotonic clocks and
/// for the time between a lease's start and the read it guards.
pub const MARGIN: Duration = Duration::from_millis(5);

/// Longest lease accepted from the configuration.
pub const MAX_LEASE: Duration = Duration::from_secs(1);

/// Most entries held; past it expired entries are dropped, then all if none had expired.
const MAX_ENTRIES: usize = 16_384;

/// Whether an answer may come from a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Reads: an answer kept for its lease.
    Lease,
    /// Mutations and checks that must see every change committed before them: read on the
    /// call (the answer is still kept for the reads after it).
    Fresh,
}

/// The lease an admin service answer grants (its `caller_lease_ms`; 0 from versions before
/// leases, which wait nothing after their writes).
pub fn granted(caller_lease_ms: u32) -> Duration {
    Duration::from_millis(u64::from(caller_lease_ms))
}

/// What a read under way will answer: its value and the lease it grants.
type Answer<V> = Option<(V, Duration)>;

/// A read under way, which reads of its key may wait for instead of reading too.
#[derive(Debug)]
struct Reading<V> {
    started: Instant,
    answer: watch::Receiver<Answer<V>>,
}

/// Answers kept for their lease, by key (e.g. the caller's name and API key).
#[derive(Debug)]
pub struct Leases<K, V> {
    lease: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
    reading: Mutex<HashMap<K, Reading<V>>>,
}

/// Removes its read from [`Leases::reading`] when the read ends, however it ends (a dropped
/// sender wakes those waiting, who then read for themselves).
struct Registration<'a, K: Eq + Hash, V> {
    leases: &'a Leases<K, V>,
    key: K,
    answer: watch::Sender<Answer<V>>,
}

impl<K: Eq + Hash, V> Drop for Registration<'_, K, V> {
    fn drop(&mut self) {
        let mut reading = self.leases.reading.lock().unwrap_or_else(PoisonError::into_inner);
        // Unless a newer read of the key has taken its place.
        if reading.get(&self.key).is_some_and(|r| r.answer.same_channel(&self.answer.subscribe())) {
            reading.remove(&self.key);
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone + Send + Sync> Leases<K, V> {
    /// Leases of `lease` (at most [`MAX_LEASE`]); zero keeps nothing.
    pub fn new(lease: Duration) -> Self {
        Self {
            lease: lease.min(MAX_LEASE),
            entries: Mutex::new(HashMap::new()),
            reading: Mutex::new(HashMap::new()),
        }
    }

    /// The longest lease kept.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The answer for `key`: the kept one while its lease lasts (with [`Reuse::Lease`]), else
    /// `read`'s, kept for the lease `read` gives with it (at most [`Self::lease`]; zero keeps
    /// nothing, e.g. for a refusal), counted from before `read` started.
    ///
    /// With [`Reuse::Lease`], a read of `key` already under way that started less than a lease
    /// ago is waited for instead of read again: its answer, used within its lease from that
    /// start, is exactly what a kept one would be. So when a lease ends under load, one read
    /// renews it rather than one per call in flight. If that read fails, grants no lease, or
    /// ends past its lease, the waiting calls read for themselves.
    pub async fn read_through<E, F, Fut>(&self, key: K, reuse: Reuse, read: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        if reuse == Reuse::Lease {
            if let Some(kept) = self.get(&key) {
                return Ok(kept);
            }
            if let Some((began, mut under_way)) = self.joinable(&key) {
                // Waited for no longer than the lease it could give: past it, read anew.
                let until = tokio::time::Instant::from_std(began + self.lease);
                let answered = tokio::time::timeout_at(until, under_way.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|answer| answer.clone());
                // Used only within its lease, counted from the start of its read: as safe as
                // a kept answer.
                if let Some((value, lease)) = answered {
                    if Instant::now() < began + lease.min(self.lease) {
                        return Ok(value);
                    }
                }
            }
        }
        let started = Instant::now();
        let registration = self.register(&key, started);
        let (value, lease) = read().await?;
        self.put_within(key, started, lease, value.clone());
        if let Some(registration) = registration {
            registration.answer.send_replace(Some((value.clone(), lease)));
        }
        Ok(value)
    }

    /// The read of `key` under way, with when it started, if that is less than a lease ago.
    fn joinable(&self, key: &K) -> Option<(Instant, watch::Receiver<Answer<V>>)> {
        let reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        let under_way = reading.get(key)?;
        (under_way.started.elapsed() < self.lease)
            .then(|| (under_way.started, under_way.answer.clone()))
    }

    /// Announces a read of `key` that started at `started` (nothing while leases are off).
    fn register(&self, key: &K, started: Instant) -> Option<Registration<'_, K, V>> {
        if self.lease.is_zero() {
            return None;
        }
        let (answer, receiver) = watch::channel(None);
        let mut reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        if reading.len() >= MAX_ENTRIES {
            reading.retain(|_, r| r.started.elapsed() < self.lease);
        }
        reading.insert(key.clone(), Reading { started, answer: receiver });
        Some(Registration { leases: self, key: key.clone(), answer })
    }

    /// The answer for `key`, while its lease lasts.
    fn get(&self, key: &K) -> Option<V> {
        if self.lease.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (until, value) = entries.get(key)?;
        (Instant::now() < *until).then(|| value.clone())
    }

    /// Remembers `value` for `key` for at most `lease` (zero keeps nothing), read by a read
    /// that started at `started`.
    fn put_within(&self, key: K, started: Instant, lease: Duration, value: V) {
        let lease = lease.min(self.lease);
        if lease.is_zero() {
            return;
        }
        let until = started + lease;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (until, value));
    }
}

/// Waits out every lease of `lease` that a read started before now may hold: called by a
/// writer after its commit, before it answers. Zero waits nothing.
// Wall-clock (monotonic) timer on purpose: leases are measured in each process's real time,
// whatever the injected clock says.
#[allow(clippy::disallowed_methods)]
pub async fn wait_out(lease: Duration) {
    if !lease.is_zero() {
        tokio::time::sleep(lease.min(MAX_LEASE) + MARGIN).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn a_lease_runs_from_the_start_of_its_read() {
        let leases = Leases::new(Duration::from_millis(200));
        let long_ago = Instant::now() - Duration::from_millis(300);
        leases.put_within("stale", long_ago, leases.lease(), 1);
        assert_eq!(leases.get(&"stale"), None, "a lease counts from the read's start");
        leases.put_within("fresh", Instant::now(), leases.lease(), 2);
        assert_eq!(leases.get(&"fresh"), Some(2));
        assert_eq!(leases.get(&"unknown"), None);
    }

    #[tokio::test]
    async fn fresh_reads_again_and_keeps_what_it_read() {
        let leases = Leases::new(Duration::from_secs(1));
        let read = |v: u32| move || async move { Ok::<_, ()>((v, Duration::from_secs(1))) };
        assert_eq!(leases.read_through("k", Reuse::Lease, read(1)).await, Ok(1));
        assert_eq!(leases.read_through("k", Reuse::Lease, read(2)).await, Ok(1), "kept");
        assert_eq!(leases.read_through("k", Reuse::Fresh, read(3)).await, Ok(3), "read again");
        assert_eq!(leases.read_through("k", Reuse::Lease, read(4)).await, Ok(3), "and kept");
        let refused = || async { Ok::<_, ()>((5, Duration::ZERO)) };
        assert_eq!(leases.read_through("r", Reuse::Lease, refused).await, Ok(5));
        assert_eq!(leases.read_through("r", Reuse::Lease, read(6)).await, Ok(6), "not kept");
    }

    fn gated_read(
        gate: &std::sync::Arc<tokio::sync::Notify>,
        reads: &std::sync::Arc<AtomicU64>,
        value: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<(u32, Duration), ()>> {
        let (gate, reads) = (gate.clone(), reads.clone());
        async move {
            reads.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            Ok((value, lease))
        }
    }

    /// A read of `"k"` through `leases`, answering `value` with `lease` once the returned gate
    /// is opened: spawned, and under way when this returns.
    async fn read_under_way(
        leases: &std::sync::Arc<Leases<&'static str, u32>>,
        value: u32,
        lease: Duration,
    ) -> (std::sync::Arc<tokio::sync::Notify>, tokio::task::JoinHandle<Result<u32, ()>>) {
        let (gate, reads): (std::sync::Arc<tokio::sync::Notify>, std::sync::Arc<AtomicU64>) =
            Default::default();
        let task = tokio::spawn({
            let (leases, gate, reads) = (leases.clone(), gate.clone(), reads.clone());
            async move {
                let read = || gated_read(&gate, &reads, value, lease);
                leases.read_through("k", Reuse::Lease, read).await
            }
        });
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        (gate, task)
    }

    // Calls that find a read of their key under way wait for it: one read answers them all.
    #[tokio::test]
    async fn calls_wait_for_a_read_under_way() {
        let leases = std::sync::Arc::new(Leases::new(Duration::from_secs(1)));
        let (gate, reads) = Default::default();
        let lease = Duration::from_secs(1);
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let (leases, gate, reads) =
                    (leases.clone(), std::sync::Arc::clone(&gate), std::sync::Arc::clone(&reads));
                tokio::spawn(async move {
                    let read = || gated_read(&gate, &reads, i, lease);
                    leases.read_through("k", Reuse::Lease, read).await
                })
            })
            .collect();
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap().unwrap());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for eight calls");
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    }

    // A read under way for longer than a lease is not waited for, nor is one that grants no
    // lease (a refusal): those calls read for themselves.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // Leases run on the wall clock.
    async fn an_old_read_or_a_refusal_is_not_shared() {
        let leases = std::sync::Arc::new(Leases::new(Duration::from_millis(20)));
        let (gate, first) = read_under_way(&leases, 1, Duration::from_millis(20)).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        let own = || async { Ok::<_, ()>((2, Duration::from_millis(20))) };
        assert_eq!(leases.read_through("k", Reuse::Lease, own).await, Ok(2), "read again");
        gate.notify_waiters();
        assert_eq!(first.await.unwrap(), Ok(1));

        let refusing = std::sync::Arc::new(Leases::new(Duration::from_secs(1)));
        let (gate, refusal) = read_under_way(&refusing, 3, Duration::ZERO).await;
        let waiting = tokio::spawn({
            let leases = refusing.clone();
            async move {
                let own = || async { Ok::<_, ()>((4, Duration::from_secs(1))) };
                leases.read_through("k", Reuse::Lease, own).await
            }
        });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        assert_eq!(refusal.await.unwrap(), Ok(3));
        assert_eq!(waiting.await.unwrap(), Ok(4), "a refusal is not shared");
    }

    // A call that joined a read which then outlasts its lease stops waiting when the lease
    // would have ended and reads for itself: an answer from a read that started longer ago
    // than a lease is never used.
    #[tokio::test]
    async fn a_read_that_outlasts_its_lease_is_not_waited_for() {
        let leases = std::sync::Arc::new(Leases::new(Duration::from_millis(30)));
        let (gate, slow) = read_under_way(&leases, 1, Duration::from_secs(1)).await;
        // Joins at once, then the slow read's lease runs out while it waits.
        let own = || async { Ok::<_, ()>((2, Duration::from_secs(1))) };
        assert_eq!(leases.read_through("k", Reuse::Lease, own).await, Ok(2), "read anew");
        gate.notify_waiters();
        assert_eq!(slow.await.unwrap(), Ok(1));
    }

    #[test]
    fn zero_keeps_nothing() {
        let leases = Leases::new(Duration::ZERO);
        leases.put_within("k", Instant::now(), Duration::from_secs(1), 1);
        assert_eq!(leases.get(&"k"), None);
        let leases = Leases::new(Duration::from_millis(500));
        leases.put_within("k", Instant::now(), Duration::ZERO, 1);
        assert_eq!(leases.get(&"k"), None, "an answerer that waits nothing lends nothing");
    }

    #[test]
    fn the_shorter_of_the_two_leases_holds() {
        let leases = Leases::new(Duration::from_millis(500));
        let started = Instant::now() - Duration::from_millis(200);
        leases.put_within("short", started, Duration::from_millis(100), 1);
        assert_eq!(leases.get(&"short"), None, "the answerer's 100 ms are over");
        leases.put_within("long", started, Duration::from_secs(5), 2);
        assert_eq!(leases.get(&"long"), Some(2), "capped at the reader's 500 ms, still running");
    }

    #[test]
    fn a_full_map_drops_expired_entries_first() {
        let leases = Leases::new(Duration::from_millis(500));
        let expired = Instant::now() - Duration::from_secs(1);
        for i in 0..MAX_ENTRIES {
            leases.put_within(i, expired, leases.lease(), i);
        }
        leases.put_within(MAX_ENTRIES, Instant::now(), leases.lease(), 7);
        assert_eq!(leases.get(&MAX_ENTRIES), Some(7));
        let held = leases.entries.lock().unwrap().len();
        assert_eq!(held, 1, "expired entries are dropped before live ones");
    }
}
