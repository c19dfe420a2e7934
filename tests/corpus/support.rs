//! What every fuzz target shares: its case count, the committed corpus of `tests/corpus/`, the
//! corpus inputs as text, and the shape of a typed refusal. Included by path from each crate's
//! fuzz tests (`#[path = "../../../tests/corpus/support.rs"] mod support;`).

#![allow(dead_code)]

use std::path::PathBuf;

use proptest::prelude::ProptestConfig;
use steward_runtime::{names, ApiError};

/// The default case count unless `PROPTEST_CASES` says otherwise.
pub fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// Every file of `tests/corpus/{target}`, sorted, as (file name, bytes).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// A corpus input as the pure functions see it, and the same repeated to at least 1 MiB.
pub fn variants(bytes: &[u8]) -> [String; 2] {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let times = (1 << 20) / text.len().max(1) + 1;
    [text.clone(), text.repeat(times)]
}

/// Longest violation description any refusal here may carry: the template plus one quoted
/// value of at most `names::MAX_SHOWN_CHARS` characters (escaped, so up to 10 bytes each).
pub const MAX_DESCRIPTION_CHARS: usize = 300 + names::MAX_SHOWN_CHARS * 10;

/// Checks `err` is one `INVALID_ARGUMENT` violation on `field`, bounded and without a raw
/// control or bidirectional character (a hostile value must not bloat or reorder the answer).
pub fn assert_refused_on(err: &ApiError, field: &str) {
    let ApiError::InvalidArgument(violations) = err else {
        panic!("expected INVALID_ARGUMENT on {field}, got {err:?}");
    };
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, field);
    let description = &violations[0].description;
    assert!(
        description.chars().count() <= MAX_DESCRIPTION_CHARS,
        "a {}-character description",
        description.chars().count()
    );
    assert!(
        !description.chars().any(|c| c.is_control() || names::is_bidi_control(c)),
        "raw control character in {description:?}"
    );
}
