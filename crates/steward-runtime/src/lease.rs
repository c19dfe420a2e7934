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

/// Answers kept for their lease, by key (e.g. the caller's name and API key).
#[derive(Debug)]
pub struct Leases<K, V> {
    lease: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Leases<K, V> {
    /// Leases of `lease` (at most [`MAX_LEASE`]); zero keeps nothing.
    pub fn new(lease: Duration) -> Self {
        Self { lease: lease.min(MAX_LEASE), entries: Mutex::new(HashMap::new()) }
    }

    /// The longest lease kept.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The answer for `key`: the kept one while its lease lasts (with [`Reuse::Lease`]), else
    /// `read`'s, kept for the lease `read` gives with it (at most [`Self::lease`]; zero keeps
    /// nothing, e.g. for a refusal), counted from before `read` started.
    pub async fn read_through<E, F, Fut>(&self, key: K, reuse: Reuse, read: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        if reuse == Reuse::Lease {
            if let Some(kept) = self.get(&key) {
                return Ok(kept);
            }
        }
        let started = Instant::now();
        let (value, lease) = read().await?;
        self.put_within(key, started, lease, value.clone());
        Ok(value)
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
