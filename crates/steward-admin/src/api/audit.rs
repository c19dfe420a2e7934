//! AuditService: reading the organization's audit log, newest first, over [`crate::audit_log`].

use steward_proto::audit::v1::audit_service_server::AuditService;
use steward_proto::audit::v1::{ListAuditEventsRequest, ListAuditEventsResponse};
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::audit::finish;
use crate::audit_log;
use crate::state::Shared;

/// The AuditService implementation.
#[derive(Clone)]
pub struct AuditApi {
    state: Shared,
}

impl AuditApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = audit_log::list(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }
}
