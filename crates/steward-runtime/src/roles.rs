//! The role table, declared once: one access rule per RPC. The authentication
//! layer enforces it for every service; handlers only narrow further (organization scoping, a
//! Command Runner's own grants and runs). A method without a rule is refused, and a test walks
//! every method of the file descriptors to prove none is missing.

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

/// The table. Keys are gRPC paths (`/package.Service/Method`); a key ending in `/` covers every
/// method of that service.
pub const RULES: &[(&str, Access)] = &[
    // Infrastructure.
    ("/grpc.health.v1.Health/", Access::Public),
    ("/grpc.reflection.v1.ServerReflection/", Access::Public),
    ("/grpc.reflection.v1alpha.ServerReflection/", Access::Public),
    // Administrators (admin service).
    ("/steward.admin.v1.AdminService/CreateAdministrator", Access::Administrator),
    ("/steward.admin.v1.AdminService/GetAdministrator", Access::Administrator),
    ("/steward.admin.v1.AdminService/ListAdministrators", Access::Administrator),
    ("/steward.admin.v1.AdminService/UpdateAdministrator", Access::Administrator),
    ("/steward.admin.v1.AdminService/BatchDeleteAdministrators", Access::Administrator),
    ("/steward.admin.v1.AdminService/ResendInvite", Access::Administrator),
    ("/steward.admin.v1.AdminService/ResetAdministratorMfa", Access::Administrator),
    ("/steward.admin.v1.AdminService/GetProfile", Access::AnyRole),
    ("/steward.admin.v1.AdminService/UpdateProfile", Access::AnyRole),
    ("/steward.admin.v1.OrganizationService/CreateOrganization", Access::Internal),
    ("/steward.admin.v1.OrganizationService/GetOrganization", Access::AnyRole),
    ("/steward.admin.v1.OrganizationService/ListOrganizations", Access::Internal),
    ("/steward.admin.v1.AdminInternalService/", Access::Internal),
    // Billing and audit (admin service).
    ("/steward.billing.v1.BillingService/GetPaymentCard", Access::Billing),
    ("/steward.billing.v1.BillingService/UpdatePaymentCard", Access::Billing),
    ("/steward.audit.v1.AuditService/ListAuditEvents", Access::Administrator),
    // Authentication (auth service).
    ("/steward.auth.v1.AuthService/AcceptInvite", Access::Public),
    ("/steward.auth.v1.AuthService/SignIn", Access::Public),
    ("/steward.auth.v1.AuthService/VerifyMfa", Access::Public),
    ("/steward.auth.v1.AuthService/RefreshSession", Access::Public),
    ("/steward.auth.v1.AuthService/SignOut", Access::Enrollment),
    ("/steward.auth.v1.AuthService/ChangePassword", Access::AnyRole),
    ("/steward.auth.v1.AuthService/RequestPasswordReset", Access::Public),
    ("/steward.auth.v1.AuthService/ResetPassword", Access::Public),
    ("/steward.auth.v1.AuthService/BeginMfaEnrollment", Access::Enrollment),
    ("/steward.auth.v1.AuthService/ConfirmMfaEnrollment", Access::Enrollment),
    ("/steward.auth.v1.AuthService/GetJwks", Access::Public),
    ("/steward.auth.v1.AuthInternalService/", Access::Internal),
    // Commands, grants, checks and runs (command-authorization service).
    ("/steward.commands.v1.CommandService/CreateCommand", Access::Administrator),
    ("/steward.commands.v1.CommandService/GetCommand", Access::AnyRole),
    ("/steward.commands.v1.CommandService/ListCommands", Access::AnyRole),
    ("/steward.commands.v1.CommandService/UpdateCommand", Access::Administrator),
    ("/steward.commands.v1.CommandService/DeleteCommand", Access::Administrator),
    ("/steward.commands.v1.CommandService/CreateGrant", Access::Administrator),
    ("/steward.commands.v1.CommandService/DeleteGrant", Access::Administrator),
    ("/steward.commands.v1.CommandService/GetGrant", Access::Administrator),
    ("/steward.commands.v1.CommandService/ListGrants", Access::Administrator),
    ("/steward.commands.v1.CommandService/CheckAccess", Access::AnyRole),
    ("/steward.commands.v1.CommandService/BatchCheckAccess", Access::AnyRole),
    ("/steward.commands.v1.CommandService/RunCommand", Access::AnyRole),
    ("/steward.commands.v1.CommandService/GetRun", Access::AnyRole),
    ("/steward.commands.v1.CommandService/ListRuns", Access::AnyRole),
    ("/steward.commands.v1.CommandService/CancelRun", Access::AnyRole),
    ("/steward.commands.v1.CommandService/WatchRun", Access::AnyRole),
    ("/steward.commands.v1.SystemService/", Access::Administrator),
    ("/steward.commands.v1.AgentService/", Access::Agent),
    ("/steward.commands.v1.CommandsInternalService/", Access::Internal),
];

/// The rule for a gRPC path, or `None` when the table has none (the call is then refused).
pub fn rule_for(path: &str) -> Option<Access> {
    RULES.iter().find_map(|(key, access)| {
        let matches = if key.ends_with('/') { path.starts_with(key) } else { path == *key };
        matches.then_some(*access)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_service_wide_rules_resolve() {
        assert_eq!(
            rule_for("/steward.admin.v1.AdminService/CreateAdministrator"),
            Some(Access::Administrator)
        );
        assert_eq!(
            rule_for("/steward.auth.v1.AuthInternalService/RevokeSessions"),
            Some(Access::Internal)
        );
        assert_eq!(rule_for("/steward.admin.v1.AdminService/Nope"), None);
        assert_eq!(rule_for("/steward.admin.v1.AdminServiceX/GetProfile"), None);
    }
}
