//! The list grammars of the proto comments: `field = value` terms joined by ` AND `, plus the
//! administrators' `order_by`. Parsing is pure; [`crate::administrator`] and
//! [`crate::audit_log`] turn the result into queries.

use chrono::{DateTime, Utc};
use steward_proto::admin::v1::{administrator, Role as ProtoRole};
use steward_proto::audit::v1::audit_event;
use steward_runtime::claims::Role;
use steward_runtime::names::{check_filter_size, shown};
use steward_runtime::{ApiError, ApiResult};

/// One restriction of ListAdministrators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminTerm {
    /// `role = ROLE_...`, as the stored role name.
    Role(&'static str),
    /// `billing = true|false`.
    Billing(bool),
    /// `state = STATE_...`, as the stored state name.
    State(&'static str),
    /// `mfa_required = true|false`.
    MfaRequired(bool),
}

/// Sort key of ListAdministrators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOrder {
    /// By email, case-insensitively.
    Email,
    /// By creation time.
    CreateTime,
}

/// Splits on ` AND ` outside double quotes.
fn split_terms(filter: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut rest = filter;
    while let Some(c) = rest.chars().next() {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && rest.starts_with(" AND ") {
            terms.push(std::mem::take(&mut current));
            rest = &rest[5..];
            continue;
        }
        current.push(c);
        rest = &rest[c.len_utf8()..];
    }
    terms.push(current);
    terms.into_iter().map(|t| t.trim().to_string()).collect()
}

/// Splits `field op value` with `op` one of `>=`, `<`, `=`.
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    for op in [">=", "<", "="] {
        if let Some(at) = term.find(op) {
            // Operators never appear inside a field name; values may contain them only quoted.
            let (field, value) = (term[..at].trim(), term[at + op.len()..].trim());
            if !field.is_empty() && !field.contains('"') {
                return Some((field, op, value));
            }
        }
    }
    None
}

fn boolean(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Parses the ListAdministrators filter.
pub fn admin_filter(filter: &str) -> ApiResult<Vec<AdminTerm>> {
    check_filter_size(filter)?;
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| ApiError::invalid("filter", why);
    split_terms(filter)
        .iter()
        .map(|term| {
            let (field, op, value) = split_term(term)
                .filter(|(_, op, _)| *op == "=")
                .ok_or_else(|| bad(format!("`{}` is not `field = value`", shown(term))))?;
            let _ = op;
            match field {
                "role" => ProtoRole::from_str_name(value)
                    .and_then(|role| Role::from_proto(role as i32))
                    .or_else(|| steward_runtime::roles::built_in_named(value))
                    .map(|role| AdminTerm::Role(role.as_str()))
                    .ok_or_else(|| bad(format!("unknown role `{}`", shown(value)))),
                "state" => match administrator::State::from_str_name(value) {
                    Some(administrator::State::Invited) => Ok(AdminTerm::State("invited")),
                    Some(administrator::State::Active) => Ok(AdminTerm::State("active")),
                    _ => Err(bad(format!("unknown state `{}`", shown(value)))),
                },
                "billing" => boolean(value)
                    .map(AdminTerm::Billing)
                    .ok_or_else(|| bad("billing must be true or false".into())),
                "mfa_required" => boolean(value)
                    .map(AdminTerm::MfaRequired)
                    .ok_or_else(|| bad("mfa_required must be true or false".into())),
                other => Err(bad(format!("unknown field `{}`", shown(other)))),
            }
        })
        .collect()
}

/// Parses the ListAdministrators `order_by`; returns the key and whether it is descending.
pub fn admin_order(order_by: &str) -> ApiResult<(AdminOrder, bool)> {
    let words: Vec<&str> = order_by.split_whitespace().collect();
    let (key, desc) = match words.as_slice() {
        [] => return Ok((AdminOrder::Email, false)),
        [key] => (*key, false),
        [key, dir] if dir.eq_ignore_ascii_case("desc") => (*key, true),
        [key, dir] if dir.eq_ignore_ascii_case("asc") => (*key, false),
        _ => {
            return Err(ApiError::invalid(
                "order_by",
                "must be `email` or `create_time`, optionally followed by ` desc`",
            ))
        }
    };
    match key {
        "email" => Ok((AdminOrder::Email, desc)),
        "create_time" => Ok((AdminOrder::CreateTime, desc)),
        _ => Err(ApiError::invalid("order_by", format!("cannot order by `{}`", shown(key)))),
    }
}

/// One restriction of ListAuditEvents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditTerm {
    /// `actor = "..."`.
    Actor(String),
    /// `action = "..."`.
    Action(String),
    /// `target = "..."`.
    Target(String),
    /// `result = RESULT_...`, as the stored result name.
    Result(&'static str),
    /// `create_time >= "..."`.
    Since(DateTime<Utc>),
    /// `create_time < "..."`.
    Before(DateTime<Utc>),
}

fn quoted(value: &str) -> Option<String> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('"')).then(|| inner.to_string())
}

