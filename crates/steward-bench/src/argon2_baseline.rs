//! Sign-in's ceiling: raw argon2id on as many threads as the server hashes on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{outcome, Outcome};

/// The password-hashing threads of the Steward process `pid` (its threads named `argon2-N`),
/// read from Linux `/proc`; `None` where that cannot be read.
pub fn hashing_threads_of(pid: u32) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let count = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|name| name.starts_with("argon2-"))
        .count();
    (count > 0).then_some(count)
}

/// Hashes with argon2id (the parameters Steward stores passwords with: 19 MiB, two passes, one
/// lane) on `threads` threads (the server's hashing threads), for `duration`: the ceiling of
/// sign-in.
pub(crate) fn raw(threads: usize, duration: Duration) -> Outcome {
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                let Ok(params) = argon2::Params::new(19 * 1024, 2, 1, None) else {
                    return histogram;
                };
                let hasher = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let mut out = [0_u8; 32];
                while Instant::now() < deadline {
                    let start = Instant::now();
                    if hasher
                        .hash_password_into(b"correct horse", b"sixteen byte salt", &mut out)
                        .is_ok()
                    {
                        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                        if let Some(h) = histogram.as_mut() {
                            h.saturating_record(micros.max(1));
                        }
                    }
                }
                histogram
            })
        })
        .collect();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    for worker in workers {
        if let (Some(total), Ok(Some(h))) = (total.as_mut(), worker.join()) {
            let _ = total.add(&h);
        }
    }
    outcome("raw-argon2id", total.as_ref(), BTreeMap::new(), duration)
}
