//! Access checks with reasons (CheckAccess, BatchCheckAccess).

use super::*;

impl Commands {
    /// One access check, in the order of the `DecisionReason` documentation. `roles` caches
    /// principal lookups within one batch.
    pub(super) async fn check(
        &self,
        caller: &Principal,
        req: &CheckAccessRequest,
        roles: &mut HashMap<String, Option<Role>>,
    ) -> ApiResult<Decision> {
        let action = match Action::try_from(req.action) {
            Ok(Action::Read) => Action::Read,
            Ok(Action::Run) => Action::Run,
            _ => return Err(ApiError::invalid("action", "must be ACTION_READ or ACTION_RUN")),
        };
        parse_command("command", &req.command)?;
        let principal = if req.principal.is_empty() {
            caller.administrator.clone()
        } else {
            parse_admin("principal", &req.principal)?;
            req.principal.clone()
        };
        if !is_admin(caller) && principal != caller.administrator {
            return Err(ApiError::denied(
                "NOT_SELF",
                "Command Runners may only check their own access",
            ));
        }
        caller.check_organization(&principal)?;
        let system = if req.system.is_empty() {
            None
        } else {
            parse_system("system", &req.system)?;
            Some(req.system.as_str())
        };
        let organization = organization_of(&principal);
        if organization_of(&req.command) != organization {
            return Ok(decision(
                false,
                DecisionReason::WrongOrganization,
                format!("{} belongs to another organization than {principal}", req.command),
            ));
        }
        if let Some(system) = system.filter(|s| organization_of(s) != organization) {
            return Ok(decision(
                false,
                DecisionReason::WrongOrganization,
                format!("{system} belongs to another organization than {principal}"),
            ));
        }
        let role = if principal == caller.administrator {
            Some(caller.role)
        } else if let Some(role) = roles.get(&principal) {
            *role
        } else {
            let role = self.lookup_role(&principal).await?;
            roles.insert(principal.clone(), role);
            role
        };
        let Some(role) = role else {
            return Ok(decision(
                false,
                DecisionReason::PrincipalNotFound,
                format!("{principal} does not exist or has been deleted"),
            ));
        };
        let db = &self.state.db;
        // A Command Runner asking about itself learns nothing about commands it holds no grant
        // on: not whether they exist, nor their targets. NO_GRANT, whatever the command.
        let own_grant = if is_admin(caller) {
            None
        } else {
            match find_grant(db, &req.command, &principal).await? {
                Some(grant) => Some(grant),
                None => {
                    return Ok(decision(
                        false,
                        DecisionReason::NoGrant,
                        format!("{principal} holds no grant on {}", req.command),
                    ))
                }
            }
        };
        if find_command(db, &organization, &req.command).await?.is_none() {
            return Ok(decision(
                false,
                DecisionReason::CommandNotFound,
                format!("{} does not exist", req.command),
            ));
        }
        if action == Action::Run {
            let targets = targets_of_command(db, &req.command).await?;
            if targets.is_empty() {
                return Ok(decision(
                    false,
                    DecisionReason::NoTargetSystems,
                    format!("{} has no target systems, so it cannot run anywhere", req.command),
                ));
            }
            if let Some(system) = system.filter(|s| !targets.iter().any(|t| t == s)) {
                return Ok(decision(
                    false,
                    DecisionReason::SystemNotTarget,
                    format!("{system} is not one of the target systems of {}", req.command),
                ));
            }
        }
        if role == Role::Administrator {
            return Ok(decision(
                true,
                DecisionReason::RoleAdministrator,
                format!("{principal} is an Administrator, who may do anything in the organization"),
            ));
        }
        let grant = match own_grant {
            Some(grant) => Some(grant),
            None => find_grant(db, &req.command, &principal).await?,
        };
        match grant {
            Some(g) => Ok(Decision {
                allowed: true,
                reason: DecisionReason::Grant as i32,
                message: format!("granted by {}", g.grantor),
                grant: g.name,
                grantor: g.grantor,
            }),
            None => Ok(decision(
                false,
                DecisionReason::NoGrant,
                format!("{principal} is a Command Runner without a grant on {}", req.command),
            )),
        }
    }

    pub(super) async fn check_access_impl(
        &self,
        request: Request<CheckAccessRequest>,
    ) -> ApiResult<CheckAccessResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let decision = self.check(p, request.get_ref(), &mut HashMap::new()).await?;
        Ok(CheckAccessResponse { decision: Some(decision) })
    }

    pub(super) async fn batch_check_access_impl(
        &self,
        request: Request<BatchCheckAccessRequest>,
    ) -> ApiResult<BatchCheckAccessResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let req = request.get_ref();
        parse_org("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        if req.requests.is_empty() || req.requests.len() > MAX_BATCH {
            return Err(ApiError::invalid("requests", "must hold 1 to 100 checks"));
        }
        let mut roles = HashMap::new();
        let mut results = Vec::with_capacity(req.requests.len());
        for item in &req.requests {
            let result = match self.check(p, item, &mut roles).await {
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
}
