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
    /// Any signed-in administrator, including a token scoped to MFA enrolment.
    Enrollment,
    /// A caller whose role holds the permission; every built-in role does, at least over its
    /// own resources, to which handlers narrow.
    AnyRole,
    /// A caller whose role holds the permission; not every role does.
    Administrator,
    /// A caller with billing access, whatever its role.
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

/// Where a held permission reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every resource of the organization.
    Organization,
    /// Only what is the caller's own: the commands granted to it (read, run, access checks
    /// about itself) and its own runs. The Command Runner's and Help Desk's command permissions.
    Own,
}

/// A set of permissions, each held organization-wide or only over the caller's own resources:
/// what a role grants, and (with the billing flag) what a caller holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Permissions {
    everywhere: u64,
    own: u64,
}

/// The bit of a permission; the catalog's values are small (checked by a test).
fn bit(permission: Permission) -> u64 {
    u32::try_from(permission as i32).ok().and_then(|n| 1u64.checked_shl(n)).unwrap_or(0)
}

impl Permissions {
    /// No permission.
    pub const NONE: Self = Self { everywhere: 0, own: 0 };

    /// Adds `permission` with `scope` (organization-wide wins over own).
    #[must_use]
    pub fn with(mut self, permission: Permission, scope: Scope) -> Self {
        if permission == Permission::Unspecified {
            return self;
        }
        match scope {
            Scope::Organization => {
                self.everywhere |= bit(permission);
                self.own &= !bit(permission);
            }
            Scope::Own if self.everywhere & bit(permission) == 0 => self.own |= bit(permission),
            Scope::Own => {}
        }
        self
    }

    /// Every permission of `list`, organization-wide.
    pub fn organization_wide(list: impl IntoIterator<Item = Permission>) -> Self {
        list.into_iter().fold(Self::NONE, |set, p| set.with(p, Scope::Organization))
    }

    /// Whether `permission` is held at all.
    pub fn holds(&self, permission: Permission) -> bool {
        (self.everywhere | self.own) & bit(permission) != 0
    }

    /// How far `permission` reaches, `None` when it is not held.
    pub fn scope(&self, permission: Permission) -> Option<Scope> {
        if self.everywhere & bit(permission) != 0 {
            Some(Scope::Organization)
        } else if self.own & bit(permission) != 0 {
            Some(Scope::Own)
        } else {
            None
        }
    }

    /// Whether `permission` is held organization-wide (not only over one's own resources).
    pub fn everywhere(&self, permission: Permission) -> bool {
        self.everywhere & bit(permission) != 0
    }

    /// Whether these permissions include every one of `other`, each at least as far: the
    /// no-escalation test for assigning a role or creating one.
    pub fn covers(&self, other: &Self) -> bool {
        other.everywhere & !self.everywhere == 0 && other.own & !(self.everywhere | self.own) == 0
    }

    /// What both hold, each at the narrower scope: a token's permissions against the caller's
    /// current ones, so neither a demotion nor a promotion after the token was issued widens
    /// what it may do.
    #[must_use]
    pub fn intersect(&self, other: &Self) -> Self {
        let everywhere = self.everywhere & other.everywhere;
        let held = (self.everywhere | self.own) & (other.everywhere | other.own);
        Self { everywhere, own: held & !everywhere }
    }

    /// These permissions without any of `list`.
    #[must_use]
    pub fn without(self, list: &[Permission]) -> Self {
        let mask = list.iter().fold(0, |mask, p| mask | bit(*p));
        Self { everywhere: self.everywhere & !mask, own: self.own & !mask }
    }

    /// What either holds, each at the wider scope.
    #[must_use]
    pub fn union(&self, other: &Self) -> Self {
        let everywhere = self.everywhere | other.everywhere;
        Self { everywhere, own: (self.own | other.own) & !everywhere }
    }

    /// These permissions with the billing flag's added when `billing`.
    #[must_use]
    pub fn with_billing(self, billing: bool) -> Self {
        if billing {
            BILLING_PERMISSIONS.iter().fold(self, |set, p| set.with(*p, Scope::Organization))
        } else {
            self
        }
    }

    /// The held permissions in catalog order, with their scope.
    pub fn iter(&self) -> impl Iterator<Item = (Permission, Scope)> + '_ {
        steward_proto::authz::PERMISSIONS
            .iter()
            .filter_map(|entry| self.scope(entry.permission).map(|s| (entry.permission, s)))
    }
}

/// What every role holds: one's own profile, settings and second factor, the organization, and
/// the permission catalog and roles.
pub const EVERY_ROLE: &[Permission] = &[
    Permission::ProfileRead,
    Permission::ProfileUpdate,
    Permission::ProfileSecurity,
    Permission::OrganizationsRead,
    Permission::PermissionsRead,
];

/// What only people hold: their own profile, settings, password and second factor, and the
/// issuing of machine credentials (service accounts, API keys), so a leaked key cannot mint its
/// own successor or a fresh account. A service account's token never carries them, whatever
/// its role.
pub const PEOPLE_ONLY: &[Permission] = &[
    Permission::ProfileRead,
    Permission::ProfileUpdate,
    Permission::ProfileSecurity,
    Permission::ServiceAccountsCreate,
    Permission::ServiceAccountsKeys,
];

