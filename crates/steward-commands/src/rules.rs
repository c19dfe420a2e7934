//! Pure logic of the service, kept free of I/O so it is unit tested: input validation, filter
//! and order parsing, update masks, run-state aggregation and bounded output capture.

use sha2::{Digest, Sha256};
use steward_proto::commands::v1::{Interpreter, RunState};
use steward_runtime::names;
use steward_runtime::{ApiError, ApiResult};

/// Largest script, in bytes.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
/// Largest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4000;
/// Largest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Timeout used when a command sets none.
pub const DEFAULT_TIMEOUT_SECS: i64 = 5 * 60;
/// Longest timeout accepted.
pub const MAX_TIMEOUT_SECS: i64 = 24 * 3600;
/// Bound on each captured output stream of each system.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Checks a human-readable name: 1 to 200 characters, no control or bidirectional-control
/// characters.
pub fn display_name(field: &str, value: &str) -> ApiResult<()> {
    let chars = value.chars().count();
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if chars > MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::invalid(field, "must be at most 200 characters"));
    }
    names::check_text(field, value, names::Text::Line)
}

/// Checks a caller-chosen resource ID: 1 to 63 characters of lowercase letters, digits and
/// hyphens, starting with a letter and not ending with a hyphen.
pub fn user_id(field: &str, id: &str) -> ApiResult<()> {
    let starts_with_letter = id.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if !names::valid_id(id) || !starts_with_letter || id.ends_with('-') {
        return Err(ApiError::invalid(
            field,
            "must be 1 to 63 lowercase letters, digits and hyphens, start with a letter and not end with a hyphen",
        ));
    }
    Ok(())
}

/// Checks an optional `request_id`: empty, or a UUID.
pub use steward_runtime::names::check_request_id as request_id;

/// Checks the interpreter enum value.
pub fn interpreter(field: &str, value: i32) -> ApiResult<()> {
    match Interpreter::try_from(value) {
        Ok(Interpreter::Unspecified) | Err(_) => {
            Err(ApiError::invalid(field, "must be one of sh, bash, powershell, python3"))
        }
        Ok(_) => Ok(()),
    }
}

/// Checks a script: non-empty, at most 64 KiB, no control characters but tabs and line breaks
/// and no bidirectional controls (what a reviewer reads is what the interpreter runs).
pub fn script(field: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if value.len() > MAX_SCRIPT_BYTES {
        return Err(ApiError::invalid(field, "must be at most 64 KiB"));
    }
    names::check_text(field, value, names::Text::Lines)
}

/// Checks a description: at most 4000 characters, no control characters but tabs and line
/// breaks, no bidirectional controls.
pub fn description(field: &str, value: &str) -> ApiResult<()> {
    if value.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::invalid(field, "must be at most 4000 characters"));
    }
    names::check_text(field, value, names::Text::Lines)
}

