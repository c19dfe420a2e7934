//! Access checks with reasons (CheckAccess, BatchCheckAccess).

use std::collections::HashMap;

use steward_proto::commands::v1::{
    batch_check_access_result, Action, BatchCheckAccessRequest, BatchCheckAccessResponse,
    BatchCheckAccessResult, CheckAccessRequest, CheckAccessResponse, Decision, DecisionReason,
    ErrorStatus,
};
use steward_runtime::authn::{AdministratorCall, Principal};
use steward_runtime::claims::Role;
use steward_runtime::names::{
    AdministratorName, CommandName, OrganizationName, ServiceAccountName, SystemName,
};
use steward_runtime::roles::{self, Permission, Permissions};
use steward_runtime::{ApiError, ApiResult};

use crate::caller::{everywhere, lookup_role, Reuse};
use crate::command::{find_command, targets_of_command};
use crate::entity::grant;
use crate::grant::find_grant;
use crate::{caller, State};

/// Largest BatchCheckAccess.
pub(crate) const MAX_BATCH: usize = 100;

/// A decision.
pub(crate) fn decision(
    allowed: bool,
    reason: DecisionReason,
    message: impl Into<String>,
) -> Decision {
    Decision {
        allowed,
        reason: reason as i32,
        message: message.into(),
        grant: String::new(),
        grantor: String::new(),
    }
}

/// Whose access is checked: an administrator or a service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    /// `organizations/{o}/administrators/{a}`.
    Administrator(AdministratorName),
    /// `organizations/{o}/serviceAccounts/{s}`.
    ServiceAccount(ServiceAccountName),
}

impl Subject {
    /// Parses an administrator's or a service account's name.
    pub(crate) fn parse(field: &str, value: &str) -> ApiResult<Self> {
        if value.contains("/serviceAccounts/") {
            ServiceAccountName::parse(field, value).map(Self::ServiceAccount)
        } else {
            AdministratorName::parse(field, value).map(Self::Administrator)
        }
    }

    /// The organization it belongs to.
    pub(crate) fn organization(&self) -> OrganizationName {
        match self {
            Self::Administrator(name) => name.organization(),
            Self::ServiceAccount(name) => name.organization(),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Administrator(name) => name.fmt(f),
            Self::ServiceAccount(name) => name.fmt(f),
        }
    }
}

/// What a request asks: a command check (v1, or `commands.read`/`commands.run` on a
/// command), or a catalog permission on a resource.
enum CommandCheck {
    Command(CommandName, Action),
    Permission(Permission),
}

fn command_check(req: &CheckAccessRequest) -> ApiResult<CommandCheck> {
    if req.permission.is_empty() {
        if !req.resource.is_empty() {
            return Err(ApiError::invalid("resource", "is only read with `permission`"));
        }
        let action = match Action::try_from(req.action) {
            Ok(Action::Read) => Action::Read,
            Ok(Action::Run) => Action::Run,
            _ => return Err(ApiError::invalid("action", "must be ACTION_READ or ACTION_RUN")),
        };
        return Ok(CommandCheck::Command(CommandName::parse("command", &req.command)?, action));
    }
    let permission = roles::permission_named(&req.permission).ok_or_else(|| {
        ApiError::invalid(
            "permission",
            format!("`{}` is not in the permission catalog", req.permission),
        )
    })?;
    if !req.command.is_empty() || req.action != Action::Unspecified as i32 {
        return Err(ApiError::invalid(
            "permission",
            "give either `command` and `action`, or `permission` and `resource`",
        ));
    }
    let action = match permission {
        Permission::CommandsRead => Some(Action::Read),
        Permission::CommandsRun => Some(Action::Run),
        _ => None,
    };
    match (action, CommandName::parse("resource", &req.resource)) {
        (Some(action), Ok(command)) => Ok(CommandCheck::Command(command, action)),
        _ => Ok(CommandCheck::Permission(permission)),
    }
}

/// Refuses (`NOT_SELF`) a caller asking about someone else without `access.check` over the
/// whole organization, and any caller asking about another organization.
fn allowed_to_ask(caller: &Principal, principal: &Subject) -> ApiResult<()> {
    let name = principal.to_string();
    if name != caller.administrator {
        if !everywhere(caller, Permission::AccessCheck) {
            return Err(ApiError::denied(
                "NOT_SELF",
                "your role may only check its own access (access.check over its own resources)",
            ));
        }
        // The answer tells whether the principal exists and what its role holds: asking about
        // someone else also needs reading them.
        let read = match principal {
            Subject::Administrator(_) => Permission::AdministratorsRead,
            Subject::ServiceAccount(_) => Permission::ServiceAccountsRead,
        };
        if !caller.permissions.holds(read) {
            return Err(ApiError::denied(
                "NOT_SELF",
                format!(
                    "asking about someone else needs {}, which your role does not hold",
                    roles::permission_name(read)
                ),
            ));
        }
    }
    caller.check_organization(&name)
}

