//! API messages as JSON values (proto field names, enum value names, RFC 3339 times). Input-only
//! secrets (card numbers, CVCs, passwords) are never part of these values.

use serde_json::{json, Value};
use steward_proto::admin::v1::{
    administrator, Administrator, Organization, Permission, Profile, Role, RoleDefinition,
    ServiceAccount, ServiceAccountKey,
};
use steward_proto::audit::v1::{audit_event, AuditEvent};
use steward_proto::billing::v1::{CardBrand, PaymentCard};
use steward_proto::commands::v1::{
    Command, ConnectKey, Grant, Interpreter, OutputChunk, OutputStream, Run, RunState, System,
    SystemResult,
};

macro_rules! enum_name {
    ($ty:ty, $value:expr) => {
        match <$ty>::try_from($value) {
            Ok(v) => Value::from(v.as_str_name()),
            Err(_) => Value::from($value),
        }
    };
}

/// A timestamp as RFC 3339 (UTC), or null.
pub fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(|t| {
        let nanos = u32::try_from(t.nanos).ok()?;
        chrono::DateTime::from_timestamp(t.seconds, nanos)
    })
    .map(|t| Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
    .unwrap_or(Value::Null)
}

/// A duration as `{seconds}s`, or null.
pub fn duration(d: Option<&prost_types::Duration>) -> Value {
    match d {
        Some(d) if d.nanos == 0 => Value::from(format!("{}s", d.seconds)),
        Some(d) => Value::from(format!("{}.{:09}s", d.seconds, d.nanos)),
        None => Value::Null,
    }
}

/// A role's value name.
pub fn role(value: i32) -> Value {
    enum_name!(Role, value)
}

/// A run state's value name.
pub fn run_state(value: i32) -> Value {
    enum_name!(RunState, value)
}

/// A run state's value name as text.
pub fn run_state_name(value: i32) -> String {
    RunState::try_from(value).map(|s| s.as_str_name().to_string()).unwrap_or(value.to_string())
}

/// An administrator.
pub fn administrator(a: &Administrator) -> Value {
    json!({
        "name": a.name,
        "email": a.email,
        "role": role(a.role),
        "role_name": a.role_name,
        "billing": a.billing,
        "mfa_required": a.mfa_required,
        "mfa_enrolled": a.mfa_enrolled,
        "whats_new": a.whats_new,
        "state": enum_name!(administrator::State, a.state),
        "create_time": time(a.create_time.as_ref()),
        "update_time": time(a.update_time.as_ref()),
        "activate_time": time(a.activate_time.as_ref()),
        "invited_by": a.invited_by,
        "etag": a.etag,
    })
}

/// A service account.
pub fn service_account(a: &ServiceAccount) -> Value {
    json!({
        "name": a.name,
        "display_name": a.display_name,
        "role": role(a.role),
        "role_name": a.role_name,
        "billing": a.billing,
        "creator": a.creator,
        "create_time": time(a.create_time.as_ref()),
    })
}

/// A service account's API key (never its secret: the service does not return it, except as
/// `api_key` in the answer to its creation, which is not part of this value).
pub fn service_account_key(k: &ServiceAccountKey) -> Value {
    json!({
        "name": k.name,
        "expire_time": time(k.expire_time.as_ref()),
        "create_time": time(k.create_time.as_ref()),
        "last_used_time": time(k.last_used_time.as_ref()),
    })
}

/// An organization.
pub fn organization(o: &Organization) -> Value {
    json!({
        "name": o.name,
        "display_name": o.display_name,
        "create_time": time(o.create_time.as_ref()),
    })
}

/// The caller's profile.
pub fn profile(p: &Profile) -> Value {
    json!({
        "administrator": p.administrator.as_ref().map(administrator),
        "organization": p.organization.as_ref().map(organization),
    })
}

/// A command.
pub fn command(c: &Command) -> Value {
    json!({
        "name": c.name,
        "display_name": c.display_name,
        "description": c.description,
        "script": c.script,
        "interpreter": enum_name!(Interpreter, c.interpreter),
        "run_as_user": c.run_as_user,
        "timeout": duration(c.timeout.as_ref()),
        "target_systems": c.target_systems,
        "create_time": time(c.create_time.as_ref()),
        "update_time": time(c.update_time.as_ref()),
        "etag": c.etag,
    })
}

/// A grant.
pub fn grant(g: &Grant) -> Value {
    json!({
        "name": g.name,
        "grantee": g.grantee,
        "grantor": g.grantor,
        "create_time": time(g.create_time.as_ref()),
    })
}

