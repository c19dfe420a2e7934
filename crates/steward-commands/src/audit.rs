//! Audit events of this service, queued in the service's outbox inside the transaction of the
//! change they describe (or alone, for denials) and relayed to
//! `AdminInternalService.RecordAuditEvents`. Each event's name (`organizations/{o}/auditEvents/{id}`)
//! is chosen here, so a redelivered event is recorded once.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use steward_runtime::audit::{outcome, AuditRecord};
use steward_runtime::authn::RequestContext;
use steward_runtime::{ApiError, ApiResult};

use crate::OUTBOX;

/// Queues an audit event on `conn` (the transaction of the change, when there is one).
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    organization: &str,
    context: &RequestContext,
    actor: &str,
    target: &str,
    result: Result<(), &ApiError>,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let record = AuditRecord::new(
        organization,
        context,
        &context.method,
        actor,
        target,
        outcome(result),
        now,
    );
    record.enqueue(conn, &OUTBOX, now).await
}
