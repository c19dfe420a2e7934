//! `CommandService`: commands, grants, access checks and runs. Each method is a thin adapter:
//! split the call into its typed caller and message, call the domain function, answer.

use steward_proto::commands::v1::command_service_server::CommandService;
use steward_proto::commands::v1::{
    BatchCheckAccessRequest, BatchCheckAccessResponse, CancelRunRequest, CancelRunResponse,
    CheckAccessRequest, CheckAccessResponse, CreateCommandRequest, CreateCommandResponse,
    CreateGrantRequest, CreateGrantResponse, DeleteCommandRequest, DeleteCommandResponse,
    DeleteGrantRequest, DeleteGrantResponse, GetCommandRequest, GetCommandResponse,
    GetGrantRequest, GetGrantResponse, GetRunRequest, GetRunResponse, ListCommandsRequest,
    ListCommandsResponse, ListGrantsRequest, ListGrantsResponse, ListRunsRequest, ListRunsResponse,
    RunCommandRequest, RunCommandResponse, UpdateCommandRequest, UpdateCommandResponse,
    WatchRunRequest,
};
use steward_runtime::{answer, authn};
use tonic::{Request, Response, Status};

use crate::watch::WatchStream;
use crate::{access, command, grant, run, watch, State};

/// The CommandService implementation.
#[derive(Clone)]
pub struct Commands {
    state: State,
}

impl Commands {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl CommandService for Commands {
    async fn create_command(
        &self,
        r: Request<CreateCommandRequest>,
    ) -> Result<Response<CreateCommandResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(command::create(&self.state, call, req).await)
    }

    async fn get_command(
        &self,
        r: Request<GetCommandRequest>,
    ) -> Result<Response<GetCommandResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(command::get(&self.state, call, req).await)
    }

    async fn list_commands(
        &self,
        r: Request<ListCommandsRequest>,
    ) -> Result<Response<ListCommandsResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(command::list(&self.state, call, req).await)
    }

    async fn update_command(
        &self,
        r: Request<UpdateCommandRequest>,
    ) -> Result<Response<UpdateCommandResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(command::update(&self.state, call, req).await)
    }

    async fn delete_command(
        &self,
        r: Request<DeleteCommandRequest>,
    ) -> Result<Response<DeleteCommandResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(command::delete(&self.state, call, req).await)
    }

    async fn create_grant(
        &self,
        r: Request<CreateGrantRequest>,
    ) -> Result<Response<CreateGrantResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(grant::create(&self.state, call, req).await)
    }

    async fn delete_grant(
        &self,
        r: Request<DeleteGrantRequest>,
    ) -> Result<Response<DeleteGrantResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(grant::delete(&self.state, call, req).await)
    }

    async fn get_grant(
        &self,
        r: Request<GetGrantRequest>,
    ) -> Result<Response<GetGrantResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(grant::get(&self.state, call, req).await)
    }

    async fn list_grants(
        &self,
        r: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(grant::list(&self.state, call, req).await)
    }

    async fn check_access(
        &self,
        r: Request<CheckAccessRequest>,
    ) -> Result<Response<CheckAccessResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(access::check_one(&self.state, call, req).await)
    }

    async fn batch_check_access(
        &self,
        r: Request<BatchCheckAccessRequest>,
    ) -> Result<Response<BatchCheckAccessResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(access::batch_check(&self.state, call, req).await)
    }

    async fn run_command(
        &self,
        r: Request<RunCommandRequest>,
    ) -> Result<Response<RunCommandResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(run::start(&self.state, call, req).await)
    }

    async fn get_run(&self, r: Request<GetRunRequest>) -> Result<Response<GetRunResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(run::get(&self.state, call, req).await)
    }

    async fn list_runs(
        &self,
        r: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(run::list(&self.state, call, req).await)
    }

    async fn cancel_run(
        &self,
        r: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(run::cancel(&self.state, call, req).await)
    }

    type WatchRunStream = WatchStream;

    async fn watch_run(
        &self,
        r: Request<WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let (call, req) = authn::administrator_call(r)?;
        answer(watch::watch(&self.state, call, req).await)
    }
}
