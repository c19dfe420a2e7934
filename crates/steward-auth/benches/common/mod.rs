//! What the benchmarks share: where criterion writes, and reading its estimates back.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The Cargo target directory (criterion writes under it).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Criterion's median estimate of `bench` in `group` from this run (written after `since`), in
/// nanoseconds; `None` when this run did not measure it (e.g. a filter skipped it).
fn median_ns(group: &str, bench: &str, since: SystemTime) -> Option<f64> {
    let path = target_dir().join("criterion").join(group).join(bench).join("new/estimates.json");
    let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if written < since {
        return None;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("criterion estimates {}: {e}", path.display()));
    let estimates: serde_json::Value = serde_json::from_str(&text).unwrap();
    estimates.pointer("/median/point_estimate")?.as_f64()
}

/// Criterion's medians of `first` and `second` in `group` from this run, in nanoseconds; `None`
/// (said on stdout) unless this run measured both.
pub fn medians(group: &str, first: &str, second: &str, since: SystemTime) -> Option<(f64, f64)> {
    let both = median_ns(group, first, since).zip(median_ns(group, second, since));
    if both.is_none() {
        println!("both cases must run to compare them (no filter); nothing compared");
    }
    both
}

/// Writes `report` as `target/bench/{name}.json`.
pub fn write_report(name: &str, report: &serde_json::Value) {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(report).unwrap())
        .unwrap();
}
