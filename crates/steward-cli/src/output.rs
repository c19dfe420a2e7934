//! Printing results (text or JSON) and errors.

use std::io::Write;

use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

pub use crate::cli::Format;
use crate::error::{CliError, Result};

/// Writes `bytes` to stdout and flushes.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Stdio { context: "cannot write to stdout", source })
}

/// Writes `bytes` to stderr and flushes (errors ignored: there is nowhere left to report them).
pub fn write_stderr(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes).and_then(|()| err.flush());
}

/// Prints a line to stdout.
pub fn line(text: &str) -> Result<()> {
    write_stdout(format!("{text}\n").as_bytes())
}

/// Prints a note for people on stderr (never part of the machine-readable output).
pub fn note(text: &str) {
    write_stderr(format!("{text}\n").as_bytes());
}

/// Prints one resource: `key: value` lines (nested fields dotted), or the JSON document.
pub fn object(format: Format, value: &Value) -> Result<()> {
    match format {
        Format::Json => json_doc(value),
        Format::Text => write_stdout(text_object(value).as_bytes()),
    }
}

/// Prints a list: a table of `columns` no wider than [`TABLE_WIDTH`], or a JSON array of the
/// full values (JSON is never shortened).
pub fn list(format: Format, items: &[Value], columns: &[Column]) -> Result<()> {
    match format {
        Format::Json => json_doc(&Value::Array(items.to_vec())),
        Format::Text => write_stdout(text_table(items, columns, TABLE_WIDTH).as_bytes()),
    }
}

/// Prints a JSON document on one line of stdout.
pub fn json_doc(value: &Value) -> Result<()> {
    line(&value.to_string())
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let first = map.get_key_value("name").into_iter();
            let rest = map.iter().filter(|(k, _)| k.as_str() != "name");
            for (key, v) in first.chain(rest) {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().all(|v| !v.is_object()) => {
            let joined: Vec<String> = items.iter().filter_map(scalar).collect();
            if !joined.is_empty() {
                out.push((prefix.to_string(), joined.join(", ")));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            if let Some(text) = scalar(other) {
                out.push((prefix.to_string(), text));
            }
        }
    }
}

/// `key: value` lines for a JSON value; nulls and empty strings are left out.
pub fn text_object(value: &Value) -> String {
    let mut pairs = Vec::new();
    flatten("", value, &mut pairs);
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:width$}  {v}\n", format!("{k}:"), width = width + 1))
        .collect()
}

/// The widest a text table gets, in characters: cells are cut to fit, with an ellipsis.
pub const TABLE_WIDTH: usize = 120;

/// The space between two columns.
const GAP: usize = 2;

/// The narrowest a shortened cell gets (with its ellipsis).
const MIN_CELL: usize = 8;

/// How a table column shows its field.
#[derive(Debug, Clone, Copy)]
pub enum Show {
    /// A resource's own name as its ID (the last segment), which every command accepts.
    /// Kept whole unless nothing else can give way.
    Id,
    /// A name under a parent, as `{parent ID}/{collection}/{ID}` (grants, API keys): what
    /// the commands that take one accept. Kept whole unless nothing else can give way.
    ChildId,
    /// Another resource's name, shown by its ID (a list of names: IDs joined by commas). The
    /// first to give way, keeping the end of the ID.
    Ref,
    /// A readable name's last segment (`roles/command-runner` -> `command-runner`).
    Short,
    /// A name relative to its organization (`commands/C`), for fields naming any kind. Gives
    /// way early, keeping the collection and the end of the ID.
    Relative,
    /// Text as it is (display names, emails, descriptions).
    Text,
    /// An enum value without its prefix (`STATE_ACTIVE` -> `ACTIVE`).
    Enum(&'static str),
    /// An RFC 3339 time as `YYYY-MM-DD HH:MM` (UTC).
    Time,
    /// A value worked out from the whole item.
    Derived(fn(&Value) -> String),
}

/// One column of a text table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The header.
    pub header: &'static str,
    /// The field of the item (the JSON value) it shows.
    pub field: &'static str,
    /// How.
    pub show: Show,
}

impl Column {
    /// A column of `field` shown as `show`.
    pub const fn new(header: &'static str, field: &'static str, show: Show) -> Self {
        Self { header, field, show }
    }

    /// The `ID` column: the last segment of `name`.
    pub const fn id() -> Self {
        Self::new("ID", "name", Show::Id)
    }

