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

    /// Takes one token, waiting for it when the bucket is empty.
    pub(crate) async fn take(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10, 5);
        let start = Instant::now();
        for _ in 0..5 {
            bucket.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            bucket.take().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(1100), "{elapsed:?}");
    }
}
