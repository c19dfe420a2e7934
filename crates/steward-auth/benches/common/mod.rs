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
pub fn median_ns(group: &str, bench: &str, since: SystemTime) -> Option<f64> {
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

/// Writes `report` as `target/bench/{name}.json`.
pub fn write_report(name: &str, report: &serde_json::Value) {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(report).unwrap())
        .unwrap();
}
