//! `CommandsInternalService`: side effects of administrator changes, called by the admin
//! service's outbox relay with the service credential.

use steward_proto::commands::v1::commands_internal_service_server::CommandsInternalService;
use steward_proto::commands::v1::{
    RemoveAdministratorGrantsRequest, RemoveAdministratorGrantsResponse,
};
use steward_runtime::authn::{self, Caller};
use steward_runtime::{answer, ApiError};
use tonic::{Request, Response, Status};

use crate::{grant, State};

/// The CommandsInternalService implementation.
pub struct Internal {
    state: State,
}

impl Internal {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl CommandsInternalService for Internal {
    async fn remove_administrator_grants(
        &self,
        r: Request<RemoveAdministratorGrantsRequest>,
    ) -> Result<Response<RemoveAdministratorGrantsResponse>, Status> {
        if authn::caller(&r) != Caller::Service {
            return Err(
                ApiError::denied("SERVICE_ONLY", "only Steward services may call this").into()
            );
        }
        answer(grant::remove_administrator_grants(&self.state, r.into_inner()).await)
    }
}
