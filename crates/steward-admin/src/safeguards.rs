//! The administrator safeguards (no self-deletion, at least one activated Administrator and one
//! activated billing administrator), as a pure function over the organization's administrators
//! before and after a proposed change. Handlers call it inside the transaction that holds the
//! organization lock, so the snapshot it sees cannot change before the write commits.

use steward_runtime::claims::Role;
use steward_runtime::error::PreconditionViolation;

/// Rule: an administrator cannot delete itself.
pub const SELF_DELETE: &str = "SELF_DELETE";
/// Rule: at least one activated Administrator remains.
pub const LAST_ADMINISTRATOR: &str = "LAST_ADMINISTRATOR";
/// Rule: at least one activated billing administrator remains.
pub const LAST_BILLING_ADMINISTRATOR: &str = "LAST_BILLING_ADMINISTRATOR";

/// What the safeguards need to know about one administrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Resource name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Billing access.
    pub billing: bool,
    /// Activated (has set a password). Invited administrators do not count.
    pub active: bool,
}

fn administrators(members: &[Member]) -> usize {
    members.iter().filter(|m| m.active && m.role == Role::Administrator).count()
}

fn billing(members: &[Member]) -> usize {
    members.iter().filter(|m| m.active && m.billing).count()
}

/// Every rule the change from `before` to `after` breaks. `deleted` are the names removed by
/// the change and `caller` the acting administrator. A LAST_* rule is broken only by a change
/// that takes its count from non-zero to zero: an organization whose owner has not yet
/// accepted the invite has no activated administrator, and that is not the change's fault.
pub fn violations(
    organization: &str,
    caller: &str,
    before: &[Member],
    after: &[Member],
    deleted: &[String],
) -> Vec<PreconditionViolation> {
    let mut found = Vec::new();
    if deleted.iter().any(|d| d == caller) {
        found.push(PreconditionViolation {
            kind: SELF_DELETE.into(),
            subject: caller.to_string(),
            description: "an administrator cannot delete its own account".into(),
        });
    }
    if administrators(before) > 0 && administrators(after) == 0 {
        found.push(PreconditionViolation {
            kind: LAST_ADMINISTRATOR.into(),
            subject: organization.to_string(),
            description: "the organization must keep at least one activated Administrator".into(),
        });
    }
    if billing(before) > 0 && billing(after) == 0 {
        found.push(PreconditionViolation {
            kind: LAST_BILLING_ADMINISTRATOR.into(),
            subject: organization.to_string(),
            description: "the organization must keep at least one activated administrator with billing access".into(),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Role, billing: bool, active: bool) -> Member {
        Member { name: name.into(), role, billing, active }
    }

    fn without(members: &[Member], names: &[&str]) -> Vec<Member> {
        members.iter().filter(|m| !names.contains(&m.name.as_str())).cloned().collect()
    }

    fn kinds(v: &[PreconditionViolation]) -> Vec<&str> {
        v.iter().map(|v| v.kind.as_str()).collect()
    }

    #[test]
    fn deleting_others_is_fine_while_someone_remains() {
        let before = vec![
            member("a", Role::Administrator, true, true),
            member("b", Role::Administrator, false, true),
            member("c", Role::CommandRunner, false, true),
        ];
        let after = without(&before, &["b", "c"]);
        assert!(violations("o", "a", &before, &after, &["b".into(), "c".into()]).is_empty());
    }

    #[test]
    fn self_delete_and_last_rules_are_all_listed() {
        let before = vec![
            member("a", Role::Administrator, true, true),
            member("b", Role::CommandRunner, false, true),
        ];
        let after = without(&before, &["a"]);
        let v = violations("organizations/o", "a", &before, &after, &["a".into()]);
        assert_eq!(kinds(&v), vec![SELF_DELETE, LAST_ADMINISTRATOR, LAST_BILLING_ADMINISTRATOR]);
        assert_eq!(v[0].subject, "a");
        assert_eq!(v[1].subject, "organizations/o");
    }

    #[test]
    fn invited_administrators_do_not_count() {
        let before = vec![
            member("a", Role::Administrator, true, true),
            member("b", Role::Administrator, true, true),
            member("i", Role::Administrator, true, false),
        ];
        let after = without(&before, &["b"]);
        assert!(violations("o", "b2", &before, &after, &["b".into()]).is_empty());
        let mut demoted = before.clone();
        demoted[0].role = Role::CommandRunner;
        demoted[1].role = Role::CommandRunner;
        assert_eq!(kinds(&violations("o", "a", &before, &demoted, &[])), vec![LAST_ADMINISTRATOR]);
        let mut unbilled = before.clone();
        unbilled[0].billing = false;
        unbilled[1].billing = false;
        assert_eq!(
            kinds(&violations("o", "a", &before, &unbilled, &[])),
            vec![LAST_BILLING_ADMINISTRATOR]
        );
    }

    #[test]
    fn a_not_yet_activated_organization_is_not_blocked() {
        let before = vec![member("owner", Role::Administrator, true, false)];
        let after = vec![member("owner", Role::CommandRunner, false, false)];
        assert!(violations("o", "x", &before, &after, &[]).is_empty());
    }
}
