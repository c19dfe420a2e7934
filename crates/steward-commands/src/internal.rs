//! `CommandsInternalService`: side effects of administrator changes, called by the admin
//! service's outbox relay.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use steward_proto::commands::v1::commands_internal_service_server::CommandsInternalService;
use steward_proto::commands::v1::{
    RemoveAdministratorGrantsRequest, RemoveAdministratorGrantsResponse,
};
use steward_runtime::authn::{self, Caller};
use steward_runtime::names::AdministratorName;
use steward_runtime::{ApiError, ApiResult};
use tonic::{Request, Response, Status};

use crate::entity::grant;
use crate::IDEMPOTENCY;
use crate::{begin_write, State};
use steward_storage::idempotency::Key;

/// The CommandsInternalService implementation.
pub struct Internal {
    state: State,
}

impl Internal {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }

    async fn remove_impl(
        &self,
        request: Request<RemoveAdministratorGrantsRequest>,
    ) -> ApiResult<RemoveAdministratorGrantsResponse> {
        if authn::caller(&request) != Caller::Service {
            return Err(ApiError::denied("SERVICE_ONLY", "only Steward services may call this"));
        }
        let req = request.into_inner();
        let administrator = AdministratorName::parse("administrator", &req.administrator)?;
        if req.idempotency_key.is_empty() || req.idempotency_key.len() > 200 {
            return Err(ApiError::invalid(
                "idempotency_key",
                "is required (at most 200 characters)",
            ));
        }
        let organization = administrator.organization().to_string();
        let key = Key::new("remove_grants", &req.administrator, &req.idempotency_key);
        let txn = begin_write(&self.state.db).await?;
        if let Some(previous) = IDEMPOTENCY.recall(&txn, key.as_ref()).await? {
            let removed_count = previous.parse().unwrap_or(0);
            return Ok(RemoveAdministratorGrantsResponse { removed_count });
        }
        let removed = grant::Entity::delete_many()
            .filter(grant::Column::Organization.eq(&organization))
            .filter(grant::Column::Grantee.eq(&req.administrator))
            .exec(&txn)
            .await?;
        let removed_count = i32::try_from(removed.rows_affected).unwrap_or(i32::MAX);
        IDEMPOTENCY
            .record(&txn, key.as_ref(), &removed_count.to_string(), self.state.now())
            .await?;
        txn.commit().await?;
        tracing::info!(administrator = %req.administrator, removed_count, "grants of an administrator removed");
        Ok(RemoveAdministratorGrantsResponse { removed_count })
    }
}

#[tonic::async_trait]
impl CommandsInternalService for Internal {
    async fn remove_administrator_grants(
        &self,
        r: Request<RemoveAdministratorGrantsRequest>,
    ) -> Result<Response<RemoveAdministratorGrantsResponse>, Status> {
        self.remove_impl(r).await.map(Response::new).map_err(Status::from)
    }
}