/// The current role and permissions of `subject` (`None` when it does not exist), cached per
/// batch; the caller's own come from its re-checked principal.
async fn subject_role(
    state: &State,
    caller: &Principal,
    subject: &Subject,
    roles: &mut HashMap<String, Option<(Role, Permissions)>>,
) -> ApiResult<Option<(Role, Permissions)>> {
    let name = subject.to_string();
    if name == caller.administrator {
        return Ok(Some((caller.role, caller.permissions)));
    }
    if let Some(role) = roles.get(&name) {
        return Ok(*role);
    }
    let role = match subject {
        Subject::Administrator(_) => lookup_role(state, &name, Reuse::Lease).await?,
        Subject::ServiceAccount(account) => {
            caller::lookup_account_role(state, account, "", Reuse::Lease).await?
        }
    };
    roles.insert(name, role);
    Ok(role)
}

/// One access check, in the order of the `DecisionReason` documentation. `roles` caches
/// principal lookups within one batch.
pub(crate) async fn check(
    state: &State,
    caller: &Principal,
    req: &CheckAccessRequest,
    roles: &mut HashMap<String, Option<(Role, Permissions)>>,
) -> ApiResult<Decision> {
    let principal_name = if req.principal.is_empty() {
        Subject::parse("principal", &caller.administrator)?
    } else {
        Subject::parse("principal", &req.principal)?
    };
    let principal = principal_name.to_string();
    let (command, action) = match command_check(req)? {
        CommandCheck::Command(command, action) => (command, action),
        CommandCheck::Permission(permission) => {
            allowed_to_ask(caller, &principal_name)?;
            let role = subject_role(state, caller, &principal_name, roles).await?;
            return crate::permission_check::check(
                state,
                &principal_name,
                permission,
                &req.resource,
                role,
            )
            .await;
        }
    };
    allowed_to_ask(caller, &principal_name)?;
    let system =
        if req.system.is_empty() { None } else { Some(SystemName::parse("system", &req.system)?) };
    // Facts are gathered in the order `decide` reads them and only as far as needed: a
    // reason known from the names alone costs no lookup, and a Command Runner without a
    // grant causes no command lookup at all (so not even timing tells whether it exists).
    let db = &state.db;
    let caller_is_admin = everywhere(caller, Permission::AccessCheck);
    let organization = principal_name.organization();
    let same_organization = command.organization() == organization
        && system.as_ref().is_none_or(|s| s.organization() == organization);
    let role = if same_organization {
        subject_role(state, caller, &principal_name, roles).await?
    } else {
        None
    };
    let grant = match role {
        Some(_) => find_grant(db, &req.command, &principal).await?,
        None => None,
    };
    let may_learn = role.is_some() && (caller_is_admin || grant.is_some());
    let command_exists =
        may_learn && find_command(db, organization.as_str(), &req.command).await?.is_some();
    let targets = if command_exists && action == Action::Run {
        targets_of_command(db, &req.command).await?
    } else {
        Vec::new()
    };
    Ok(decide(&Facts {
        caller_is_admin,
        principal: &principal_name,
        command: &command,
        action,
        system: system.as_ref(),
        role,
        grant: grant.as_ref(),
        command_exists,
        targets: &targets,
    }))
}

pub(crate) async fn check_one(
    state: &State,
    call: AdministratorCall,
    req: CheckAccessRequest,
) -> ApiResult<CheckAccessResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::AccessCheck).await?;
    let decision = check(state, p, &req, &mut HashMap::new()).await?;
    Ok(CheckAccessResponse { decision: Some(decision) })
}

pub(crate) async fn batch_check(
    state: &State,
    call: AdministratorCall,
    req: BatchCheckAccessRequest,
) -> ApiResult<BatchCheckAccessResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::AccessCheck).await?;
    let req = &req;
    OrganizationName::parse("parent", &req.parent)?;
    p.check_organization(&req.parent)?;
    if req.requests.is_empty() || req.requests.len() > MAX_BATCH {
        return Err(ApiError::invalid("requests", "must hold 1 to 100 checks"));
    }
    let mut roles = HashMap::new();
    let mut results = Vec::with_capacity(req.requests.len());
    for item in &req.requests {
        let result = match check(state, p, item, &mut roles).await {
            Ok(decision) => batch_check_access_result::Result::Decision(decision),
            Err(err @ (ApiError::Internal(_) | ApiError::Unavailable(_))) => return Err(err),
            Err(err) => batch_check_access_result::Result::Error(ErrorStatus {
                code: err.code() as i32,
                message: err.to_string(),
            }),
        };
        results.push(BatchCheckAccessResult { result: Some(result) });
    }
    Ok(BatchCheckAccessResponse { results })
}

