//! Recording into the audit log. A successful mutation writes its event in the same transaction
//! as the change; a refused or failed one writes it afterwards on its own (the change was rolled
//! back), best effort: a failure to record is logged, never hides the original error.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DatabaseConnection, Set};
use steward_runtime::authn::{Principal, RequestContext};
use steward_runtime::names;
use steward_runtime::{answer, ApiError, ApiResult};
use tonic::{Code, Response, Status};

use crate::entity::audit_event;
use crate::state::{parse_org, State};

/// Actor recorded for calls made with the service credential by the platform operator.
pub const PLATFORM_ACTOR: &str = "services/platform";
/// Actor recorded for calls made by the auth service.
pub const AUTH_ACTOR: &str = "services/steward-auth";

/// Who is doing what, for the events of one call.
#[derive(Clone, Debug)]
pub struct Auditor {
    organization_id: String,
    actor: String,
    action: String,
    request_id: String,
    client_address: String,
}

impl Auditor {
    /// An auditor for a call (`context`) by `actor` recorded in the log of `organization_id`.
    pub fn new(context: &RequestContext, organization_id: &str, actor: &str) -> Self {
        Self {
            organization_id: organization_id.to_string(),
            actor: actor.to_string(),
            action: context.method.clone(),
            request_id: context.request_id.clone(),
            client_address: context.client_address.clone(),
        }
    }

    /// An auditor for a call by a signed-in administrator, recorded in its own organization.
    pub fn for_principal(context: &RequestContext, principal: &Principal) -> ApiResult<Self> {
        let org_id = parse_org("organization", &principal.organization)?;
        Ok(Self::new(context, &org_id, &principal.administrator))
    }

    async fn insert<C: ConnectionTrait>(
        &self,
        conn: &C,
        target: &str,
        result: &str,
        code: Code,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sea_orm::DbErr> {
        let name =
            format!("organizations/{}/auditEvents/{}", self.organization_id, names::new_id());
        audit_event::ActiveModel {
            name: Set(name),
            organization_id: Set(self.organization_id.clone()),
            actor: Set(self.actor.clone()),
            action: Set(self.action.clone()),
            target: Set(target.to_string()),
            result: Set(result.to_string()),
            status_code: Set(code as i32),
            reason: Set(reason.chars().take(1000).collect()),
            request_id: Set(self.request_id.clone()),
            client_address: Set(self.client_address.clone()),
            created_at: Set(now),
        }
        .insert(conn)
        .await?;
        Ok(())
    }

    /// Records a successful action on `conn` (the transaction making the change).
    pub async fn allowed<C: ConnectionTrait>(
        &self,
        conn: &C,
        target: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> ApiResult<()> {
        self.insert(conn, target, audit_event::RESULT_ALLOWED, Code::Ok, reason, now).await?;
        Ok(())
    }

    /// Records a refused or failed action, best effort.
    pub async fn refused(
        &self,
        db: &DatabaseConnection,
        target: &str,
        err: &ApiError,
        now: DateTime<Utc>,
    ) {
        // Classified like every other service's events (steward_runtime::audit::outcome).
        let (kind, code, reason) = steward_runtime::audit::outcome(Err(err));
        let result = audit_event::stored_result(kind).unwrap_or(audit_event::RESULT_FAILED);
        if let Err(db_err) = self.insert(db, target, result, code, &reason, now).await {
            tracing::warn!(action = %self.action, error = %db_err, "could not record audit event");
        }
    }
}

/// Turns a domain function's result into the gRPC answer ([`steward_runtime::answer`]),
/// recording a refusal or failure with `auditor` first. An `UNAVAILABLE` call (the database or a
/// peer could not be reached: nothing happened, and the client retries) is not recorded: while
/// the database is down, recording would wait for it a second time before the caller hears.
pub async fn finish<T>(
    state: &State,
    auditor: Option<&Auditor>,
    target: &str,
    result: ApiResult<T>,
) -> Result<Response<T>, Status> {
    if let (Err(err), Some(auditor)) = (&result, auditor) {
        if !matches!(err, steward_runtime::ApiError::Unavailable(_)) {
            auditor.refused(&state.db, target, err, state.now()).await;
        }
    }
    answer(result)
}