/// A role and the permissions it holds.
pub fn role_definition(r: &RoleDefinition) -> Value {
    json!({
        "name": r.name,
        "display_name": r.display_name,
        "description": r.description,
        "permissions": r.permissions,
        "own_only_permissions": r.own_only_permissions,
        "etag": r.etag,
    })
}

/// A permission of the catalog.
pub fn permission(p: &Permission) -> Value {
    json!({
        "name": p.name,
        "description": p.description,
        "methods": p.methods,
    })
}

/// One system's part of a run; output bytes are shown as (lossy) UTF-8 text.
pub fn system_result(r: &SystemResult) -> Value {
    json!({
        "system": r.system,
        "state": run_state(r.state),
        "exit_code": r.exit_code,
        "stdout": String::from_utf8_lossy(&r.stdout),
        "stderr": String::from_utf8_lossy(&r.stderr),
        "stdout_truncated": r.stdout_truncated,
        "stderr_truncated": r.stderr_truncated,
        "start_time": time(r.start_time.as_ref()),
        "end_time": time(r.end_time.as_ref()),
        "error_message": r.error_message,
    })
}

/// A run.
pub fn run(r: &Run) -> Value {
    json!({
        "name": r.name,
        "command": r.command,
        "command_revision": r.command_revision,
        "runner": r.runner,
        "systems": r.systems,
        "state": run_state(r.state),
        "results": r.results.iter().map(system_result).collect::<Vec<_>>(),
        "create_time": time(r.create_time.as_ref()),
        "start_time": time(r.start_time.as_ref()),
        "end_time": time(r.end_time.as_ref()),
    })
}

/// A chunk of live output.
pub fn output_chunk(c: &OutputChunk) -> Value {
    json!({
        "run": c.run,
        "system": c.system,
        "stream": enum_name!(OutputStream, c.stream),
        "data": String::from_utf8_lossy(&c.data),
        "offset": c.offset,
    })
}

/// A system.
pub fn system(s: &System) -> Value {
    json!({
        "name": s.name,
        "display_name": s.display_name,
        "hostname": s.hostname,
        "os": s.os,
        "agent_version": s.agent_version,
        "connected": s.connected,
        "last_seen_time": time(s.last_seen_time.as_ref()),
        "create_time": time(s.create_time.as_ref()),
        "etag": s.etag,
    })
}

/// A connect key. `key` is only non-empty in the answer to its creation.
pub fn connect_key(k: &ConnectKey) -> Value {
    let mut value = json!({
        "name": k.name,
        "display_name": k.display_name,
        "expire_time": time(k.expire_time.as_ref()),
        "revoked": k.revoked,
        "create_time": time(k.create_time.as_ref()),
        "creator": k.creator,
    });
    if let (false, Some(map)) = (k.key.is_empty(), value.as_object_mut()) {
        map.insert("key".into(), Value::from(k.key.clone()));
    }
    value
}

/// A payment card (never with a card number or CVC: the service does not return them).
pub fn payment_card(c: &PaymentCard) -> Value {
    json!({
        "name": c.name,
        "brand": enum_name!(CardBrand, c.brand),
        "last4": c.last4,
        "exp_month": c.exp_month,
        "exp_year": c.exp_year,
        "cardholder_name": c.cardholder_name,
        "expired": c.expired,
        "expires_soon": c.expires_soon,
        "update_time": time(c.update_time.as_ref()),
        "updated_by": c.updated_by,
        "etag": c.etag,
    })
}

/// An audit event.
pub fn audit_event(e: &AuditEvent) -> Value {
    json!({
        "name": e.name,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "result": enum_name!(audit_event::Result, e.result),
        "status_code": e.status_code,
        "reason": e.reason,
        "request_id": e.request_id,
        "client_address": e.client_address,
        "create_time": time(e.create_time.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_times_and_durations() {
        let a = Administrator {
            role: Role::CommandRunner as i32,
            state: 99,
            create_time: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            ..Default::default()
        };
        let v = administrator(&a);
        assert_eq!(v["role"], "ROLE_COMMAND_RUNNER");
        assert_eq!(v["state"], 99);
        assert_eq!(v["create_time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["update_time"], Value::Null);
        assert_eq!(duration(Some(&prost_types::Duration { seconds: 60, nanos: 0 })), "60s");
    }

    #[test]
    fn connect_key_secret_only_when_present() {
        let mut k = ConnectKey::default();
        assert!(connect_key(&k).get("key").is_none());
        k.key = "k".into();
        assert_eq!(connect_key(&k)["key"], "k");
    }
}
