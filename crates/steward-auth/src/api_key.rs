//! ExchangeApiKey: a service account's API key traded for an access token. The admin service
//! checks the key (VerifyApiKey, which owns the accounts and key digests); this service
//! throttles failures like sign-in (per key and per client address) and signs the token. The
//! token names the account (`sub`) and the key (`sid`, `client_id`), carries no refresh token,
//! and never counts as a recent sign-in (`auth_time` 0), so the changes that need one stay with
//! people.

use chrono::DateTime;
use steward_proto::admin::v1 as admin;
use steward_proto::auth::v1 as pb;
use steward_runtime::authn::RequestContext;
use steward_runtime::claims::{Role, TokenScope};
use steward_runtime::names::ServiceAccountName;
use steward_runtime::{ApiError, ApiResult};

use crate::jwt::Subject;
use crate::state::{invalid_credentials, required, timestamp, State};
use crate::throttle::{self, ACCOUNT};

/// The throttle key of an API key: its id (a UUID), so guesses at one key lock that key;
/// `None` for a malformed key, which is refused before any counter is touched (so made-up ids
/// cannot grow the throttle table).
fn key_of(api_key: &str) -> Option<String> {
    let (id, secret) = api_key.strip_prefix("stw_")?.split_once('_')?;
    let id = uuid::Uuid::parse_str(id).ok()?;
    (!secret.is_empty()).then(|| format!("api-key:{}", id.hyphenated()))
}

/// ExchangeApiKey.
pub async fn exchange(
    state: &State,
    context: &RequestContext,
    request: pb::ExchangeApiKeyRequest,
) -> ApiResult<pb::ExchangeApiKeyResponse> {
    required("api_key", &request.api_key)?;
    let Some(throttle_key) = key_of(&request.api_key) else {
        tracing::info!("malformed api key refused");
        return Err(invalid_credentials());
    };
    let admission = throttle::Admission::admit(
        &state.db,
        throttle_key,
        &ACCOUNT,
        &context.client_address,
        state.now(),
    )
    .await?;
    let verify = admin::VerifyApiKeyRequest { api_key: request.api_key };
    let verified = match state.admin.clone().verify_api_key(verify).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            // The reservation already counted this failure.
            tracing::info!("api key refused");
            return Err(invalid_credentials());
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "api key check failed");
            return Err(ApiError::Unavailable(
                "the service account directory is unavailable, retry later".into(),
            ));
        }
    };
    let now = state.now();
    admission.succeeded(&state.db, now).await?;
    let account = verified
        .service_account
        .ok_or_else(|| ApiError::internal("VerifyApiKey answered no service account"))?;
    let name = ServiceAccountName::parse("service_account", &account.name)?;
    let role = Role::from_proto(account.role)
        .ok_or_else(|| ApiError::internal(format!("{} has no valid role", account.name)))?;
    let custom = role == Role::Custom;
    let subject = Subject {
        administrator: name.to_string(),
        organization: name.organization().to_string(),
        role,
        role_name: if custom { account.role_name } else { String::new() },
        permissions: if custom { verified.role_permissions } else { Vec::new() },
        client_id: verified.key.clone(),
        not_after: verified
            .key_expire_time
            .as_ref()
            .map(|t| steward_runtime::wire::from_timestamp("key_expire_time", t))
            .transpose()?,
        billing: account.billing,
    };
    let never_authenticated = DateTime::UNIX_EPOCH;
    let (token, expires) = state.signer.sign(
        &subject,
        &verified.key,
        &["key".to_string()],
        TokenScope::Full,
        now,
        never_authenticated,
    )?;
    tracing::info!(service_account = %name, key = %verified.key, "api key exchanged");
    Ok(pb::ExchangeApiKeyResponse {
        tokens: Some(pb::TokenSet {
            access_token: token,
            access_token_expire_time: Some(timestamp(expires)),
            refresh_token: String::new(),
            refresh_token_expire_time: None,
            token_type: "Bearer".into(),
            scope: pb::TokenScope::Full as i32,
        }),
    })
}