/// What an access decision depends on, gathered from the request and the database.
pub(crate) struct Facts<'a> {
    /// Whether the caller holds `access.check` organization-wide (and so may learn why, about
    /// anyone).
    pub caller_is_admin: bool,
    /// Whose access is checked.
    pub principal: &'a Subject,
    /// The command asked about.
    pub command: &'a CommandName,
    /// Read or run.
    pub action: Action,
    /// The system asked about, if any.
    pub system: Option<&'a SystemName>,
    /// The principal's current role; `None` when it does not exist (or was deleted).
    pub role: Option<(Role, Permissions)>,
    /// The principal's grant on the command, if it holds one.
    pub grant: Option<&'a grant::Model>,
    /// Whether the command exists in the principal's organization.
    pub command_exists: bool,
    /// The command's target systems (read only for ACTION_RUN).
    pub targets: &'a [String],
}

/// The access decision, in the order the `DecisionReason` documentation gives. Pure: every
/// reason is decided from `facts` alone (unit-tested below). A Command Runner asking about itself
/// learns nothing about commands it holds no grant on: NO_GRANT, whether the command exists or
/// has targets.
pub(crate) fn decide(facts: &Facts<'_>) -> Decision {
    let Facts { principal, command, system, .. } = *facts;
    let organization = principal.organization();
    if command.organization() != organization {
        return decision(
            false,
            DecisionReason::WrongOrganization,
            format!("{command} belongs to another organization than {principal}"),
        );
    }
    if let Some(system) = system.filter(|s| s.organization() != organization) {
        return decision(
            false,
            DecisionReason::WrongOrganization,
            format!("{system} belongs to another organization than {principal}"),
        );
    }
    let Some((role, held)) = facts.role else {
        return decision(
            false,
            DecisionReason::PrincipalNotFound,
            format!("{principal} does not exist or has been deleted"),
        );
    };
    if !facts.caller_is_admin && facts.grant.is_none() {
        return decision(
            false,
            DecisionReason::NoGrant,
            format!("{principal} holds no grant on {command}"),
        );
    }
    if !facts.command_exists {
        return decision(
            false,
            DecisionReason::CommandNotFound,
            format!("{command} does not exist"),
        );
    }
    if facts.action == Action::Run {
        if facts.targets.is_empty() {
            return decision(
                false,
                DecisionReason::NoTargetSystems,
                format!("{command} has no target systems, so it cannot run anywhere"),
            );
        }
        if let Some(system) = system.filter(|s| !facts.targets.iter().any(|t| t == s.as_str())) {
            return decision(
                false,
                DecisionReason::SystemNotTarget,
                format!("{system} is not one of the target systems of {command}"),
            );
        }
    }
    let needed = match facts.action {
        Action::Read | Action::Unspecified => Permission::CommandsRead,
        Action::Run => Permission::CommandsRun,
    };
    let needed_name = roles::permission_name(needed);
    if role == Role::Administrator {
        return decision(
            true,
            DecisionReason::RoleAdministrator,
            format!("{principal} is an Administrator, who may do anything in the organization"),
        );
    }
    if held.everywhere(needed) {
        return decision(
            true,
            DecisionReason::RolePermission,
            format!(
                "{principal}'s role {} holds {needed_name} over the whole organization",
                roles::built_in_name(role)
            ),
        );
    }
    if !held.holds(needed) {
        return decision(
            false,
            DecisionReason::MissingPermission,
            format!(
                "{principal}'s role {} does not hold {needed_name}",
                roles::built_in_name(role)
            ),
        );
    }
    match facts.grant {
        Some(g) => Decision {
            allowed: true,
            reason: DecisionReason::Grant as i32,
            message: format!("granted by {}", g.grantor),
            grant: g.name.clone(),
            grantor: g.grantor.clone(),
        },
        None => decision(
            false,
            DecisionReason::NoGrant,
            format!("{principal} holds {needed_name} only over granted commands, and no grant on {command}"),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the tests start from the wall clock; nothing waits on it
mod tests {
    use super::*;

    const RUNNER: &str = "organizations/o/administrators/runner";
    const COMMAND: &str = "organizations/o/commands/c";
    const SYSTEM: &str = "organizations/o/systems/s";

    fn the_grant() -> grant::Model {
        grant::Model {
            name: format!("{COMMAND}/grants/g"),
            organization: "organizations/o".into(),
            command: COMMAND.into(),
            grantee: RUNNER.into(),
            grantor: "organizations/o/administrators/owner".into(),
            create_time: chrono::Utc::now(),
        }
    }

    struct Names {
        runner: Subject,
        command: CommandName,
        system: SystemName,
        other_command: CommandName,
        other_system: SystemName,
    }

    fn names() -> Names {
        Names {
            runner: Subject::parse("principal", RUNNER).unwrap(),
            command: CommandName::parse("command", COMMAND).unwrap(),
            system: SystemName::parse("system", SYSTEM).unwrap(),
            other_command: CommandName::parse("command", "organizations/x/commands/c").unwrap(),
            other_system: SystemName::parse("system", "organizations/x/systems/s").unwrap(),
        }
    }

    /// A Command Runner with a grant asking to run the command on its one target.
    fn granted<'a>(n: &'a Names, grant: &'a grant::Model, targets: &'a [String]) -> Facts<'a> {
        Facts {
            caller_is_admin: false,
            principal: &n.runner,
            command: &n.command,
            action: Action::Run,
            system: Some(&n.system),
            role: Some((Role::CommandRunner, roles::built_in(Role::CommandRunner))),
            grant: Some(grant),
            command_exists: true,
            targets,
        }
    }

    fn reason(facts: &Facts<'_>) -> DecisionReason {
        DecisionReason::try_from(decide(facts).reason).unwrap()
    }

    #[test]
    fn every_reason_follows_from_the_facts() {
        let n = names();
        let grant = the_grant();
        let targets = vec![SYSTEM.to_string()];
        let base = granted(&n, &grant, &targets);
        let allowed = decide(&base);
        assert!(allowed.allowed);
        assert_eq!(allowed.grant, grant.name);
        assert_eq!(reason(&base), DecisionReason::Grant);

        let elsewhere = Facts { command: &n.other_command, ..granted(&n, &grant, &targets) };
        assert_eq!(reason(&elsewhere), DecisionReason::WrongOrganization);
        let far = Facts { system: Some(&n.other_system), ..granted(&n, &grant, &targets) };
        assert_eq!(reason(&far), DecisionReason::WrongOrganization);
        let ghost = Facts { role: None, ..granted(&n, &grant, &targets) };
        assert_eq!(reason(&ghost), DecisionReason::PrincipalNotFound);
        let missing = Facts { command_exists: false, ..granted(&n, &grant, &targets) };
        assert_eq!(reason(&missing), DecisionReason::CommandNotFound);
        let nowhere = Facts { targets: &[], ..granted(&n, &grant, &targets) };
        assert_eq!(reason(&nowhere), DecisionReason::NoTargetSystems);
        let read = Facts { targets: &[], action: Action::Read, ..granted(&n, &grant, &targets) };
        assert_eq!(reason(&read), DecisionReason::Grant, "targets matter only for running");
        let other = ["organizations/o/systems/t".to_string()];
        let not_target = Facts { targets: &other, ..granted(&n, &grant, &targets) };
        assert_eq!(reason(&not_target), DecisionReason::SystemNotTarget);
        let admin = Facts {
            role: Some((Role::Administrator, roles::built_in(Role::Administrator))),
            grant: None,
            caller_is_admin: true,
            ..base
        };
        assert_eq!(reason(&admin), DecisionReason::RoleAdministrator);
        let asked_by_admin = Facts { grant: None, caller_is_admin: true, ..base };
        assert_eq!(reason(&asked_by_admin), DecisionReason::NoGrant);
    }

    // A Command Runner without a grant learns nothing: missing, untargeted and ungranted
    // commands all answer NO_GRANT with the same sentence.
    #[test]
    fn a_runner_without_a_grant_learns_nothing() {
        let n = names();
        let grant = the_grant();
        let targets = vec![SYSTEM.to_string()];
        let cases = [
            Facts { grant: None, ..granted(&n, &grant, &targets) },
            Facts { grant: None, command_exists: false, ..granted(&n, &grant, &targets) },
            Facts { grant: None, targets: &[], ..granted(&n, &grant, &targets) },
        ];
        let decisions: Vec<Decision> = cases.iter().map(decide).collect();
        for d in &decisions {
            assert_eq!(d.reason, DecisionReason::NoGrant as i32);
            assert!(!d.allowed);
        }
        assert!(decisions.iter().all(|d| d.message == decisions[0].message));
    }
}
