//! BillingService: the organization's payment card, over [`crate::billing`].

use steward_proto::billing::v1::billing_service_server::BillingService;
use steward_proto::billing::v1::{
    GetPaymentCardRequest, GetPaymentCardResponse, UpdatePaymentCardRequest,
    UpdatePaymentCardResponse,
};
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::audit::{finish, Auditor};
use crate::billing;
use crate::state::Shared;

/// The BillingService implementation.
#[derive(Clone)]
pub struct BillingApi {
    state: Shared,
}

impl BillingApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn get_payment_card(
        &self,
        request: Request<GetPaymentCardRequest>,
    ) -> Result<Response<GetPaymentCardResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = billing::get(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn update_payment_card(
        &self,
        request: Request<UpdatePaymentCardRequest>,
    ) -> Result<Response<UpdatePaymentCardResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.payment_card.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let result = billing::update(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }
}