/// The command permissions a role may hold only over its own resources: the commands granted
/// to it and its own runs.
const GRANTED_COMMANDS: &[Permission] = &[
    Permission::CommandsRead,
    Permission::CommandsRun,
    Permission::AccessCheck,
    Permission::RunsCancel,
];

/// The permissions of a built-in role. The billing flag is orthogonal to the role: billing
/// permissions come from it ([`Permissions::with_billing`]), never from a role.
///
/// - **Administrator**: every permission of the catalog but billing, so a permission added to
///   the contract is an Administrator's without a change here.
/// - **Manager**: commands, grants, access checks, runs, connect keys, systems and the audit
///   log; nothing about administrators.
/// - **Help Desk**: reads administrators, resends invites, resets second factors, reads
///   systems and runs, and reads and runs the commands granted to it.
/// - **Read Only**: every read but the payment card.
/// - **Command Runner**: reads and runs the commands granted to it, and its own runs.
///
/// Every role also holds [`EVERY_ROLE`].
pub fn built_in(role: Role) -> Permissions {
    use Permission as P;
    let base = Permissions::organization_wide(EVERY_ROLE.iter().copied());
    let own = |set: Permissions, list: &[Permission]| {
        list.iter().fold(set, |set, p| set.with(*p, Scope::Own))
    };
    let wide = |set: Permissions, list: &[Permission]| {
        list.iter().fold(set, |set, p| set.with(*p, Scope::Organization))
    };
    match role {
        Role::Administrator => wide(
            base,
            &steward_proto::authz::PERMISSIONS
                .iter()
                .map(|entry| entry.permission)
                .filter(|p| !BILLING_PERMISSIONS.contains(p))
                .collect::<Vec<_>>(),
        ),
        Role::Manager => wide(
            base,
            &[
                P::CommandsCreate,
                P::CommandsRead,
                P::CommandsUpdate,
                P::CommandsDelete,
                P::CommandsRun,
                P::GrantsCreate,
                P::GrantsRead,
                P::GrantsDelete,
                P::AccessCheck,
                P::RunsRead,
                P::RunsCancel,
                P::ConnectKeysCreate,
                P::ConnectKeysRead,
                P::ConnectKeysDelete,
                P::SystemsRead,
                P::SystemsUpdate,
                P::SystemsDelete,
                P::AuditRead,
            ],
        ),
        Role::HelpDesk => own(
            wide(
                base,
                &[
                    P::AdministratorsRead,
                    P::AdministratorsInvite,
                    P::AdministratorsResetMfa,
                    P::SystemsRead,
                    P::RunsRead,
                ],
            ),
            GRANTED_COMMANDS,
        ),
        Role::ReadOnly => wide(
            base,
            &[
                P::AdministratorsRead,
                P::AuditRead,
                P::CommandsRead,
                P::GrantsRead,
                P::AccessCheck,
                P::RunsRead,
                P::ConnectKeysRead,
                P::SystemsRead,
            ],
        ),
        Role::CommandRunner => own(own(base, GRANTED_COMMANDS), &[P::RunsRead]),
        // What a custom role adds comes with it ([`custom`]).
        Role::Custom => base,
    }
}

/// The permissions of an organization's own role holding the catalog permissions `names`, each
/// organization-wide, plus [`EVERY_ROLE`]. Unknown names and billing permissions (which only
/// the billing flag grants) are ignored here; the admin service refuses them on input.
pub fn custom<'a>(names: impl IntoIterator<Item = &'a str>) -> Permissions {
    names
        .into_iter()
        .filter_map(permission_named)
        .filter(|p| !BILLING_PERMISSIONS.contains(p))
        .fold(built_in(Role::Custom), |set, p| set.with(p, Scope::Organization))
}

/// The catalog permission named `name` (`resource.verb`).
pub fn permission_named(name: &str) -> Option<Permission> {
    steward_proto::authz::PERMISSIONS.iter().find(|e| e.name == name).map(|e| e.permission)
}

/// The permissions that let their holder manage other administrators. Acting on an
/// administrator who holds any of them (changing, deleting, resetting the second factor of, or
/// re-inviting them) needs every permission that administrator holds: a Help Desk resets a
/// Manager's second factor, never an Administrator's.
pub const MANAGES_ADMINISTRATORS: &[Permission] = &[
    Permission::AdministratorsCreate,
    Permission::AdministratorsUpdate,
    Permission::AdministratorsDelete,
    Permission::AdministratorsInvite,
    Permission::AdministratorsResetMfa,
];

