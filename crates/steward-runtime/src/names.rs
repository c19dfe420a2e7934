//! Resource names (`organizations/{o}/administrators/{a}`) and opaque page tokens.

use crate::error::{ApiError, ApiResult};

/// Splits `name` against `collections` (e.g. `["organizations", "administrators"]`) and returns
/// the ids in order. `field` names the request field in the error.
pub fn parse<'a>(field: &str, name: &'a str, collections: &[&str]) -> ApiResult<Vec<&'a str>> {
    let parts: Vec<&str> = name.split('/').collect();
    let expected = collections.iter().map(|c| format!("{c}/{{id}}")).collect::<Vec<_>>().join("/");
    let bad =
        || ApiError::invalid(field, format!("must look like `{expected}`, got `{}`", shown(name)));
    if parts.len() != collections.len() * 2 {
        return Err(bad());
    }
    let mut ids = Vec::with_capacity(collections.len());
    for (pair, collection) in parts.chunks(2).zip(collections) {
        match pair {
            [found, id] if found == collection && valid_id(id) => ids.push(*id),
            _ => return Err(bad()),
        }
    }
    Ok(ids)
}

/// Resource names parsed once, at the edge: each type holds a name known to be well formed, so
/// code past the edge asks it (`organization()`) instead of splitting strings.
macro_rules! resource_name {
    ($(#[$doc:meta])* $name:ident, [$($collection:literal),+]) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The collections of the name, in order.
            pub const COLLECTIONS: &'static [&'static str] = &[$($collection),+];

            /// Parses `value`; `field` names the request field in the error.
            pub fn parse(field: &str, value: &str) -> ApiResult<Self> {
                parse(field, value, Self::COLLECTIONS)?;
                Ok(Self(value.to_string()))
            }

            /// The organization the resource belongs to.
            pub fn organization(&self) -> OrganizationName {
                let end = self.0.match_indices('/').nth(1).map_or(self.0.len(), |(i, _)| i);
                OrganizationName(self.0.get(..end).unwrap_or_default().to_string())
            }

            /// The resource's own id: the last segment of the name.
            pub fn id(&self) -> &str {
                self.0.rsplit('/').next().unwrap_or_default()
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

resource_name!(
    /// `organizations/{organization}`.
    OrganizationName,
    ["organizations"]
);
resource_name!(
    /// `organizations/{organization}/administrators/{administrator}`.
    AdministratorName,
    ["organizations", "administrators"]
);
resource_name!(
    /// `organizations/{organization}/commands/{command}`.
    CommandName,
    ["organizations", "commands"]
);
resource_name!(
    /// `organizations/{organization}/commands/{command}/grants/{grant}`.
    GrantName,
    ["organizations", "commands", "grants"]
);
resource_name!(
    /// `organizations/{organization}/roles/{role}`: an organization's own (custom) role.
    RoleName,
    ["organizations", "roles"]
);
resource_name!(
    /// `organizations/{organization}/runs/{run}`.
    RunName,
    ["organizations", "runs"]
);
resource_name!(
    /// `organizations/{organization}/systems/{system}`.
    SystemName,
    ["organizations", "systems"]
);
resource_name!(
    /// `organizations/{organization}/auditEvents/{event}`.
    AuditEventName,
    ["organizations", "auditEvents"]
);
resource_name!(
    /// `organizations/{organization}/connectKeys/{key}`.
    ConnectKeyName,
    ["organizations", "connectKeys"]
);
resource_name!(
    /// `organizations/{organization}/serviceAccounts/{account}`.
    ServiceAccountName,
    ["organizations", "serviceAccounts"]
);
resource_name!(
    /// `organizations/{organization}/serviceAccounts/{account}/keys/{key}`.
    ServiceAccountKeyName,
    ["organizations", "serviceAccounts", "keys"]
);

/// Most characters of a caller's value that an error message quotes ([`shown`]).
pub const MAX_SHOWN_CHARS: usize = 64;

/// `value` as an error message quotes it: at most [`MAX_SHOWN_CHARS`] characters (then `…`),
/// with control and bidirectional-control characters escaped (`\u{202e}`), so a hostile value
/// can neither bloat the answer (and its `grpc-message` trailer) nor reorder what a person
/// reads in a log or a console.
pub fn shown(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The bidirectional embedding, override and isolate controls (U+202A–U+202E, U+2066–U+2069):
/// the "Trojan Source" characters, which make text display in another order than it is read
/// (by a shell, a database, a person comparing two names).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// What free text may hold besides printable characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text {
    /// One line (names): no control characters at all.
    Line,
    /// Several lines (descriptions, scripts): tabs and line breaks, no other control character.
    Lines,
}

/// Refuses (`INVALID_ARGUMENT` on `field`) a control character other than those `text`
/// allows, and any bidirectional control ([`is_bidi_control`]). Lengths are the caller's.
pub fn check_text(field: &str, value: &str, text: Text) -> ApiResult<()> {
    let allowed = |c: char| text == Text::Lines && matches!(c, '\t' | '\n' | '\r');
    if value.chars().any(|c| (c.is_control() && !allowed(c)) || is_bidi_control(c)) {
        let what = match text {
            Text::Line => "control characters",
            Text::Lines => "control characters other than tabs and line breaks",
        };
        return Err(ApiError::invalid(
            field,
            format!("must not contain {what} or bidirectional controls (U+202A-E, U+2066-9)"),
        ));
    }
    Ok(())
}

/// Longest `filter` of a list request, in bytes.
pub const MAX_FILTER_BYTES: usize = 2048;
/// Most ` AND `-joined terms of a list request's `filter`: each becomes one condition of the
/// query, so the work a filter asks for stays bounded.
pub const MAX_FILTER_TERMS: usize = 8;

/// Refuses a `filter` longer than [`MAX_FILTER_BYTES`] or of more than [`MAX_FILTER_TERMS`]
/// terms, before any parsing.
pub fn check_filter_size(filter: &str) -> ApiResult<()> {
    if filter.len() > MAX_FILTER_BYTES {
        return Err(ApiError::invalid(
            "filter",
            format!("must be at most {MAX_FILTER_BYTES} bytes"),
        ));
    }
    if filter.matches(" AND ").count() >= MAX_FILTER_TERMS {
        return Err(ApiError::invalid(
            "filter",
            format!("must have at most {MAX_FILTER_TERMS} terms"),
        ));
    }
    Ok(())
}

/// Ids are 1 to 63 characters of lowercase letters, digits and `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A new random id (UUID v7: time-ordered, so it sorts like creation order).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Checks an optional client-chosen `request_id`: empty, or a UUID (as the protos say).
pub fn check_request_id(value: &str) -> ApiResult<()> {
    if value.is_empty() || uuid::Uuid::parse_str(value).is_ok() {
        Ok(())
    } else {
        Err(ApiError::invalid("request_id", "must be empty or a UUID"))
    }
}

/// Largest `page_size` served; larger requests are clamped.
pub const MAX_PAGE_SIZE: u64 = 500;
/// `page_size` used when the request leaves it at zero.
pub const DEFAULT_PAGE_SIZE: u64 = 50;

/// The effective page size, or an error for a negative one.
pub fn page_size(requested: i32) -> ApiResult<u64> {
    match requested {
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as u64).min(MAX_PAGE_SIZE)),
    }
}

/// Encodes the offset of the next page, bound to the query it belongs to (`query` is a digest
/// of filter and order) so a token cannot be replayed against a different query.
pub fn encode_page_token(offset: u64, query: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{offset}:{query}"))
}

/// Splits `rows`, fetched with one row more than `size` from `offset`, into the page and the
/// token of the next page (empty on the last page).
pub fn page<T>(mut rows: Vec<T>, size: u64, offset: u64, query: &str) -> (Vec<T>, String) {
    let limit = usize::try_from(size).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        (rows, encode_page_token(offset + size, query))
    } else {
        (rows, String::new())
    }
}

