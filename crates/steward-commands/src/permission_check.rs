//! CheckAccess with a catalog permission: whether a principal's role (and billing flag) holds a
//! permission on a resource, and why. Command permissions on a command go through the command
//! checks of [`crate::access`] instead (grants count there).

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use steward_proto::commands::v1::{Decision, DecisionReason};
use steward_runtime::claims::Role;
use steward_runtime::names::{OrganizationName, RunName};
use steward_runtime::roles::{self, Permission, Permissions, Scope};
use steward_runtime::ApiResult;

use crate::access::{decision, Subject};
use crate::entity::run;
use crate::State;

/// What a permission decision depends on.
pub(crate) struct Facts<'a> {
    /// Whose access is checked.
    pub principal: &'a Subject,
    /// The permission asked about.
    pub permission: Permission,
    /// The resource named, if any.
    pub resource: Option<&'a str>,
    /// Whether the resource (if any) belongs to the principal's organization.
    pub same_organization: bool,
    /// The principal's current role and permissions; `None` when it does not exist.
    pub role: Option<(Role, Permissions)>,
    /// Whether the resource is the principal's own (its run); `None` when not looked at.
    pub own: Option<bool>,
}

/// The decision, from `facts` alone.
pub(crate) fn decide(facts: &Facts<'_>) -> Decision {
    let Facts { principal, permission, resource, .. } = *facts;
    let name = roles::permission_name(permission);
    let on = resource.map(|r| format!(" on {r}")).unwrap_or_default();
    if !facts.same_organization {
        return decision(
            false,
            DecisionReason::WrongOrganization,
            format!("{} belongs to another organization than {principal}", resource.unwrap_or("")),
        );
    }
    let Some((role, held)) = facts.role else {
        return decision(
            false,
            DecisionReason::PrincipalNotFound,
            format!("{principal} does not exist or has been deleted"),
        );
    };
    let role_name = roles::built_in_name(role);
    if roles::BILLING_PERMISSIONS.contains(&permission) {
        return if held.holds(permission) {
            decision(
                true,
                DecisionReason::BillingFlag,
                format!("{principal} has billing access, which grants {name}"),
            )
        } else {
            decision(
                false,
                DecisionReason::MissingPermission,
                format!("{principal} has no billing access, the only source of {name}"),
            )
        };
    }
    match held.scope(permission) {
        None => decision(
            false,
            DecisionReason::MissingPermission,
            format!("{principal}'s role {role_name} does not hold {name}"),
        ),
        Some(Scope::Organization) if role == Role::Administrator => decision(
            true,
            DecisionReason::RoleAdministrator,
            format!("{principal} is an Administrator, who holds {name}{on}"),
        ),
        Some(Scope::Organization) => decision(
            true,
            DecisionReason::RolePermission,
            format!("{principal}'s role {role_name} holds {name} over the whole organization"),
        ),
        Some(Scope::Own) => match facts.own {
            Some(false) => decision(
                false,
                DecisionReason::NotOwnResource,
                format!(
                    "{principal}'s role {role_name} holds {name} over its own resources only, \
                     and {} is not its own",
                    resource.unwrap_or("the resource")
                ),
            ),
            _ => decision(
                true,
                DecisionReason::OwnResource,
                format!("{principal}'s role {role_name} holds {name} over its own resources{on}"),
            ),
        },
    }
}

/// Gathers the facts and decides.
pub(crate) async fn check(
    state: &State,
    principal: &Subject,
    permission: Permission,
    resource: &str,
    role: Option<(Role, Permissions)>,
) -> ApiResult<Decision> {
    let resource = (!resource.is_empty()).then_some(resource);
    let same_organization = match resource {
        None => true,
        Some(name) => organization_of(name)? == principal.organization(),
    };
    let own_only = role.is_some_and(|(_, held)| held.scope(permission) == Some(Scope::Own));
    let own = match resource {
        Some(name) if same_organization && own_only => Some(owns(state, principal, name).await?),
        _ => None,
    };
    Ok(decide(&Facts { principal, permission, resource, same_organization, role, own }))
}

/// The organization of any resource name of the API.
fn organization_of(name: &str) -> ApiResult<OrganizationName> {
    let mut segments = name.splitn(3, '/');
    let organization = match (segments.next(), segments.next()) {
        (Some("organizations"), Some(id)) => format!("organizations/{id}"),
        _ => String::new(),
    };
    OrganizationName::parse("resource", &organization)
}

/// Whether `name` is the principal's own: a run it started. Other resources are nobody's own.
async fn owns(state: &State, principal: &Subject, name: &str) -> ApiResult<bool> {
    let Ok(run_name) = RunName::parse("resource", name) else { return Ok(false) };
    let found = run::Entity::find_by_id(run_name.to_string())
        .filter(run::Column::Organization.eq(run_name.organization().to_string()))
        .one(&state.db)
        .await?;
    Ok(found.is_some_and(|run| run.runner == principal.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(facts: &Facts<'_>) -> DecisionReason {
        DecisionReason::try_from(decide(facts).reason).unwrap()
    }

    #[test]
    fn every_reason_follows_from_the_facts() {
        let runner = Subject::parse("p", "organizations/o/administrators/r").unwrap();
        let base = Facts {
            principal: &runner,
            permission: Permission::RunsRead,
            resource: None,
            same_organization: true,
            role: Some((Role::CommandRunner, roles::built_in(Role::CommandRunner))),
            own: None,
        };
        assert_eq!(reason(&base), DecisionReason::OwnResource);
        assert_eq!(reason(&Facts { own: Some(true), ..base }), DecisionReason::OwnResource);
        assert_eq!(reason(&Facts { own: Some(false), ..base }), DecisionReason::NotOwnResource);
        let delete = Facts { permission: Permission::AdministratorsDelete, ..base };
        assert_eq!(reason(&delete), DecisionReason::MissingPermission);
        assert_eq!(
            reason(&Facts { same_organization: false, ..base }),
            DecisionReason::WrongOrganization
        );
        assert_eq!(reason(&Facts { role: None, ..base }), DecisionReason::PrincipalNotFound);
        let admin = Some((Role::Administrator, roles::built_in(Role::Administrator)));
        assert_eq!(reason(&Facts { role: admin, ..delete }), DecisionReason::RoleAdministrator);
        let manager = Some((Role::Manager, roles::built_in(Role::Manager)));
        assert_eq!(reason(&Facts { role: manager, ..base }), DecisionReason::RolePermission);
        let card = Facts { permission: Permission::BillingUpdate, ..base };
        assert_eq!(reason(&card), DecisionReason::MissingPermission);
        let with_flag = Some((Role::ReadOnly, roles::built_in(Role::ReadOnly).with_billing(true)));
        assert_eq!(reason(&Facts { role: with_flag, ..card }), DecisionReason::BillingFlag);
    }
}