/// Checks a run-as user: empty, or an account name without whitespace or control characters.
pub fn run_as_user(field: &str, value: &str) -> ApiResult<()> {
    if value.len() > 256 {
        return Err(ApiError::invalid(field, "must be at most 256 bytes"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control() || names::is_bidi_control(c)) {
        return Err(ApiError::invalid(field, "must not contain whitespace or control characters"));
    }
    Ok(())
}

/// The timeout to store (seconds, nanoseconds): the default when unset; positive and at most
/// 24 hours otherwise.
pub fn timeout(field: &str, value: Option<&prost_types::Duration>) -> ApiResult<(i64, i32)> {
    let Some(d) = value else { return Ok((DEFAULT_TIMEOUT_SECS, 0)) };
    if d.nanos < 0 || d.nanos >= 1_000_000_000 || d.seconds < 0 {
        return Err(ApiError::invalid(field, "must be a positive duration"));
    }
    if d.seconds == 0 && d.nanos == 0 {
        return Err(ApiError::invalid(field, "must be positive"));
    }
    if d.seconds > MAX_TIMEOUT_SECS || (d.seconds == MAX_TIMEOUT_SECS && d.nanos > 0) {
        return Err(ApiError::invalid(field, "must be at most 24 hours"));
    }
    Ok((d.seconds, d.nanos))
}

/// The fields UpdateCommand may change.
pub const COMMAND_MASK_PATHS: &[&str] = &[
    "display_name",
    "description",
    "script",
    "interpreter",
    "run_as_user",
    "timeout",
    "target_systems",
];

/// Resolves an update mask: `*` is every field, an empty mask is every field set to a
/// non-default value (`present`), an unknown path is INVALID_ARGUMENT.
pub fn update_paths(mask: &[String], allowed: &[&str], present: &[&str]) -> ApiResult<Vec<String>> {
    if mask.is_empty() {
        return Ok(present.iter().map(|p| p.to_string()).collect());
    }
    let mut paths = Vec::new();
    for path in mask {
        if path == "*" {
            return Ok(allowed.iter().map(|p| p.to_string()).collect());
        }
        if !allowed.contains(&path.as_str()) {
            return Err(ApiError::invalid(
                "update_mask",
                format!(
                    "`{}` cannot be updated; allowed: {}",
                    names::shown(path),
                    allowed.join(", ")
                ),
            ));
        }
        if !paths.contains(path) {
            paths.push(path.clone());
        }
    }
    Ok(paths)
}

/// A new opaque etag for revision `revision` of `name`.
pub fn etag(name: &str, revision: i64, salt: &str) -> String {
    let digest = Sha256::digest(format!("{name}\n{revision}\n{salt}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of a secret, for storage and lookup.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A terminal state: the system (or run) will not change any more.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        RunState::try_from(state),
        Ok(RunState::Succeeded | RunState::Failed | RunState::TimedOut | RunState::Cancelled)
    )
}

/// The state of a run from its systems' states. A cancelled run is CANCELLED at once; otherwise
/// the run is QUEUED until a system starts, RUNNING until all have finished, then FAILED if any
/// failed, CANCELLED if any was cancelled, TIMED_OUT if any timed out, and SUCCEEDED if all did.
pub fn aggregate(states: &[i32], cancelled: bool) -> RunState {
    if cancelled {
        return RunState::Cancelled;
    }
    let all_terminal = states.iter().all(|s| is_terminal(*s));
    if !all_terminal || states.is_empty() {
        let started = states.iter().any(|s| *s == RunState::Running as i32 || is_terminal(*s));
        return if started { RunState::Running } else { RunState::Queued };
    }
    for candidate in [RunState::Failed, RunState::Cancelled, RunState::TimedOut] {
        if states.contains(&(candidate as i32)) {
            return candidate;
        }
    }
    RunState::Succeeded
}

/// The part of `data`, found at byte `offset` of a stream of which `have` bytes are captured,
/// that extends the capture: bytes already captured (repeats after a reconnect) are skipped and
/// the capture is cut at `cap`. Returns the new bytes and whether the capture was cut.
pub fn fresh_output(have: usize, offset: i64, data: &[u8], cap: usize) -> (&[u8], bool) {
    let Ok(offset) = usize::try_from(offset) else { return (&[], false) };
    let fresh = if offset >= have { data } else { data.get(have - offset..).unwrap_or_default() };
    let room = cap.saturating_sub(have);
    if fresh.len() > room {
        (fresh.get(..room).unwrap_or_default(), true)
    } else {
        (fresh, false)
    }
}

/// A parsed `key = "value"` or `key = VALUE` filter term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// Left-hand side.
    pub key: String,
    /// Right-hand side without quotes.
    pub value: String,
}

/// Parses `a = "x" AND b = Y`; each key must be in `allowed`, each at most once; `quoted` keys
/// need a double-quoted value, the others a bare word.
pub fn parse_filter(filter: &str, allowed: &[&str], quoted: &[&str]) -> ApiResult<Vec<Term>> {
    names::check_filter_size(filter)?;
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: &str| ApiError::invalid("filter", why.to_string());
    let mut terms: Vec<Term> = Vec::new();
    for part in filter.split(" AND ") {
        let (key, value) =
            part.split_once('=').ok_or_else(|| bad("each term must look like `field = value`"))?;
        let key = key.trim();
        let value = value.trim();
        if !allowed.contains(&key) {
            return Err(bad(&format!(
                "unsupported field `{}`; supported: {}",
                names::shown(key),
                allowed.join(", ")
            )));
        }
        if terms.iter().any(|t| t.key == key) {
            return Err(bad(&format!("`{key}` appears twice")));
        }
        let value = if quoted.contains(&key) {
            let inner = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|v| !v.contains('"'))
                .ok_or_else(|| bad(&format!("the value of `{key}` must be double-quoted")))?;
            inner.to_string()
        } else {
            if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
                return Err(bad(&format!("the value of `{key}` must be a single word")));
            }
            value.to_string()
        };
        terms.push(Term { key: key.to_string(), value });
    }
    Ok(terms)
}

