//! Who may call what. Each RPC's rule is declared once, as the `steward.authz.v1.rule` option
//! of its method in the protos; `steward-proto`'s build turns the options into the table this
//! module reads (a method without a rule fails the build). The authentication layer enforces it
//! for every service; handlers only narrow further (organization scoping, a Command Runner's own
//! grants and runs). A path without a rule is refused.

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
