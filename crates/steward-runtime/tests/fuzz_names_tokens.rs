//! Property-based fuzzing of resource names, page tokens and the small request checks every
//! service shares (`steward_runtime::names`), plus the committed corpus (`tests/corpus/names`,
//! `tests/corpus/page_tokens`). Bad input is `INVALID_ARGUMENT` naming its field, with a
//! bounded, escaped message; never a panic. Names and tokens round-trip.
//!
//! Cases per property: 256 by default, `PROPTEST_CASES=100000` for a longer run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;
use steward_runtime::names::{self, Keyset};
use steward_runtime::ApiError;

#[path = "../../../tests/corpus/support.rs"]
mod support;

use support::{assert_refused_on, config, corpus, variants};

/// Parses `value` with every typed name; each refusal must be typed and bounded. Returns how
/// many parsers accepted it.
fn parse_everywhere(value: &str) -> usize {
    let results: Vec<Result<String, ApiError>> = vec![
        names::OrganizationName::parse("f", value).map(|n| n.to_string()),
        names::AdministratorName::parse("f", value).map(|n| n.to_string()),
        names::CommandName::parse("f", value).map(|n| n.to_string()),
        names::GrantName::parse("f", value).map(|n| n.to_string()),
        names::RoleName::parse("f", value).map(|n| n.to_string()),
        names::RunName::parse("f", value).map(|n| n.to_string()),
        names::SystemName::parse("f", value).map(|n| n.to_string()),
        names::AuditEventName::parse("f", value).map(|n| n.to_string()),
        names::ConnectKeyName::parse("f", value).map(|n| n.to_string()),
        names::ServiceAccountName::parse("f", value).map(|n| n.to_string()),
        names::ServiceAccountKeyName::parse("f", value).map(|n| n.to_string()),
    ];
    let mut accepted = 0;
    for result in results {
        match result {
            Ok(name) => {
                // Accepted names are kept verbatim.
                assert_eq!(name, value);
                accepted += 1;
            }
            Err(err) => assert_refused_on(&err, "f"),
        }
    }
    accepted
}

/// A resource id as the contract allows it.
fn id() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,63}"
}

