//! Grants: who may run which command.

use super::*;

impl Commands {
    pub(super) async fn create_grant_impl(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> ApiResult<CreateGrantResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        parse_command("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &req.parent, Need::Administrator)
            .await?;
        let g = req.grant.ok_or_else(|| ApiError::invalid("grant", "is required"))?;
        let grantee = AdministratorName::parse("grant.grantee", &g.grantee)?;
        rules::request_id(&req.request_id)?;
        if grantee.organization().as_str() != p.organization {
            return Err(ApiError::NotFound(g.grantee));
        }
        let key = Key::new("create_grant", &p.administrator, &req.request_id);
        let db = &self.state.db;
        if let Some(previous) = IDEMPOTENCY.recall(db, key.as_ref()).await? {
            let m = grant::Entity::find_by_id(previous.clone())
                .filter(grant::Column::Organization.eq(&p.organization))
                .one(db)
                .await?
                .ok_or(ApiError::NotFound(previous))?;
            return Ok(CreateGrantResponse { grant: Some(grant_proto(m)) });
        }
        if find_command(db, &p.organization, &req.parent).await?.is_none() {
            return Err(ApiError::NotFound(req.parent));
        }
        match self.lookup_role(&g.grantee).await? {
            None => return Err(ApiError::NotFound(g.grantee)),
            Some(Role::Administrator) => {
                return Err(ApiError::precondition(
                    "GRANTEE_IS_ADMINISTRATOR",
                    g.grantee,
                    "Administrators may run every command; grants are for Command Runners",
                ))
            }
            Some(Role::CommandRunner) => {}
        }
        let now = self.state.now();
        let txn = begin_write(db).await?;
        if find_command(&txn, &p.organization, &req.parent).await?.is_none() {
            return Err(ApiError::NotFound(req.parent));
        }
        let exists = |name: &str| {
            ApiError::AlreadyExists(format!("{name} is already granted to {}", g.grantee))
        };
        if find_grant(&txn, &req.parent, &g.grantee).await?.is_some() {
            return Err(exists(&req.parent));
        }
        let model = grant::Model {
            name: format!("{}/grants/{}", req.parent, names::new_id()),
            organization: p.organization.clone(),
            command: req.parent.clone(),
            grantee: g.grantee.clone(),
            grantor: p.administrator.clone(),
            create_time: now,
        };
        grant::Entity::insert(model.clone().into_active_model())
            .exec_without_returning(&txn)
            .await
            .map_err(|e| if is_unique_violation(&e) { exists(&req.parent) } else { e.into() })?;
        IDEMPOTENCY.record(&txn, key.as_ref(), &model.name, now).await?;
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &model.name, Ok(()), now)
            .await?;
        txn.commit().await?;
        tracing::info!(grant = %model.name, grantee = %model.grantee, "grant created");
        Ok(CreateGrantResponse { grant: Some(grant_proto(model)) })
    }

    pub(super) async fn delete_grant_impl(
        &self,
        request: Request<DeleteGrantRequest>,
    ) -> ApiResult<DeleteGrantResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let name = request.into_inner().name;
        names::parse("name", &name, &["organizations", "commands", "grants"])?;
        p.check_organization(&name)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &name, Need::Administrator).await?;
        let txn = begin_write(&self.state.db).await?;
        let deleted = grant::Entity::delete_many()
            .filter(grant::Column::Name.eq(&name))
            .filter(grant::Column::Organization.eq(&p.organization))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 0 {
            return Err(ApiError::NotFound(name));
        }
        let now = self.state.now();
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
        txn.commit().await?;
        tracing::info!(grant = %name, "grant revoked");
        Ok(DeleteGrantResponse {})
    }

    pub(super) async fn list_grants_impl(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> ApiResult<ListGrantsResponse> {
        let p =
            &caller::current(&self.state, authn::principal(&request)?, Need::Administrator).await?;
        let req = request.get_ref();
        let command = match req.parent.strip_suffix("/commands/-") {
            Some(org) => {
                parse_org("parent", org)?;
                None
            }
            None => {
                parse_command("parent", &req.parent)?;
                Some(req.parent.clone())
            }
        };
        p.check_organization(&req.parent)?;
        let size = names::page_size(req.page_size)?;
        let terms = rules::parse_filter(&req.filter, &["grantee"], &["grantee"])?;
        let digest = format!("{}|{}", req.parent, req.filter.trim());
        let offset = names::decode_page_token(&req.page_token, &digest)?;
        let mut query =
            grant::Entity::find().filter(grant::Column::Organization.eq(&p.organization));
        if let Some(command) = command {
            query = query.filter(grant::Column::Command.eq(command));
        }
        for term in terms {
            parse_admin("filter", &term.value)?;
            query = query.filter(grant::Column::Grantee.eq(term.value));
        }
        let rows = query
            .order_by_asc(grant::Column::CreateTime)
            .order_by_asc(grant::Column::Name)
            .offset(offset)
            .limit(size + 1)
            .all(&self.state.db)
            .await?;
        let (rows, next_page_token) = names::page(rows, size, offset, &digest);
        Ok(ListGrantsResponse {
            grants: rows.into_iter().map(grant_proto).collect(),
            next_page_token,
        })
    }
}