    /// When its cells are cut to make a table fit: 0 first (other resources' names), then 1
    /// (text: display names, emails, times), then 2 (the rows' own IDs), only when nothing
    /// else can give way.
    fn gives_way(&self) -> u8 {
        match self.show {
            Show::Ref | Show::Relative => 0,
            Show::Short | Show::Text | Show::Enum(_) | Show::Time | Show::Derived(_) => 1,
            Show::Id | Show::ChildId => 2,
        }
    }

    /// The narrowest its cells get: enough of an ID's end to tell UUIDs apart (their last
    /// group is random), a collection with that much of an ID, else [`MIN_CELL`]; never less
    /// than the header.
    fn floor(&self) -> usize {
        let floor = match self.show {
            Show::Ref => 13,
            Show::Relative => 24,
            _ => MIN_CELL,
        };
        floor.max(self.header.chars().count())
    }

    /// `cell` cut to `width`: IDs of other resources keep their end (a UUIDv7 starts with its
    /// time, so the end tells them apart), relative names their collection and the end of
    /// the rest, everything else its start.
    fn cut(&self, cell: &str, width: usize) -> String {
        match (self.show, cell.split_once('/')) {
            (Show::Ref, _) => ellipsize_start(cell, width),
            (Show::Relative, Some((collection, rest)))
                if cell.chars().count() > width && collection.chars().count() + 8 <= width =>
            {
                let room = width - collection.chars().count() - 1;
                format!("{collection}/{}", ellipsize_start(rest, room))
            }
            _ => ellipsize(cell, width),
        }
    }

