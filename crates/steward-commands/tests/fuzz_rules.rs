//! Property-based fuzzing of the command service's request validation (`rules`: names of
//! things, scripts, timeouts, update masks, the list filters and orders), its bounded output
//! capture, and the agent stream's message check, plus the committed corpus
//! (`tests/corpus/filters`, `text`, `agent_messages`). Bad input is `INVALID_ARGUMENT` naming
//! its field, never a panic.
//!
//! Cases per property: 256 by default, `PROPTEST_CASES=100000` for a longer run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;
use prost::Message as _;
use steward_commands::rules;
use steward_proto::commands::v1::open_stream_request::{
    Heartbeat, Hello, Message, RunFinished, RunStarted,
};
use steward_proto::commands::v1::{OpenStreamRequest, OutputChunk};
use steward_runtime::names;
use steward_runtime::ApiError;

#[path = "../../../tests/corpus/support.rs"]
mod support;

use support::{assert_refused_on, config, corpus, variants};

/// The three list filters of the service: ListCommands, ListGrants, ListRuns.
const LISTS: [(&[&str], &[&str]); 3] = [
    (&["display_name"], &["display_name"]),
    (&["grantee"], &["grantee"]),
    (&["command", "runner", "state"], &["command", "runner"]),
];

/// Parses `filter` for every list; answers how many accepted it.
fn parse_filters(filter: &str) -> usize {
    let mut accepted = 0;
    for (allowed, quoted) in LISTS {
        match rules::parse_filter(filter, allowed, quoted) {
            Ok(terms) => {
                // Each field at most once: the terms are bounded by the fields.
                assert!(terms.len() <= allowed.len());
                assert!(terms.iter().all(|t| allowed.contains(&t.key.as_str())));
                accepted += 1;
            }
            Err(err) => assert_refused_on(&err, "filter"),
        }
    }
    accepted
}

/// Checks `value` as every kind of free text; answers whether it is a valid display name.
fn check_text(value: &str) -> bool {
    let display = rules::display_name("command.display_name", value);
    if let Err(err) = &display {
        assert_refused_on(err, "command.display_name");
    }
    for (field, result) in [
        ("command.description", rules::description("command.description", value)),
        ("command.script", rules::script("command.script", value)),
        ("command.run_as_user", rules::run_as_user("command.run_as_user", value)),
        ("command_id", rules::user_id("command_id", value)),
    ] {
        match result {
            Ok(()) => assert!(!value.chars().any(names::is_bidi_control), "{field}: {value:?}"),
            Err(err) => assert_refused_on(&err, field),
        }
    }
    if let Err(err) = rules::parse_command_order(value) {
        assert_refused_on(&err, "order_by");
    }
    display.is_ok()
}

/// A run name, well formed or not.
fn run_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "organizations/[a-z0-9-]{1,10}/runs/[a-z0-9-]{1,10}",
        Just("organizations/o/runs/r'; DROP TABLE commands_runs; --".to_string()),
        Just("organizations/o/runs/\u{0433}".to_string()),
        any::<String>(),
    ]
}

