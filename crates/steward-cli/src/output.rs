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

/// Prints a list: a table of `columns` (header, field; the header `ID` shows only the last
/// segment of the name), or a JSON array of the full values.
pub fn list(format: Format, items: &[Value], columns: &[(&str, &str)]) -> Result<()> {
    match format {
        Format::Json => json_doc(&Value::Array(items.to_vec())),
        Format::Text => write_stdout(text_table(items, columns).as_bytes()),
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

/// An aligned table with a header row.
pub fn text_table(items: &[Value], columns: &[(&str, &str)]) -> String {
    let cell = |item: &Value, (header, field): &(&str, &str)| -> String {
        let text = match item.get(*field) {
            Some(Value::Array(values)) => {
                values.iter().filter_map(scalar).collect::<Vec<_>>().join(",")
            }
            Some(v) => scalar(v).unwrap_or_default(),
            None => String::new(),
        };
        if *header == "ID" {
            crate::names::id(&text).to_string()
        } else {
            text
        }
    };
    let mut rows: Vec<Vec<String>> = vec![columns.iter().map(|(h, _)| (*h).to_string()).collect()];
    rows.extend(items.iter().map(|item| columns.iter().map(|c| cell(item, c)).collect()));
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(c, w)| format!("{c:w$}", w = *w)).collect();
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
        let text = text_table(&items, &[("ID", "name"), ("EMAIL", "email")]);
        assert_eq!(text, "ID  EMAIL\na1  a@x\n");
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