/// An `order_by` of ListCommands: the column and whether descending.
pub fn parse_command_order(order_by: &str) -> ApiResult<(&'static str, bool)> {
    let order = order_by.trim();
    if order.is_empty() {
        return Ok(("display_name", false));
    }
    let (field, desc) = match order.strip_suffix(" desc") {
        Some(field) => (field.trim(), true),
        None => (order, false),
    };
    let field =
        match field {
            "display_name" => "display_name",
            "create_time" => "create_time",
            "update_time" => "update_time",
            _ => return Err(ApiError::invalid(
                "order_by",
                "must be display_name, create_time or update_time, optionally followed by ` desc`",
            )),
        };
    Ok((field, desc))
}

/// Checks one message of an agent's stream before anything is looked up: the first message must
/// be `Hello`; a report names a run (`organizations/{o}/runs/{r}`) and, for output, stdout or
/// stderr, and a finish a final state. A malformed message is `INVALID_ARGUMENT`, which ends
/// the stream; a well-formed report of a run the system does not have is ignored later.
pub fn agent_message(
    hello_seen: bool,
    message: &steward_proto::commands::v1::open_stream_request::Message,
) -> ApiResult<()> {
    use steward_proto::commands::v1::open_stream_request::Message;
    use steward_proto::commands::v1::OutputStream;
    match message {
        Message::Hello(_) => Ok(()),
        _ if !hello_seen => {
            Err(ApiError::invalid("message", "the first message of a stream must be Hello"))
        }
        Message::Heartbeat(_) => Ok(()),
        Message::RunStarted(started) => {
            names::RunName::parse("run_started.run", &started.run).map(drop)
        }
        Message::Output(chunk) => {
            names::RunName::parse("output.run", &chunk.run)?;
            match OutputStream::try_from(chunk.stream) {
                Ok(OutputStream::Stdout | OutputStream::Stderr) => Ok(()),
                _ => Err(ApiError::invalid("output.stream", "must be stdout or stderr")),
            }
        }
        Message::RunFinished(finished) => {
            names::RunName::parse("run_finished.run", &finished.run)?;
            if is_terminal(finished.state) {
                Ok(())
            } else {
                Err(ApiError::invalid("run_finished.state", "must be a final state"))
            }
        }
    }
}