/// Any message an agent could send.
fn agent_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<String>().prop_map(|agent_version| Message::Hello(Hello { agent_version })),
        Just(Message::Heartbeat(Heartbeat { send_time: None })),
        (run_name(), any::<i64>())
            .prop_map(|(run, pid)| Message::RunStarted(RunStarted { run, pid })),
        (
            run_name(),
            any::<String>(),
            any::<i32>(),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<i64>()
        )
            .prop_map(|(run, system, stream, data, offset)| {
                Message::Output(OutputChunk { run, system, stream, data, offset })
            }),
        (run_name(), any::<i32>(), any::<i32>(), any::<String>()).prop_map(
            |(run, state, exit_code, error_message)| Message::RunFinished(RunFinished {
                run,
                state,
                exit_code,
                stdout_truncated: false,
                stderr_truncated: false,
                error_message,
            })
        ),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any string as every kind of field: typed refusals; accepted display names hold no
    /// control or bidirectional character and are at most 200 characters.
    #[test]
    fn any_text_is_checked_or_refused(value in any::<String>()) {
        if check_text(&value) {
            prop_assert!(value.chars().count() <= rules::MAX_DISPLAY_NAME_CHARS);
            prop_assert!(!value.chars().any(|c| c.is_control() || names::is_bidi_control(c)));
        }
        parse_filters(&value);
    }

    /// A display name with a bidirectional control anywhere is refused (Trojan Source).
    #[test]
    fn bidi_controls_are_refused(
        before in "[a-z ]{0,20}",
        control in prop::sample::select(vec!['\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}']),
        after in "[a-z ]{1,20}",
    ) {
        let value = format!("{before}{control}{after}");
        assert_refused_on(&rules::display_name("d", &value).unwrap_err(), "d");
        assert_refused_on(&rules::script("s", &value).unwrap_err(), "s");
        assert_refused_on(&rules::description("t", &value).unwrap_err(), "t");
    }

    /// Quoted filter values come back verbatim, whatever SQL they spell.
    #[test]
    fn quoted_filter_values_are_data(value in "[^\"]{0,80}") {
        let filter = format!("display_name = \"{value}\"");
        match rules::parse_filter(&filter, &["display_name"], &["display_name"]) {
            Ok(terms) => prop_assert_eq!(&terms[0].value, &value),
            Err(err) => {
                // ` AND ` inside the quotes splits the term: refused, never misread.
                prop_assert!(value.contains(" AND "));
                assert_refused_on(&err, "filter");
            }
        }
    }

    /// Timeouts: accepted ones are positive and at most a day.
    #[test]
    fn timeouts_are_bounded(seconds in any::<i64>(), nanos in any::<i32>()) {
        let duration = prost_types::Duration { seconds, nanos };
        match rules::timeout("command.timeout", Some(&duration)) {
            Ok((s, n)) => {
                prop_assert!((0..=rules::MAX_TIMEOUT_SECS).contains(&s));
                prop_assert!((0..1_000_000_000).contains(&n) && (s, n) != (0, 0));
            }
            Err(err) => assert_refused_on(&err, "command.timeout"),
        }
    }

    /// Update masks: only known paths, each once, whatever is asked.
    #[test]
    fn update_masks_are_bounded(mask in prop::collection::vec(any::<String>(), 0..50)) {
        match rules::update_paths(&mask, rules::COMMAND_MASK_PATHS, &["script"]) {
            Ok(paths) => {
                prop_assert!(paths.len() <= rules::COMMAND_MASK_PATHS.len());
                prop_assert!(paths.iter().all(|p| rules::COMMAND_MASK_PATHS.contains(&p.as_str())));
            }
            Err(err) => assert_refused_on(&err, "update_mask"),
        }
    }

    /// Output capture never passes the cap, never panics on any offset, and repeats nothing.
    #[test]
    fn output_capture_is_bounded(
        have in 0usize..4096,
        offset in any::<i64>(),
        data in prop::collection::vec(any::<u8>(), 0..4096),
        cap in 0usize..8192,
    ) {
        let (fresh, cut) = rules::fresh_output(have, offset, &data, cap);
        prop_assert!(have + fresh.len() <= cap.max(have));
        prop_assert!(fresh.len() <= data.len());
        if !fresh.is_empty() {
            // The fresh part is the tail of `data`, starting at byte `have` of the stream.
            prop_assert!(data.ends_with(fresh) || cut);
        }
    }

    /// Agent messages: the check answers for every message, refuses only with a typed error,
    /// and passes a report only when its run name is well formed.
    #[test]
    fn agent_messages_are_checked(hello_seen in any::<bool>(), message in agent_message()) {
        match rules::agent_message(hello_seen, &message) {
            Ok(()) => {
                prop_assert!(hello_seen || matches!(message, Message::Hello(_)));
                let run = match &message {
                    Message::RunStarted(m) => Some(&m.run),
                    Message::Output(m) => Some(&m.run),
                    Message::RunFinished(m) => Some(&m.run),
                    Message::Hello(_) | Message::Heartbeat(_) => None,
                };
                if let Some(run) = run {
                    prop_assert!(names::RunName::parse("run", run).is_ok());
                }
            }
            Err(ApiError::InvalidArgument(violations)) => prop_assert_eq!(violations.len(), 1),
            Err(other) => prop_assert!(false, "not INVALID_ARGUMENT: {other:?}"),
        }
    }

    /// Arbitrary bytes as an agent message: decoding fails or the check answers; a valid
    /// message survives an encode/decode round trip unchanged.
    #[test]
    fn agent_message_bytes_decode_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..256), message in agent_message()) {
        if let Ok(decoded) = OpenStreamRequest::decode(bytes.as_slice()) {
            if let Some(message) = &decoded.message {
                let _ = rules::agent_message(true, message);
            }
        }
        let request = OpenStreamRequest { message: Some(message) };
        prop_assert_eq!(OpenStreamRequest::decode(request.encode_to_vec().as_slice()).unwrap(), request);
    }
}

/// Every committed filter: typed refusals; `refused-*` files refused by every list.
#[test]
fn corpus_filters_are_refused_or_parsed() {
    for (file, bytes) in corpus("filters") {
        for value in variants(&bytes) {
            let accepted = parse_filters(&value);
            if file.starts_with("refused-") {
                assert_eq!(accepted, 0, "filters/{file} was accepted");
            }
        }
    }
}

/// Every committed text: typed refusals; `refused-*` files are refused as display names,
/// the others (SQL-looking, homoglyphs, markup) are valid names kept verbatim.
#[test]
fn corpus_text_is_refused_or_kept() {
    for (file, bytes) in corpus("text") {
        let [text, enormous] = variants(&bytes);
        assert_eq!(check_text(&text), !file.starts_with("refused-"), "text/{file}");
        assert!(!check_text(&enormous), "text/{file} repeated past 1 MiB");
    }
}

/// Every committed agent message fails to decode or is refused by the check (after Hello).
#[test]
fn corpus_agent_messages_are_refused() {
    for (file, bytes) in corpus("agent_messages") {
        match OpenStreamRequest::decode(bytes.as_slice()) {
            Err(_) => {}
            Ok(decoded) => {
                let message =
                    decoded.message.unwrap_or_else(|| panic!("agent_messages/{file}: empty"));
                let err = rules::agent_message(true, &message)
                    .expect_err(&format!("agent_messages/{file} passed"));
                assert!(matches!(err, ApiError::InvalidArgument(_)), "{file}: {err:?}");
            }
        }
    }
}