/// Parses the ListAuditEvents filter.
pub fn audit_filter(filter: &str) -> ApiResult<Vec<AuditTerm>> {
    check_filter_size(filter)?;
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| ApiError::invalid("filter", why);
    split_terms(filter)
        .iter()
        .map(|term| {
            let (field, op, value) = split_term(term)
                .ok_or_else(|| bad(format!("`{}` is not `field op value`", shown(term))))?;
            let string = || {
                quoted(value).ok_or_else(|| bad(format!("`{field}` needs a double-quoted value")))
            };
            let time = || {
                let raw = string()?;
                DateTime::parse_from_rfc3339(&raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| bad(format!("`{}` is not an RFC 3339 time", shown(&raw))))
            };
            match (field, op) {
                ("actor", "=") => Ok(AuditTerm::Actor(string()?)),
                ("action", "=") => Ok(AuditTerm::Action(string()?)),
                ("target", "=") => Ok(AuditTerm::Target(string()?)),
                ("result", "=") => match audit_event::Result::from_str_name(value) {
                    Some(audit_event::Result::Allowed) => Ok(AuditTerm::Result("allowed")),
                    Some(audit_event::Result::Denied) => Ok(AuditTerm::Result("denied")),
                    Some(audit_event::Result::Failed) => Ok(AuditTerm::Result("failed")),
                    _ => Err(bad(format!("unknown result `{}`", shown(value)))),
                },
                ("create_time", ">=") => Ok(AuditTerm::Since(time()?)),
                ("create_time", "<") => Ok(AuditTerm::Before(time()?)),
                _ => Err(bad(format!("unsupported term `{}`", shown(term)))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_filters_parse() {
        assert_eq!(admin_filter("").unwrap(), vec![]);
        assert_eq!(
            admin_filter("role = ROLE_COMMAND_RUNNER AND state = STATE_ACTIVE AND billing=true")
                .unwrap(),
            vec![
                AdminTerm::Role("command_runner"),
                AdminTerm::State("active"),
                AdminTerm::Billing(true)
            ]
        );
        assert_eq!(
            admin_filter("mfa_required = false").unwrap(),
            vec![AdminTerm::MfaRequired(false)]
        );
        for bad in [
            "role = ROLE_UNSPECIFIED",
            "email = x",
            "billing = yes",
            "role",
            "role >= ROLE_ADMINISTRATOR",
            "state = STATE_ACTIVE OR role = ROLE_ADMINISTRATOR",
        ] {
            assert!(admin_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admin_order_parses() {
        assert_eq!(admin_order("").unwrap(), (AdminOrder::Email, false));
        assert_eq!(admin_order("create_time desc").unwrap(), (AdminOrder::CreateTime, true));
        assert!(admin_order("role").is_err());
        assert!(admin_order("email up").is_err());
    }

    #[test]
    fn audit_filters_parse() {
        let terms = audit_filter(
            r#"actor = "organizations/o/administrators/a" AND result = RESULT_DENIED AND create_time >= "2024-01-01T00:00:00Z" AND create_time < "2024-02-01T00:00:00+01:00""#,
        )
        .unwrap();
        assert_eq!(terms[0], AuditTerm::Actor("organizations/o/administrators/a".into()));
        assert_eq!(terms[1], AuditTerm::Result("denied"));
        assert!(matches!(terms[2], AuditTerm::Since(_)));
        assert!(
            matches!(terms[3], AuditTerm::Before(t) if t.to_rfc3339() == "2024-01-31T23:00:00+00:00")
        );
        assert_eq!(
            audit_filter(r#"target = "a AND b""#).unwrap(),
            vec![AuditTerm::Target("a AND b".into())]
        );
        for bad in [
            r#"actor = x"#,
            r#"create_time > "2024-01-01T00:00:00Z""#,
            r#"create_time >= "yesterday""#,
            "result = RESULT_MAYBE",
            r#"who = "x""#,
        ] {
            assert!(audit_filter(bad).is_err(), "{bad}");
        }
    }
}
