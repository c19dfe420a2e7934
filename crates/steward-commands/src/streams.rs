//! Limits of long-lived streams: how many `WatchRun` streams a caller and a run may hold (per
//! replica), and the message rate of an agent stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steward_runtime::config::StreamsConfig;
use steward_runtime::{ApiError, ApiResult};
use tokio::time::Instant;

/// Open `WatchRun` streams, counted per caller and per run.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    open: Mutex<HashMap<String, usize>>,
}

/// One admitted watcher; its counts go back when it is dropped (the stream ended).
#[derive(Debug)]
pub(crate) struct WatcherSlot {
    watchers: Arc<Watchers>,
    keys: [String; 2],
}

impl Watchers {
    /// Admits a watcher of `run` by `caller` within `limits`, or RESOURCE_EXHAUSTED.
    pub(crate) fn admit(
        self: &Arc<Self>,
        caller: &str,
        run: &str,
        limits: &StreamsConfig,
    ) -> ApiResult<WatcherSlot> {
        let keys = [format!("caller:{caller}"), format!("run:{run}")];
        let mut open = self.open.lock().map_err(|_| ApiError::internal("watchers poisoned"))?;
        let by_caller = open.get(&keys[0]).copied().unwrap_or(0);
        let by_run = open.get(&keys[1]).copied().unwrap_or(0);
        if by_caller >= limits.max_watchers_per_caller || by_run >= limits.max_watchers_per_run {
            return Err(ApiError::ResourceExhausted { retry_after: Duration::from_secs(5) });
        }
        for key in &keys {
            *open.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(WatcherSlot { watchers: self.clone(), keys })
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.watchers.open.lock() {
            for key in &self.keys {
                if let Some(count) = open.get_mut(key) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        open.remove(key);
                    }
                }
            }
        }
    }
}

/// The message buckets of agent streams, one per system, kept across reconnects (so a reconnect
/// does not refill it). Per replica; an entry costs a few bytes per system ever connected.
#[derive(Debug, Default)]
pub(crate) struct AgentBuckets {
    buckets: Mutex<HashMap<String, Arc<Mutex<TokenBucket>>>>,
}

impl AgentBuckets {
    /// Waits for `system`'s next token (`rate` a second, `burst` at once).
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    pub(crate) async fn take(&self, system: &str, rate: u32, burst: u32) {
        // A poisoned lock still holds a usable bucket: rate limiting never switches off.
        let bucket = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(system.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(TokenBucket::new(rate, burst))))
            .clone();
        let wait = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A token bucket: `rate` messages a second on average, `burst` at once.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate.max(1)), burst, tokens: burst, last: Instant::now() }
    }

    /// Takes one token at `now` and answers how long the caller must wait before using it (zero
    /// while the bucket holds tokens). A pure function of the bucket and the time, for tests.
    fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_are_capped_per_caller_and_per_run_and_released() {
        let limits = StreamsConfig {
            max_watchers_per_caller: 2,
            max_watchers_per_run: 3,
            ..StreamsConfig::default()
        };
        let watchers = Arc::new(Watchers::default());
        let a1 = watchers.admit("a", "r1", &limits).unwrap();
        let _a2 = watchers.admit("a", "r2", &limits).unwrap();
        assert!(watchers.admit("a", "r3", &limits).is_err(), "per caller");
        let _b = watchers.admit("b", "r1", &limits).unwrap();
        let _c = watchers.admit("c", "r1", &limits).unwrap();
        assert!(watchers.admit("d", "r1", &limits).is_err(), "per run");
        drop(a1);
        watchers.admit("a", "r3", &limits).unwrap();
        watchers.admit("d", "r1", &limits).unwrap();
    }

    // A reconnect does not refill a system's bucket: the same bucket serves every stream of the
    // system on this replica.
    #[tokio::test]
    async fn agent_buckets_are_kept_per_system() {
        let buckets = AgentBuckets::default();
        for _ in 0..3 {
            buckets.take("organizations/o/systems/a", 1, 3).await;
        }
        buckets.take("organizations/o/systems/b", 1, 3).await;
        let map = buckets.buckets.lock().unwrap();
        let a = map["organizations/o/systems/a"].lock().unwrap().tokens;
        let b = map["organizations/o/systems/b"].lock().unwrap().tokens;
        assert!(a < 0.5, "the burst of a is spent: {a}");
        assert!(b > 1.5, "b has its own: {b}");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5);
        bucket.last = start;
        for _ in 0..5 {
            assert_eq!(bucket.reserve(start), Duration::ZERO, "the burst is free");
        }
        // Ten more at once wait 0.1 s, 0.2 s, ... 1 s: ten per second.
        let waits: Vec<u64> = (0..10)
            .map(|_| (bucket.reserve(start).as_secs_f64() * 1000.0).round() as u64)
            .collect();
        assert_eq!(waits, vec![100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
        // After a quiet while the burst is back, and no more than the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(bucket.reserve(later), Duration::ZERO);
        }
        assert!(bucket.reserve(later) > Duration::ZERO);
    }
}