    fn cell(&self, item: &Value) -> String {
        let field = item.get(self.field);
        let text = || field.and_then(scalar).unwrap_or_default();
        match self.show {
            Show::Id | Show::Short => crate::names::id(&text()).to_string(),
            Show::ChildId => child_id(&text()),
            Show::Ref => match field {
                Some(Value::Array(values)) => values
                    .iter()
                    .filter_map(scalar)
                    .map(|v| crate::names::id(&v).to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => crate::names::id(&text()).to_string(),
            },
            Show::Relative => relative(&text()).to_string(),
            Show::Text => match field {
                Some(Value::Array(values)) => {
                    values.iter().filter_map(scalar).collect::<Vec<_>>().join(",")
                }
                _ => text(),
            },
            Show::Enum(prefix) => {
                let text = text();
                text.strip_prefix(prefix).map(str::to_string).unwrap_or(text)
            }
            Show::Time => short_time(&text()),
            Show::Derived(derive) => derive(item),
        }
    }
}

/// `organizations/o/commands/c/grants/g` -> `c/grants/g`: the name without its organization
/// and first collection.
fn child_id(name: &str) -> String {
    let relative = relative(name);
    match relative.split_once('/') {
        Some((_, rest)) if rest.contains('/') => rest.to_string(),
        _ => crate::names::id(relative).to_string(),
    }
}

/// `organizations/o/commands/c` -> `commands/c`; other names unchanged.
fn relative(name: &str) -> &str {
    name.strip_prefix("organizations/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(name, |(_, rest)| rest)
}

/// `2026-03-01T12:34:56Z` -> `2026-03-01 12:34`; anything else unchanged.
fn short_time(text: &str) -> String {
    match (text.get(..10), text.get(11..16), text.get(10..11)) {
        (Some(day), Some(minute), Some("T")) => format!("{day} {minute}"),
        _ => text.to_string(),
    }
}

/// `text` cut to `width` characters, the last of them an ellipsis when anything was cut.
pub fn ellipsize(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// `text` cut to `width` characters, the first of them an ellipsis when anything was cut.
pub fn ellipsize_start(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut = String::from('…');
    cut.extend(text.chars().skip(count - (width - 1)));
    cut
}

/// Column widths that fit `max` (with the gaps): columns give way by tier (see
/// [`Column::gives_way`]), the widest of a tier first, each down to its floor ([`MIN_CELL`]
/// or its header).
fn fit(natural: &[usize], floors: &[usize], tiers: &[u8], max: usize) -> Vec<usize> {
    let mut widths = natural.to_vec();
    let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
    for tier in 0..=2 {
        while total(&widths) > max {
            let widest = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| {
                    tiers.get(*i).copied() == Some(tier) && floors.get(*i).is_some_and(|f| **w > *f)
                })
                .max_by_key(|(_, w)| **w)
                .map(|(i, _)| i);
            match widest.and_then(|i| widths.get_mut(i)) {
                Some(w) => *w -= 1,
                None => break,
            }
        }
    }
    widths
}

/// An aligned table with a header row, at most `max` characters wide.
pub fn text_table(items: &[Value], columns: &[Column], max: usize) -> String {
    let mut rows: Vec<Vec<String>> = vec![columns.iter().map(|c| c.header.to_string()).collect()];
    rows.extend(items.iter().map(|item| columns.iter().map(|c| c.cell(item)).collect()));
    let natural: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let floors: Vec<usize> = columns.iter().map(Column::floor).collect();
    let tiers: Vec<u8> = columns.iter().map(Column::gives_way).collect();
    let widths = fit(&natural, &floors, &tiers, max);
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(columns.iter().zip(&widths))
            .map(|(c, (column, w))| format!("{:w$}", column.cut(c, *w), w = *w))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The canonical name of a gRPC code, e.g. `PERMISSION_DENIED`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `google.rpc` details of a status that the CLI shows: BadRequest, PreconditionFailure,
/// ErrorInfo and RetryInfo.
pub fn status_details(status: &tonic::Status) -> Value {
    let details = status.get_error_details();
    let mut value = serde_json::Map::new();
    if let Some(info) = details.error_info() {
        value.insert(
            "error_info".into(),
            json!({"reason": info.reason, "domain": info.domain, "metadata": info.metadata}),
        );
    }
    if let Some(bad) = details.bad_request() {
        let violations = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        value.insert("field_violations".into(), violations);
    }
    if let Some(pre) = details.precondition_failure() {
        let violations = pre
            .violations
            .iter()
            .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
            .collect();
        value.insert("precondition_violations".into(), violations);
    }
    if let Some(retry) = details.retry_info() {
        let delay = retry.retry_delay.map(|d| d.as_secs_f64()).unwrap_or_default();
        value.insert("retry_delay_seconds".into(), json!(delay));
    }
    Value::Object(value)
}

/// The text form of a status: the code and message, then one line per detail.
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("error: {}: {}\n", code_name(status.code()), status.message());
    let details = status_details(status);
    if let Some(info) = details.get("error_info") {
        let reason = info["reason"].as_str().unwrap_or_default();
        text.push_str(&format!("  reason: {reason}\n"));
    }
    for v in details.get("field_violations").and_then(Value::as_array).into_iter().flatten() {
        let field = v["field"].as_str().unwrap_or_default();
        let description = v["description"].as_str().unwrap_or_default();
        text.push_str(&format!("  invalid field {field}: {description}\n"));
    }
    for v in details.get("precondition_violations").and_then(Value::as_array).into_iter().flatten()
    {
        let kind = v["type"].as_str().unwrap_or_default();
        let subject = v["subject"].as_str().unwrap_or_default();
        let description = v["description"].as_str().unwrap_or_default();
        text.push_str(&format!("  precondition {kind} ({subject}): {description}\n"));
    }
    if let Some(delay) = details.get("retry_delay_seconds").and_then(Value::as_f64) {
        text.push_str(&format!("  retry after: {delay}s\n"));
    }
    text
}

/// Reports `err` on stderr, as text or as a JSON document `{"error": {...}}`.
pub fn report_error(format: Format, err: &CliError) {
    match (format, err.status()) {
        (Format::Text, Some(status)) => write_stderr(status_text(status).as_bytes()),
        (Format::Text, None) => note(&format!("error: {err}")),
        (Format::Json, Some(status)) => note(
            &json!({"error": {"code": code_name(status.code()), "message": status.message(),
                "details": status_details(status)}})
            .to_string(),
        ),
        (Format::Json, None) => {
            let code = if err.exit_code() == 2 { "USAGE" } else { "CLI" };
            note(&json!({"error": {"code": code, "message": err.to_string()}}).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn text_object_flattens_with_name_first() {
        let v = json!({"email": "a@x", "name": "organizations/o/administrators/a", "empty": "",
            "none": null, "list": ["x", "y"], "nested": {"k": 1}, "results": [{"state": "S"}]});
        let text = text_object(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("name:"), "{text}");
        assert!(text.contains("list:") && text.contains("x, y"), "{text}");
        assert!(text.contains("nested.k:") && text.contains("results[0].state:"), "{text}");
        assert!(!text.contains("empty") && !text.contains("none"), "{text}");
    }

    #[test]
    fn table_shows_ids_and_aligns() {
        let items = [json!({"name": "organizations/o/administrators/a1", "email": "a@x"})];
        let columns = [Column::id(), Column::new("EMAIL", "email", Show::Text)];
        let text = text_table(&items, &columns, TABLE_WIDTH);
        assert_eq!(text, "ID  EMAIL\na1  a@x\n");
    }

    #[test]
    fn cells_show_short_names_enums_and_times() {
        let item = json!({
            "name": "organizations/o/commands/c1/grants/g1",
            "grantee": "organizations/o/administrators/a1",
            "systems": ["organizations/o/systems/s1", "organizations/o/systems/s2"],
            "target": "organizations/o/commands/c1",
            "state": "RUN_STATE_SUCCEEDED",
            "create_time": "2026-03-01T12:34:56Z",
        });
        let cell = |show, field| Column::new("X", field, show).cell(&item);
        assert_eq!(cell(Show::Id, "name"), "g1");
        assert_eq!(cell(Show::ChildId, "name"), "c1/grants/g1");
        assert_eq!(cell(Show::ChildId, "target"), "c1");
        assert_eq!(cell(Show::Ref, "grantee"), "a1");
        assert_eq!(cell(Show::Ref, "systems"), "s1,s2");
        assert_eq!(cell(Show::Short, "grantee"), "a1");
        assert_eq!(cell(Show::Relative, "target"), "commands/c1");
        assert_eq!(cell(Show::Enum("RUN_STATE_"), "state"), "SUCCEEDED");
        assert_eq!(cell(Show::Time, "create_time"), "2026-03-01 12:34");
        assert_eq!(cell(Show::Text, "missing"), "");
    }

    #[test]
    fn wide_tables_are_cut_to_fit_and_keep_ids_whole() {
        let id = "0190f5a2-7c3e-7d41-9a8b-3f2e1d0c9b8a";
        let items: Vec<Value> = (0..3)
            .map(|i| {
                json!({"name": format!("organizations/o/commands/{id}"),
                    "display_name": format!("a very long display name number {i} ").repeat(4),
                    "description": "x".repeat(200)})
            })
            .collect();
        let columns = [
            Column::id(),
            Column::new("DISPLAY_NAME", "display_name", Show::Text),
            Column::new("DESCRIPTION", "description", Show::Text),
        ];
        let text = text_table(&items, &columns, TABLE_WIDTH);
        for line in text.lines() {
            assert!(line.chars().count() <= TABLE_WIDTH, "{line}");
        }
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with(id), "the ID is whole: {row}");
        assert!(row.contains("a very long display name number 0") && row.contains('…'), "{row}");
        // JSON is never cut.
        assert_eq!(items[0]["description"].as_str().unwrap().len(), 200);
    }

    #[test]
    fn ellipsis_counts_characters() {
        assert_eq!(ellipsize("abcdef", 6), "abcdef");
        assert_eq!(ellipsize("abcdef", 4), "abc…");
        assert_eq!(ellipsize("ééééé", 3), "éé…");
        assert_eq!(ellipsize("abc", 0), "");
        assert_eq!(ellipsize_start("abcdef", 4), "…def");
        assert_eq!(ellipsize_start("abcdef", 6), "abcdef");
    }

    #[test]
    fn other_names_give_way_first_and_ids_last() {
        // ID, a display name, another resource's ID: the reference is cut first.
        let widths = fit(&[36, 30, 36], &[8, 8, 8], &[2, 1, 0], 100);
        assert_eq!(widths, [36, 30, 30]);
        // Both cuttable columns at their floor, still too wide: then the ID shrinks.
        let widths = fit(&[36, 40, 40], &[8, 8, 8], &[2, 1, 0], 40);
        assert_eq!(widths, [20, 8, 8]);
        let widths = fit(&[36, 40, 10], &[8, 8, 8], &[2, 1, 0], 100);
        assert_eq!(widths, [36, 40, 10], "a table that fits is left alone");
        let reference = Column::new("RUNNER", "runner", Show::Ref);
        assert_eq!(reference.cut("0190f5a2-7c3e-7d41-9a8b-3f2e1d0c9b8a", 13), "…3f2e1d0c9b8a");
        let relative = Column::new("TARGET", "target", Show::Relative);
        assert_eq!(
            relative.cut("administrators/0190f5a2-7c3e-7d41-9a8b-3f2e1d0c9b8a", 28),
            "administrators/…3f2e1d0c9b8a"
        );
        assert_eq!(relative.cut("platform", 28), "platform");
    }

    #[test]
    fn status_text_shows_every_detail() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("administrator.email", "not an email");
        details.add_precondition_failure_violation(
            "SELF_DELETE",
            "organizations/o/administrators/a",
            "no",
        );
        details.set_error_info("ROLE_REQUIRED", "steward", std::collections::HashMap::new());
        details.set_retry_info(Some(std::time::Duration::from_secs(3)));
        let status =
            tonic::Status::with_error_details(Code::FailedPrecondition, "refused", details);
        let text = status_text(&status);
        for want in [
            "FAILED_PRECONDITION: refused",
            "administrator.email",
            "SELF_DELETE",
            "ROLE_REQUIRED",
            "retry after: 3s",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