/// Decodes a page token from [`encode_page_token`]; empty means the first page.
pub fn decode_page_token(token: &str, query: &str) -> ApiResult<u64> {
    use base64::Engine;
    if token.is_empty() {
        return Ok(0);
    }
    let bad = || {
        ApiError::invalid(
            "page_token",
            "not a token returned by this list with this filter and order",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (offset, bound) = raw.split_once(':').ok_or_else(bad)?;
    if bound != query {
        return Err(bad());
    }
    // Databases take a signed 64-bit OFFSET; the drivers panic on anything larger.
    offset.parse::<u64>().ok().filter(|o| i64::try_from(*o).is_ok()).ok_or_else(bad)
}

/// Where a keyset page ends: the sort time and unique key of its last row. The next page holds
/// the rows strictly after it in the list's total order, so rows added while a client pages
/// (newer or older) never shift the pages already served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyset {
    /// The last row's time (the primary sort key).
    pub time: chrono::DateTime<chrono::Utc>,
    /// The last row's unique key (the tie-break).
    pub key: String,
}

/// Encodes `after` as an opaque page token bound to `query`, like [`encode_page_token`].
pub fn encode_keyset_token(after: &Keyset, query: &str) -> String {
    use base64::Engine;
    let raw = serde_json::json!([
        after.time.timestamp(),
        after.time.timestamp_subsec_nanos(),
        after.key,
        query
    ]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
}

/// Decodes a token from [`encode_keyset_token`]; `None` (empty token) means the first page.
pub fn decode_keyset_token(token: &str, query: &str) -> ApiResult<Option<Keyset>> {
    use base64::Engine;
    if token.is_empty() {
        return Ok(None);
    }
    let bad =
        || ApiError::invalid("page_token", "not a token returned by this list with this filter");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let (seconds, nanos, key, bound): (i64, u32, String, String) =
        serde_json::from_slice(&raw).map_err(|_| bad())?;
    if bound != query {
        return Err(bad());
    }
    let time = chrono::DateTime::from_timestamp(seconds, nanos).ok_or_else(bad)?;
    Ok(Some(Keyset { time, key }))
}

#[cfg(test)]
mod tests {

    #[test]
    fn typed_names_parse_once_and_know_their_organization() {
        let run = super::RunName::parse("name", "organizations/o-1/runs/r-9").unwrap();
        assert_eq!(run.organization().as_str(), "organizations/o-1");
        assert_eq!(run.to_string(), "organizations/o-1/runs/r-9");
        let org = super::OrganizationName::parse("parent", "organizations/o-1").unwrap();
        assert_eq!(org.organization(), org);
        assert_eq!((run.id(), org.id(), run.organization().id()), ("r-9", "o-1", "o-1"));
        let grant = super::GrantName::parse("name", "organizations/o/commands/c/grants/g").unwrap();
        assert_eq!((grant.id(), grant.organization().as_str()), ("g", "organizations/o"));
        assert!(super::RunName::parse("name", "organizations/o-1/commands/c").is_err());
        assert!(super::SystemName::parse("system", "organizations//systems/s").is_err());
        let err = super::AdministratorName::parse("grant.grantee", "x").unwrap_err();
        assert!(
            err.to_string().contains("grant.grantee")
                || format!("{err:?}").contains("grant.grantee")
        );
    }

    use super::*;

    #[test]
    fn parses_nested_names() {
        let ids = parse(
            "name",
            "organizations/o1/administrators/a-2",
            &["organizations", "administrators"],
        )
        .unwrap();
        assert_eq!(ids, vec!["o1", "a-2"]);
        assert!(parse("name", "organizations/o1", &["organizations", "administrators"]).is_err());
        assert!(parse(
            "name",
            "organizations/O1/administrators/a",
            &["organizations", "administrators"]
        )
        .is_err());
        assert!(parse("name", "orgs/o1/administrators/a", &["organizations", "administrators"])
            .is_err());
    }

    #[test]
    fn pages_keep_size_rows_and_point_past_them() {
        let (rows, next) = page(vec![1, 2, 3], 2, 10, "q");
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode_page_token(&next, "q").unwrap(), 12);
        let (rows, next) = page(vec![1, 2], 2, 10, "q");
        assert_eq!(rows, [1, 2]);
        assert!(next.is_empty(), "the last page has no next token");
    }

    #[test]
    fn page_tokens_are_bound_to_their_query() {
        let token = encode_page_token(40, "role=x");
        assert_eq!(decode_page_token(&token, "role=x").unwrap(), 40);
        assert!(decode_page_token(&token, "role=y").is_err());
        assert!(decode_page_token("!!", "role=x").is_err());
        // A forged offset beyond i64::MAX would panic the SQL drivers: refused as invalid.
        let forged = encode_page_token(u64::MAX, "role=x");
        assert!(decode_page_token(&forged, "role=x").is_err());
        let largest = encode_page_token(i64::MAX as u64, "role=x");
        assert_eq!(decode_page_token(&largest, "role=x").unwrap(), i64::MAX as u64);
    }

    #[test]
    fn keyset_tokens_round_trip_and_are_bound_to_their_query() {
        let after = Keyset {
            time: chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
            key: "organizations/o/auditEvents/e:1".into(),
        };
        let token = encode_keyset_token(&after, "q|1");
        assert_eq!(decode_keyset_token(&token, "q|1").unwrap(), Some(after));
        assert!(decode_keyset_token(&token, "q|2").is_err());
        assert_eq!(decode_keyset_token("", "q|1").unwrap(), None);
        // Offset tokens and garbage are not keyset tokens.
        assert!(decode_keyset_token(&encode_page_token(10, "q|1"), "q|1").is_err());
        assert!(decode_keyset_token("!!", "q|1").is_err());
        use base64::Engine;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!([i64::MAX, 0, "k", "q|1"]).to_string());
        assert!(decode_keyset_token(&forged, "q|1").is_err());
    }
}