/// Pieces a hostile name is assembled from: real collections, separators, and characters
/// that look like or hide them.
fn hostile_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("organizations".to_string()),
        Just("administrators".to_string()),
        Just("runs".to_string()),
        Just("grants".to_string()),
        Just("/".to_string()),
        Just("//".to_string()),
        Just("\u{043e}rg".to_string()), // Cyrillic о
        Just("\u{0430}".to_string()),   // Cyrillic а
        Just("\u{ff0f}".to_string()),   // fullwidth solidus
        Just("\u{202e}".to_string()),   // right-to-left override
        Just("\u{200b}".to_string()),   // zero-width space
        Just("\0".to_string()),
        Just("'; DROP TABLE x; --".to_string()),
        Just("..".to_string()),
        Just("%2F".to_string()),
        id(),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any string: every typed parser answers, never panics, and refuses with a typed,
    /// bounded error.
    #[test]
    fn any_string_is_parsed_or_refused(value in any::<String>()) {
        parse_everywhere(&value);
    }

    /// Strings built from collection names, separators and look-alikes: still only typed
    /// refusals, and an accepted name is all ASCII ids (no homoglyph gets through).
    #[test]
    fn near_miss_names_are_refused(pieces in prop::collection::vec(hostile_piece(), 0..12)) {
        let value = pieces.concat();
        if parse_everywhere(&value) > 0 {
            prop_assert!(value.is_ascii(), "{value:?}");
            prop_assert!(!value.contains("//") && !value.ends_with('/'));
        }
    }

    /// A name formatted from valid ids parses back to itself, with its organization and id.
    #[test]
    fn names_round_trip(org in id(), command in id(), grant in id()) {
        let text = format!("organizations/{org}/commands/{command}/grants/{grant}");
        let name = names::GrantName::parse("name", &text).unwrap();
        prop_assert_eq!(name.as_str(), text.as_str());
        prop_assert_eq!(name.id(), grant.as_str());
        let organization = format!("organizations/{org}");
        prop_assert_eq!(name.organization().to_string(), organization.clone());
        let parent = names::OrganizationName::parse("parent", &organization).unwrap();
        prop_assert_eq!(parent.id(), org.as_str());
        // One more or one fewer segment is another type, refused here.
        let longer = format!("{text}/x");
        prop_assert!(names::GrantName::parse("name", &longer).is_err());
        prop_assert!(names::CommandName::parse("name", &text).is_err());
    }

    /// An id with one character replaced by anything outside `[a-z0-9-]` is refused.
    #[test]
    fn ids_with_one_foreign_character_are_refused(
        prefix in "[a-z0-9]{0,20}",
        foreign in any::<char>().prop_filter("outside the id alphabet", |c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '/')
        }),
        suffix in "[a-z0-9]{0,20}",
    ) {
        let run = format!("organizations/o/runs/{prefix}{foreign}{suffix}");
        let err = names::RunName::parse("run", &run).unwrap_err();
        assert_refused_on(&err, "run");
    }

    /// An offset page token decodes to what was encoded, and only with its own query.
    #[test]
    fn page_tokens_round_trip(offset in 0..=i64::MAX as u64, query in any::<String>(), other in any::<String>()) {
        let token = names::encode_page_token(offset, &query);
        prop_assert_eq!(names::decode_page_token(&token, &query).unwrap(), offset);
        if other != query {
            assert_refused_on(&names::decode_page_token(&token, &other).unwrap_err(), "page_token");
        }
    }

    /// Truncated, bit-flipped and arbitrary page tokens: refused with a typed error, or (a
    /// flip that still spells a token of this query) an offset the databases accept.
    #[test]
    fn mangled_page_tokens_are_refused(
        offset in 0..=i64::MAX as u64,
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
        garbage in any::<String>(),
    ) {
        let token = names::encode_page_token(offset, "q");
        let truncated = &token[..cut.index(token.len())];
        let mut bytes = token.clone().into_bytes();
        let at = flip.0.index(bytes.len());
        bytes[at] ^= 1 << (flip.1 % 8);
        let flipped = String::from_utf8_lossy(&bytes).into_owned();
        for candidate in [truncated, flipped.as_str(), garbage.as_str()] {
            match names::decode_page_token(candidate, "q") {
                Ok(decoded) => prop_assert!(i64::try_from(decoded).is_ok()),
                Err(err) => assert_refused_on(&err, "page_token"),
            }
            match names::decode_keyset_token(candidate, "q") {
                Ok(_) => prop_assert!(candidate.is_empty()),
                Err(err) => assert_refused_on(&err, "page_token"),
            }
        }
    }

    /// A keyset page token decodes to the row it was made from, only with its own query.
    #[test]
    fn keyset_tokens_round_trip(
        seconds in -8_000_000_000i64..8_000_000_000,
        nanos in 0u32..1_000_000_000,
        key in any::<String>(),
        query in any::<String>(),
    ) {
        let after = Keyset { time: chrono::DateTime::from_timestamp(seconds, nanos).unwrap(), key };
        let token = names::encode_keyset_token(&after, &query);
        prop_assert_eq!(names::decode_keyset_token(&token, &query).unwrap(), Some(after));
        let other = format!("{query}x");
        assert_refused_on(&names::decode_keyset_token(&token, &other).unwrap_err(), "page_token");
    }

    /// Page sizes: negative is refused, anything else is served within the maximum.
    #[test]
    fn page_sizes_are_bounded(requested in any::<i32>()) {
        match names::page_size(requested) {
            Ok(size) => prop_assert!((1..=names::MAX_PAGE_SIZE).contains(&size)),
            Err(err) => {
                prop_assert!(requested < 0);
                assert_refused_on(&err, "page_size");
            }
        }
    }

    /// Request ids: only empty or a UUID.
    #[test]
    fn request_ids_are_uuids(value in any::<String>()) {
        match names::check_request_id(&value) {
            Ok(()) => prop_assert!(value.is_empty() || uuid::Uuid::parse_str(&value).is_ok()),
            Err(err) => assert_refused_on(&err, "request_id"),
        }
    }

    /// Free text: accepted text holds no bidirectional control and no control character but
    /// the tabs and line breaks multi-line text allows.
    #[test]
    fn text_checks_refuse_controls(value in any::<String>()) {
        for text in [names::Text::Line, names::Text::Lines] {
            match names::check_text("t", &value, text) {
                Ok(()) => prop_assert!(!value.chars().any(|c| names::is_bidi_control(c)
                    || (c.is_control() && !(text == names::Text::Lines && "\t\n\r".contains(c))))),
                Err(err) => assert_refused_on(&err, "t"),
            }
        }
    }

    /// What an error message quotes is short and escaped, whatever the value.
    #[test]
    fn shown_values_are_bounded_and_escaped(value in any::<String>()) {
        let shown = names::shown(&value);
        prop_assert!(shown.chars().count() <= names::MAX_SHOWN_CHARS * 10 + 1);
        prop_assert!(!shown.chars().any(|c| c.is_control() || names::is_bidi_control(c)));
    }
}

/// Every committed hostile name is refused by every typed name parser, at its size and
/// repeated past 1 MiB.
#[test]
fn corpus_names_are_refused() {
    for (file, bytes) in corpus("names") {
        for value in variants(&bytes) {
            assert_eq!(parse_everywhere(&value), 0, "names/{file} was accepted");
        }
    }
}

/// Every committed hostile page token is refused by both decoders.
#[test]
fn corpus_page_tokens_are_refused() {
    for (file, bytes) in corpus("page_tokens") {
        for value in variants(&bytes) {
            let offset = names::decode_page_token(&value, "q");
            let keyset = names::decode_keyset_token(&value, "q");
            assert!(offset.is_err() && keyset.is_err(), "page_tokens/{file} was accepted");
            assert_refused_on(&offset.unwrap_err(), "page_token");
            assert_refused_on(&keyset.unwrap_err(), "page_token");
        }
    }
}
