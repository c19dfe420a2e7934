//! `AgentService`: the agents' API. Each method reads the agent's credential from the call's
//! metadata (refusing administrator tokens), calls the domain function in [`crate::agent`] and
//! answers.

use steward_proto::commands::v1::agent_service_server::AgentService;
use steward_proto::commands::v1::{OpenStreamRequest, RegisterAgentRequest, RegisterAgentResponse};
use steward_runtime::{answer, authn, ApiError, ApiResult};
use tonic::{Request, Response, Status, Streaming};

use crate::agent::{self, AgentStream};
use crate::State;

/// The AgentService implementation.
pub struct Agents {
    state: State,
}

impl Agents {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

fn credential_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// Refuses a call carrying an administrator's access token (a JWT): the agent API is not an
/// administrator API.
fn refuse_access_tokens(metadata: &tonic::metadata::MetadataMap) -> ApiResult<()> {
    match credential_of(metadata) {
        Some(token) if token.split('.').count() == 3 => {
            Err(ApiError::denied("AGENT_ONLY", "administrator tokens cannot call the agent API"))
        }
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl AgentService for Agents {
    async fn register_agent(
        &self,
        r: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        refuse_access_tokens(r.metadata())?;
        let ctx = authn::context(&r);
        answer(agent::register(&self.state, ctx, r.into_inner()).await)
    }

    type OpenStreamStream = AgentStream;

    async fn open_stream(
        &self,
        r: Request<Streaming<OpenStreamRequest>>,
    ) -> Result<Response<Self::OpenStreamStream>, Status> {
        refuse_access_tokens(r.metadata())?;
        let credential = credential_of(r.metadata())
            .ok_or_else(|| ApiError::Unauthenticated("missing agent credential".into()))?;
        answer(agent::open(&self.state, &credential, r.into_inner()).await)
    }
}
