//! `SystemService`: systems and the connect keys that enrol them. Each method is a thin
//! adapter: split the call into its typed caller and message, call the domain function, answer.

use steward_proto::commands::v1::system_service_server::SystemService;
use steward_proto::commands::v1::{
    CreateConnectKeyRequest, CreateConnectKeyResponse, DeleteConnectKeyRequest,
    DeleteConnectKeyResponse, DeleteSystemRequest, DeleteSystemResponse, GetSystemRequest,
    GetSystemResponse, ListConnectKeysRequest, ListConnectKeysResponse, ListSystemsRequest,
    ListSystemsResponse, UpdateSystemRequest, UpdateSystemResponse,
};
use steward_runtime::{answer, authn};
use tonic::{Request, Response, Status};

use crate::{connect_key, system, State};

/// The SystemService implementation.
pub struct Systems {
    state: State,
}

impl Systems {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl SystemService for Systems {
    async fn create_connect_key(
        &self,
        r: Request<CreateConnectKeyRequest>,
    ) -> Result<Response<CreateConnectKeyResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(connect_key::create(&self.state, call, req).await)
    }

    async fn list_connect_keys(
        &self,
        r: Request<ListConnectKeysRequest>,
    ) -> Result<Response<ListConnectKeysResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(connect_key::list(&self.state, call, req).await)
    }

    async fn delete_connect_key(
        &self,
        r: Request<DeleteConnectKeyRequest>,
    ) -> Result<Response<DeleteConnectKeyResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(connect_key::delete(&self.state, call, req).await)
    }

    async fn get_system(
        &self,
        r: Request<GetSystemRequest>,
    ) -> Result<Response<GetSystemResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(system::get(&self.state, call, req).await)
    }

    async fn list_systems(
        &self,
        r: Request<ListSystemsRequest>,
    ) -> Result<Response<ListSystemsResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(system::list(&self.state, call, req).await)
    }

    async fn update_system(
        &self,
        r: Request<UpdateSystemRequest>,
    ) -> Result<Response<UpdateSystemResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(system::update(&self.state, call, req).await)
    }

    async fn delete_system(
        &self,
        r: Request<DeleteSystemRequest>,
    ) -> Result<Response<DeleteSystemResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(system::delete(&self.state, call, req).await)
    }
}
