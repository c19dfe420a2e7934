//! Who may call what. Each RPC's rule is declared once, as the `steward.authz.v1.rule` option
//! of its method in the protos; `steward-proto`'s build turns the options into the table this
//! module reads (a method without a rule fails the build). The authentication layer enforces it
//! for every service; handlers only narrow further (organization scoping, a Command Runner's own
//! grants and runs). A path without a rule is refused.

pub use steward_proto::authz::Permission;

use crate::claims::Role;

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials (sign-in, invite acceptance, JWKS, health, reflection).
    Public,
    /// Only other Steward services, with the service credential. Administrator tokens are refused.
    Internal,
    /// An agent: a connect key or system credential checked by the command service itself.
    Agent,
    /// Any signed-in administrator of either role, including a token scoped to MFA enrolment.
    Enrollment,
    /// Any signed-in administrator of either role; handlers scope to the caller's own data.
    AnyRole,
    /// Administrators only.
    Administrator,
    /// Administrators or Command Runners with billing access.
    Billing,
}

/// Rules of the infrastructure services every process serves (not Steward's protos). Keys end
/// in `/` and cover every method of the service.
pub const INFRASTRUCTURE: &[(&str, Access)] = &[
    ("/grpc.health.v1.Health/", Access::Public),
    ("/grpc.reflection.v1.ServerReflection/", Access::Public),
    ("/grpc.reflection.v1alpha.ServerReflection/", Access::Public),
];

/// The access of a rule declared in the protos.
fn from_contract(access: steward_proto::authz::Access) -> Option<Access> {
    use steward_proto::authz::Access as Declared;
    match access {
        Declared::Unspecified => None,
        Declared::Public => Some(Access::Public),
        Declared::Internal => Some(Access::Internal),
        Declared::Agent => Some(Access::Agent),
        Declared::Enrollment => Some(Access::Enrollment),
        Declared::AnyRole => Some(Access::AnyRole),
        Declared::Administrator => Some(Access::Administrator),
        Declared::Billing => Some(Access::Billing),
    }
}

/// Whether a built-in role holds `permission`. The billing flag is orthogonal to the role:
/// billing permissions come from it (see [`holds`]), never from a role.
///
/// - **Administrator**: every permission of the catalog but billing, so a permission added to
///   the contract is an Administrator's without a change here.
/// - **Command Runner**: [`COMMAND_RUNNER`].
pub fn grants(role: Role, permission: Permission) -> bool {
    match role {
        Role::Administrator => {
            permission != Permission::Unspecified && !BILLING_PERMISSIONS.contains(&permission)
        }
        Role::CommandRunner => COMMAND_RUNNER.contains(&permission),
    }
}

/// A Command Runner's permissions: its own profile and organization, the catalogs, and
/// commands, access checks and runs, which the command service narrows to the commands granted
/// to it and its own runs.
pub const COMMAND_RUNNER: &[Permission] = &[
    Permission::ProfileRead,
    Permission::ProfileUpdate,
    Permission::ProfileSecurity,
    Permission::OrganizationsRead,
    Permission::PermissionsRead,
    Permission::CommandsRead,
    Permission::CommandsRun,
    Permission::AccessCheck,
    Permission::RunsRead,
    Permission::RunsCancel,
];

/// A built-in role as the API shows it (`RoleService`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltIn {
    /// The role.
    pub role: Role,
    /// `roles/{role}`.
    pub name: &'static str,
    /// For people.
    pub display_name: &'static str,
    /// What it is for.
    pub description: &'static str,
}

/// The built-in roles, in the order the API lists them.
pub const BUILT_IN: &[BuiltIn] = &[
    BuiltIn {
        role: Role::Administrator,
        name: "roles/administrator",
        display_name: "Administrator",
        description: "Everything in the organization but billing: administrators, commands, \
                      grants, systems, connect keys, runs and the audit log.",
    },
    BuiltIn {
        role: Role::CommandRunner,
        name: "roles/command-runner",
        display_name: "Command Runner",
        description: "Sees and runs only the commands granted to it, and only its own runs.",
    },
];

/// The permissions the billing flag adds to any role.
pub const BILLING_PERMISSIONS: &[Permission] =
    &[Permission::BillingRead, Permission::BillingUpdate];

/// Whether an administrator with `role` (and billing access when `billing`) holds `permission`.
pub fn holds(role: Role, billing: bool, permission: Permission) -> bool {
    grants(role, permission) || (billing && BILLING_PERMISSIONS.contains(&permission))
}

/// The rule of a gRPC path: who may call it and the permission it needs, or `None` when there
/// is no rule (the call is then refused).
pub fn rule(path: &str) -> Option<(Access, Option<Permission>)> {
    if let Some(rule) = steward_proto::authz::rule(path) {
        return from_contract(rule.access).map(|access| (access, rule.permission));
    }
    INFRASTRUCTURE.iter().find_map(|(key, access)| path.starts_with(key).then_some((*access, None)))
}

/// The rule for a gRPC path, or `None` when there is none (the call is then refused): the
/// `steward.authz.v1.rule` option of a Steward RPC ([`steward_proto::authz::RULES`], generated
/// from the protos), or an [`INFRASTRUCTURE`] rule.
pub fn rule_for(path: &str) -> Option<Access> {
    if let Some(rule) = steward_proto::authz::rule(path) {
        return from_contract(rule.access);
    }
    INFRASTRUCTURE.iter().find_map(|(key, access)| path.starts_with(key).then_some(*access))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permissions of the built-in roles give exactly what the access levels of the
    /// contract say, for every RPC: the role table and the permissions cannot disagree.
    #[test]
    fn built_in_roles_hold_what_the_access_levels_grant() {
        for rule in steward_proto::authz::RULES {
            let Some(permission) = rule.permission else { continue };
            for billing in [false, true] {
                let admin = holds(Role::Administrator, billing, permission);
                let runner = holds(Role::CommandRunner, billing, permission);
                let (admin_expected, runner_expected) = match from_contract(rule.access) {
                    Some(Access::Administrator) => (true, false),
                    Some(Access::AnyRole | Access::Enrollment) => (true, true),
                    Some(Access::Billing) => (billing, billing),
                    other => panic!("{} needs {permission:?} but is {other:?}", rule.path),
                };
                assert_eq!((admin, runner), (admin_expected, runner_expected), "{}", rule.path);
            }
        }
    }

    #[test]
    fn declared_and_infrastructure_rules_resolve() {
        assert_eq!(
            rule_for("/steward.admin.v1.AdminService/CreateAdministrator"),
            Some(Access::Administrator)
        );
        assert_eq!(
            rule_for("/steward.auth.v1.AuthInternalService/RevokeSessions"),
            Some(Access::Internal)
        );
        assert_eq!(rule_for("/grpc.health.v1.Health/Check"), Some(Access::Public));
        assert_eq!(rule_for("/steward.commands.v1.AgentService/OpenStream"), Some(Access::Agent));
        assert_eq!(rule_for("/steward.admin.v1.AdminService/Nope"), None);
        assert_eq!(rule_for("/steward.admin.v1.AdminServiceX/GetProfile"), None);
    }
}
