//! Every item of a `List*` call, page after page: [`paginate`] for any list RPC, and
//! [`Administrators::list_all`] for `AdminService.ListAdministrators`.

use std::future::Future;

use futures::{Stream, TryStreamExt};
use tonic::Status;

use super::Steward;
use crate::admin::v1::{Administrator, ListAdministratorsRequest};

/// A `List*` request: its `page_token` can be set to fetch the next page.
pub trait PageRequest: Clone {
    /// The page this request asks for (empty: the first).
    fn page_token(&self) -> &str;
    /// Asks for the page after the one whose answer carried `token`.
    fn set_page_token(&mut self, token: String);
}

/// A `List*` answer: a page of items and the token of the next page (empty after the last).
pub trait PageResponse {
    /// What the list holds.
    type Item;
    /// The token of the next page; empty when this page is the last.
    fn next_page_token(&self) -> &str;
    /// The items of this page.
    fn into_items(self) -> Vec<Self::Item>;
}

macro_rules! paged {
    ($($request:ty => $response:ty { $field:ident: $item:ty })*) => {$(
        impl PageRequest for $request {
            fn page_token(&self) -> &str {
                &self.page_token
            }
            fn set_page_token(&mut self, token: String) {
                self.page_token = token;
            }
        }
        impl PageResponse for $response {
            type Item = $item;
            fn next_page_token(&self) -> &str {
                &self.next_page_token
            }
            fn into_items(self) -> Vec<$item> {
                self.$field
            }
        }
    )*};
}

paged! {
    crate::admin::v1::ListAdministratorsRequest => crate::admin::v1::ListAdministratorsResponse
        { administrators: crate::admin::v1::Administrator }
    crate::admin::v1::ListOrganizationsRequest => crate::admin::v1::ListOrganizationsResponse
        { organizations: crate::admin::v1::Organization }
    crate::audit::v1::ListAuditEventsRequest => crate::audit::v1::ListAuditEventsResponse
        { audit_events: crate::audit::v1::AuditEvent }
    crate::commands::v1::ListCommandsRequest => crate::commands::v1::ListCommandsResponse
        { commands: crate::commands::v1::Command }
    crate::commands::v1::ListGrantsRequest => crate::commands::v1::ListGrantsResponse
        { grants: crate::commands::v1::Grant }
    crate::commands::v1::ListRunsRequest => crate::commands::v1::ListRunsResponse
        { runs: crate::commands::v1::Run }
    crate::commands::v1::ListConnectKeysRequest => crate::commands::v1::ListConnectKeysResponse
        { connect_keys: crate::commands::v1::ConnectKey }
    crate::commands::v1::ListSystemsRequest => crate::commands::v1::ListSystemsResponse
        { systems: crate::commands::v1::System }
}

/// Every item of a list RPC over all its pages, following `next_page_token`; each page is
/// fetched when the stream reaches it. `call` sends one page's request:
///
/// ```no_run
/// # async fn example(steward: steward_proto::client::Steward) -> Result<(), tonic::Status> {
/// use futures::TryStreamExt;
/// use steward_proto::client::paginate;
/// use steward_proto::commands::v1::ListCommandsRequest;
///
/// let request = ListCommandsRequest { parent: "organizations/o".into(), ..Default::default() };
/// let commands: Vec<_> = paginate(request, |page| {
///     let mut commands = steward.commands();
///     async move { commands.list_commands(page).await }
/// })
/// .try_collect()
/// .await?;
/// # Ok(()) }
/// ```
///
/// The first error ends the stream. A server that answers the page token it was asked for is
/// an `INTERNAL` error rather than an endless stream.
pub fn paginate<Req, Resp, F, Fut>(
    request: Req,
    mut call: F,
) -> impl Stream<Item = Result<Resp::Item, Status>>
where
    Req: PageRequest,
    Resp: PageResponse,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    futures::stream::try_unfold(Some(request), move |next: Option<Req>| {
        let pending = next.map(|request| (call(request.clone()), request));
        async move {
            let Some((answer, mut request)) = pending else { return Ok(None) };
            let page = answer.await?.into_inner();
            let token = page.next_page_token().to_owned();
            if !token.is_empty() && token == request.page_token() {
                return Err(Status::internal(
                    "the server answered the page token it was asked for",
                ));
            }
            let next = (!token.is_empty()).then(|| {
                request.set_page_token(token);
                request
            });
            Ok(Some((futures::stream::iter(page.into_items().into_iter().map(Ok)), next)))
        }
    })
    .try_flatten()
}

/// `Steward::administrators()`: an organization's administrators, page after page.
#[derive(Clone, Debug)]
pub struct Administrators {
    pub(crate) client: Steward,
}

impl Administrators {
    /// Every administrator `request` selects (its `parent`, `filter`, `order_by`; `page_size`
    /// per page, the server's default when 0), over all pages of
    /// `AdminService.ListAdministrators`, each fetched when the stream reaches it.
    pub fn list_all(
        &self,
        request: ListAdministratorsRequest,
    ) -> impl Stream<Item = Result<Administrator, Status>> {
        let client = self.client.clone();
        paginate(request, move |page| {
            let mut admin = client.admin();
            async move { admin.list_administrators(page).await }
        })
    }
}
