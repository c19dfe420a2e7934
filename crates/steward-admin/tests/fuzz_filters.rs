//! Property-based fuzzing of the admin service's request parsing: the ListAdministrators and
//! ListAuditEvents filters, `order_by`, and administrator emails, plus the committed corpus
//! (`tests/corpus/filters`, `tests/corpus/emails`). Bad input is `INVALID_ARGUMENT` naming its
//! field, never a panic; a filter's work is bounded by its terms; homoglyph emails are refused.
//!
//! Cases per property: 256 by default, `PROPTEST_CASES=100000` for a longer run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;
use steward_admin::email::Email;
use steward_admin::filter::{admin_filter, admin_order, audit_filter};
use steward_runtime::names::MAX_FILTER_TERMS;

#[path = "../../../tests/corpus/support.rs"]
mod support;

use support::{assert_refused_on, config, corpus, variants};

/// Parses `filter` with both admin grammars; answers how many accepted it.
fn parse_filters(filter: &str) -> usize {
    let mut accepted = 0;
    match admin_filter(filter) {
        Ok(terms) => {
            assert!(terms.len() <= MAX_FILTER_TERMS);
            accepted += 1;
        }
        Err(err) => assert_refused_on(&err, "filter"),
    }
    match audit_filter(filter) {
        Ok(terms) => {
            assert!(terms.len() <= MAX_FILTER_TERMS);
            accepted += 1;
        }
        Err(err) => assert_refused_on(&err, "filter"),
    }
    accepted
}

/// Words filters are made of: fields, operators, values, quotes, the separator, and hostile
/// look-alikes.
fn filter_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("role".to_string()),
        Just("state".to_string()),
        Just("billing".to_string()),
        Just("actor".to_string()),
        Just("create_time".to_string()),
        Just(" = ".to_string()),
        Just(" >= ".to_string()),
        Just(" < ".to_string()),
        Just(" AND ".to_string()),
        Just(" OR ".to_string()),
        Just("\"".to_string()),
        Just("(".to_string()),
        Just("ROLE_ADMINISTRATOR".to_string()),
        Just("STATE_ACTIVE".to_string()),
        Just("true".to_string()),
        Just("\"2024-01-01T00:00:00Z\"".to_string()),
        Just("' OR '1'='1".to_string()),
        Just("; DROP TABLE admin_administrators; --".to_string()),
        Just("\u{0430}ctor".to_string()),
        Just("\u{202e}".to_string()),
        Just("\0".to_string()),
        any::<String>(),
    ]
}

/// A plain email, then one of its ASCII letters swapped for a Cyrillic or Greek look-alike.
fn homoglyph_email() -> impl Strategy<Value = (String, String)> {
    ("[a-z]{2,12}", "[a-z]{2,12}", "(com|org|net|io)", any::<prop::sample::Index>()).prop_map(
        |(local, domain, tld, at)| {
            let plain = format!("{local}@{domain}.{tld}");
            let letters: Vec<usize> = plain
                .char_indices()
                .filter(|(_, c)| "aeopcxy".contains(*c))
                .map(|(i, _)| i)
                .collect();
            let mut spoofed = plain.clone();
            if !letters.is_empty() {
                let i = letters[at.index(letters.len())];
                let look_alike = match &plain[i..=i] {
                    "a" => "\u{0430}",
                    "e" => "\u{0435}",
                    "o" => "\u{03bf}",
                    "p" => "\u{0440}",
                    "c" => "\u{0441}",
                    "x" => "\u{0445}",
                    _ => "\u{0443}",
                };
                spoofed.replace_range(i..=i, look_alike);
            }
            (plain, spoofed)
        },
    )
}