/// Whether a caller holding `caller` may act on an administrator holding `target`: always,
/// unless the target can manage administrators and holds something the caller does not.
pub fn may_act_on(caller: &Permissions, target: &Permissions) -> bool {
    !MANAGES_ADMINISTRATORS.iter().any(|p| target.holds(*p)) || caller.covers(target)
}

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
        role: Role::Manager,
        name: "roles/manager",
        display_name: "Manager",
        description: "Commands, grants, systems, connect keys and runs, and reads the audit \
                      log; nothing about administrators.",
    },
    BuiltIn {
        role: Role::HelpDesk,
        name: "roles/help-desk",
        display_name: "Help Desk",
        description: "Reads administrators, resends invitations and resets the second factor \
                      of administrators who cannot manage administrators; reads systems and \
                      runs; runs the commands granted to it.",
    },
    BuiltIn {
        role: Role::ReadOnly,
        name: "roles/read-only",
        display_name: "Read Only",
        description: "Reads everything but the payment card; changes nothing, runs nothing.",
    },
    BuiltIn {
        role: Role::CommandRunner,
        name: "roles/command-runner",
        display_name: "Command Runner",
        description: "Sees and runs only the commands granted to it, and only its own runs.",
    },
];

/// The built-in role named `roles/...`.
pub fn built_in_named(name: &str) -> Option<Role> {
    BUILT_IN.iter().find(|r| r.name == name).map(|r| r.role)
}

/// The `roles/...` name of a built-in role.
pub fn built_in_name(role: Role) -> &'static str {
    BUILT_IN.iter().find(|r| r.role == role).map_or("(the organization's own role)", |r| r.name)
}

/// The catalog name of a permission (`resource.verb`).
pub fn permission_name(permission: Permission) -> &'static str {
    steward_proto::authz::PERMISSIONS
        .iter()
        .find(|entry| entry.permission == permission)
        .map_or("an unlisted permission", |entry| entry.name)
}

/// The permissions the billing flag adds to any role.
pub const BILLING_PERMISSIONS: &[Permission] =
    &[Permission::BillingRead, Permission::BillingUpdate];

/// The permissions of `role`: a built-in role's, or, for [`Role::Custom`], the catalog
/// permissions `custom_names` (from a token's claim or the admin service's answer).
pub fn of_role<'a>(role: Role, custom_names: impl IntoIterator<Item = &'a str>) -> Permissions {
    match role {
        Role::Custom => custom(custom_names),
        built_in_role => built_in(built_in_role),
    }
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

    fn holds(role: Role, billing: bool, permission: Permission) -> bool {
        built_in(role).with_billing(billing).holds(permission)
    }

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
                // No role but Administrator reaches an Administrator-only RPC but by its
                // permission, and billing never comes from a role.
                for role in Role::ALL {
                    if BILLING_PERMISSIONS.contains(&permission) {
                        assert_eq!(holds(role, billing, permission), billing, "{role:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_permission_fits_the_set() {
        for entry in steward_proto::authz::PERMISSIONS {
            assert_ne!(bit(entry.permission), 0, "{} does not fit in 64 bits", entry.name);
        }
    }

    #[test]
    fn built_in_roles_nest_as_documented() {
        let admin = built_in(Role::Administrator);
        for role in Role::ALL {
            assert!(admin.covers(&built_in(role)), "{role:?}");
            for p in EVERY_ROLE {
                assert!(built_in(role).everywhere(*p), "{role:?} {p:?}");
            }
        }
        let read_only = built_in(Role::ReadOnly);
        let mutations =
            steward_proto::authz::RULES.iter().filter_map(|r| r.permission).filter(|p| {
                let name = steward_proto::authz::PERMISSIONS
                    .iter()
                    .find(|e| e.permission == *p)
                    .map_or("", |e| e.name);
                !name.ends_with(".read") && *p != Permission::AccessCheck && !EVERY_ROLE.contains(p)
            });
        for p in mutations {
            assert!(!read_only.holds(p), "Read Only holds {p:?}");
        }
        assert!(!read_only.holds(Permission::BillingRead));
        let manager = built_in(Role::Manager);
        assert!(!manager.holds(Permission::AdministratorsRead));
        assert!(manager.everywhere(Permission::CommandsRun));
        let runner = built_in(Role::CommandRunner);
        assert_eq!(runner.scope(Permission::CommandsRun), Some(Scope::Own));
        assert_eq!(built_in(Role::HelpDesk).scope(Permission::RunsRead), Some(Scope::Organization));
        assert!(!runner.covers(&built_in(Role::HelpDesk)));
        assert!(may_act_on(&built_in(Role::HelpDesk), &manager));
        assert!(!may_act_on(&built_in(Role::HelpDesk), &admin));
        assert!(may_act_on(&built_in(Role::HelpDesk), &built_in(Role::HelpDesk)));
    }

    #[test]
    fn intersection_takes_the_narrower_scope() {
        let wide = Permissions::NONE.with(Permission::CommandsRun, Scope::Organization);
        let own = Permissions::NONE.with(Permission::CommandsRun, Scope::Own);
        assert_eq!(wide.intersect(&own).scope(Permission::CommandsRun), Some(Scope::Own));
        assert_eq!(own.intersect(&wide), own);
        assert_eq!(wide.intersect(&Permissions::NONE), Permissions::NONE);
        assert!(wide.covers(&own) && !own.covers(&wide));
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