pub use steward_runtime::wire::{from_timestamp, timestamp};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract() {
        assert!(user_id("id", "disk-usage").is_ok());
        assert!(user_id("id", "a").is_ok());
        assert!(user_id("id", "1disk").is_err());
        assert!(user_id("id", "disk-").is_err());
        assert!(user_id("id", "Disk").is_err());
        assert!(user_id("id", "").is_err());
        assert!(user_id("id", &"a".repeat(64)).is_err());
    }

    #[test]
    fn timeouts_default_and_are_bounded() {
        assert_eq!(timeout("t", None).unwrap(), (300, 0));
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(timeout("t", Some(&d(30, 5))).unwrap(), (30, 5));
        assert!(timeout("t", Some(&d(0, 0))).is_err());
        assert!(timeout("t", Some(&d(-1, 0))).is_err());
        assert!(timeout("t", Some(&d(24 * 3600, 0))).is_ok());
        assert!(timeout("t", Some(&d(24 * 3600, 1))).is_err());
    }

    #[test]
    fn field_checks() {
        assert!(interpreter("i", 0).is_err());
        assert!(interpreter("i", 99).is_err());
        assert!(interpreter("i", Interpreter::Bash as i32).is_ok());
        assert!(script("s", "  ").is_err());
        assert!(script("s", &"x".repeat(MAX_SCRIPT_BYTES + 1)).is_err());
        assert!(display_name("d", "").is_err());
        assert!(display_name("d", &"é".repeat(200)).is_ok());
        assert!(display_name("d", &"é".repeat(201)).is_err());
        assert!(run_as_user("u", "root").is_ok());
        assert!(run_as_user("u", "ro ot").is_err());
        assert!(request_id("").is_ok());
        assert!(request_id("not-a-uuid").is_err());
        assert!(request_id("5f0e2a7c-8d43-4c1e-9a55-0a1b2c3d4e5f").is_ok());
    }

    #[test]
    fn masks_resolve() {
        let present = ["script"];
        assert_eq!(update_paths(&[], COMMAND_MASK_PATHS, &present).unwrap(), vec!["script"]);
        assert_eq!(update_paths(&["*".into()], COMMAND_MASK_PATHS, &present).unwrap().len(), 7);
        assert!(update_paths(&["name".into()], COMMAND_MASK_PATHS, &present).is_err());
        assert_eq!(
            update_paths(&["timeout".into(), "timeout".into()], COMMAND_MASK_PATHS, &present)
                .unwrap(),
            vec!["timeout"]
        );
    }

    #[test]
    fn run_state_aggregates() {
        let q = RunState::Queued as i32;
        let r = RunState::Running as i32;
        let s = RunState::Succeeded as i32;
        let f = RunState::Failed as i32;
        let t = RunState::TimedOut as i32;
        assert_eq!(aggregate(&[q, q], false), RunState::Queued);
        assert_eq!(aggregate(&[q, r], false), RunState::Running);
        assert_eq!(aggregate(&[s, q], false), RunState::Running);
        assert_eq!(aggregate(&[s, s], false), RunState::Succeeded);
        assert_eq!(aggregate(&[s, t], false), RunState::TimedOut);
        assert_eq!(aggregate(&[t, f], false), RunState::Failed);
        assert_eq!(aggregate(&[r, s], true), RunState::Cancelled);
    }

    #[test]
    fn output_is_deduplicated_and_bounded() {
        let mut buffer = Vec::new();
        let mut append = |offset: i64, data: &[u8]| {
            let (fresh, cut) = fresh_output(buffer.len(), offset, data, 10);
            buffer.extend_from_slice(fresh);
            (cut, buffer.clone())
        };
        assert_eq!(append(0, b"hello "), (false, b"hello ".to_vec()));
        assert_eq!(append(0, b"hello "), (false, b"hello ".to_vec()));
        assert_eq!(append(3, b"lo wo"), (false, b"hello wo".to_vec()));
        assert_eq!(append(8, b"rld!"), (true, b"hello worl".to_vec()));
        assert_eq!(append(10, b"x"), (true, b"hello worl".to_vec()));
        assert_eq!(append(-1, b"x"), (false, b"hello worl".to_vec()));
    }

    #[test]
    fn filters_parse() {
        let terms = parse_filter(
            "command = \"organizations/o/commands/c\" AND state = RUN_STATE_RUNNING",
            &["command", "runner", "state"],
            &["command", "runner"],
        )
        .unwrap();
        assert_eq!(terms.len(), 2);
        assert_eq!(terms[0].value, "organizations/o/commands/c");
        assert_eq!(terms[1].value, "RUN_STATE_RUNNING");
        assert!(parse_filter("command = x", &["command"], &["command"]).is_err());
        assert!(parse_filter("owner = \"x\"", &["command"], &["command"]).is_err());
        assert!(
            parse_filter("command = \"a\" OR command = \"b\"", &["command"], &["command"]).is_err()
        );
        assert!(parse_filter("command = \"a\" AND command = \"b\"", &["command"], &["command"])
            .is_err());
        assert!(parse_filter("", &["command"], &["command"]).unwrap().is_empty());
    }

    #[test]
    fn orders_parse() {
        assert_eq!(parse_command_order("").unwrap(), ("display_name", false));
        assert_eq!(parse_command_order("create_time desc").unwrap(), ("create_time", true));
        assert!(parse_command_order("script").is_err());
    }
}