proptest! {
    #![proptest_config(config())]

    /// Any string: both filter grammars and `order_by` answer with terms or a typed refusal.
    #[test]
    fn any_filter_is_parsed_or_refused(filter in any::<String>()) {
        parse_filters(&filter);
        if let Err(err) = admin_order(&filter) {
            assert_refused_on(&err, "order_by");
        }
    }

    /// Filters built from the grammar's own words and hostile ones: typed refusals, bounded
    /// terms; an accepted term's value is one of the closed sets or a quoted string, kept as
    /// data (never parsed as SQL).
    #[test]
    fn near_miss_filters_are_refused(pieces in prop::collection::vec(filter_piece(), 0..24)) {
        parse_filters(&pieces.concat());
    }

    /// More terms than the bound are refused before any is parsed, however valid each is.
    #[test]
    fn filters_past_the_term_bound_are_refused(extra in 0usize..200) {
        let filter = vec!["billing = true"; MAX_FILTER_TERMS + 1 + extra].join(" AND ");
        assert_refused_on(&admin_filter(&filter).unwrap_err(), "filter");
        let audit = vec!["result = RESULT_DENIED"; MAX_FILTER_TERMS + 1 + extra].join(" AND ");
        assert_refused_on(&audit_filter(&audit).unwrap_err(), "filter");
        let at_bound = ["billing = true"; MAX_FILTER_TERMS].join(" AND ");
        prop_assert_eq!(admin_filter(&at_bound).unwrap().len(), MAX_FILTER_TERMS);
    }

    /// Quoted audit values come back verbatim, whatever SQL they spell.
    #[test]
    fn quoted_values_are_data(value in "[^\"]{0,80}") {
        let filter = format!("actor = \"{value}\"");
        match audit_filter(&filter) {
            Ok(terms) => prop_assert_eq!(
                terms,
                vec![steward_admin::filter::AuditTerm::Actor(value.clone())]
            ),
            // Only the term bound, which counts separators inside quotes too, refuses it.
            Err(err) => {
                prop_assert!(value.matches(" AND ").count() >= MAX_FILTER_TERMS, "{err:?}");
                assert_refused_on(&err, "filter");
            }
        }
    }

    /// Any string as an email: accepted addresses obey every rule; refusals are typed.
    #[test]
    fn any_email_is_parsed_or_refused(value in any::<String>()) {
        match Email::parse("administrator.email", &value) {
            Ok(email) => {
                prop_assert_eq!(email.as_str(), value.as_str());
                prop_assert!(value.chars().count() <= 254);
                prop_assert!(!value.chars().any(|c| c.is_whitespace() || c.is_control()));
            }
            Err(err) => assert_refused_on(&err, "administrator.email"),
        }
    }

    /// A Latin address with one letter swapped for a Cyrillic or Greek look-alike is refused;
    /// the plain one is accepted.
    #[test]
    fn homoglyph_emails_are_refused((plain, spoofed) in homoglyph_email()) {
        prop_assert!(Email::parse("email", &plain).is_ok(), "{plain}");
        if spoofed != plain {
            assert_refused_on(&Email::parse("email", &spoofed).unwrap_err(), "email");
        }
    }
}

/// Every committed filter: no panic, typed refusals; `refused-*` files refused by both admin
/// lists (and `order_by`).
#[test]
fn corpus_filters_are_refused_or_parsed() {
    for (file, bytes) in corpus("filters") {
        for value in variants(&bytes) {
            let accepted = parse_filters(&value);
            if file.starts_with("refused-") {
                assert_eq!(accepted, 0, "filters/{file} was accepted");
                assert_refused_on(&admin_order(&value).unwrap_err(), "order_by");
            }
        }
    }
}

/// Every committed hostile email is refused.
#[test]
fn corpus_emails_are_refused() {
    for (file, bytes) in corpus("emails") {
        for value in variants(&bytes) {
            let err = Email::parse("administrator.email", &value)
                .expect_err(&format!("emails/{file} was accepted"));
            assert_refused_on(&err, "administrator.email");
        }
    }
}

/// Ordinary international addresses stay accepted: one script per part is not a homoglyph.
#[test]
fn single_script_addresses_are_accepted() {
    for ok in ["ü@bücher.de", "иван@пример.рф", "user+tag@example.com", "ο@ελλάδα.gr"]
    {
        assert!(Email::parse("email", ok).is_ok(), "{ok}");
    }
}
