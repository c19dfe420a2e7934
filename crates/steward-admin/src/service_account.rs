//! Service accounts and their API keys (ServiceAccountService), and the internal checks the
//! auth service (VerifyApiKey) and the command service (LookupServiceAccount) make. An API key
//! is `stw_{key}_{secret}`: the key id finds the row, the secret (256 random bits) is compared by
//! SHA-256 digest in constant time. Accounts take the organization lock like administrators, so
//! a role is never deleted while an account is being given it.

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, JoinType,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use sha2::{Digest, Sha256};
use steward_proto::admin::v1::*;
use steward_runtime::authn::Principal;
use steward_runtime::names::{self, ServiceAccountKeyName, ServiceAccountName};
use steward_runtime::roles::{self, Permission};
use steward_runtime::{ApiError, ApiResult};
use subtle::ConstantTimeEq;

use crate::audit::Auditor;
use crate::billing::RECENT_AUTHENTICATION_SECS;
use crate::entity::{service_account as account, service_account_key as key};
use crate::state::*;

/// Active (unexpired) keys an account may have at once: two, so a key rotates without downtime.
pub const MAX_ACTIVE_KEYS: usize = 2;

/// The longest a key may live.
pub const MAX_KEY_LIFETIME_DAYS: i64 = 365;

const KEY_PREFIX: &str = "stw_";

fn assigned(row: &account::Model) -> Assigned {
    assignment_of(&row.role)
}

fn to_proto(row: &account::Model) -> ServiceAccount {
    let role = assigned(row);
    ServiceAccount {
        name: row.name.clone(),
        display_name: row.display_name.clone(),
        role: role.role().to_proto(),
        role_name: role.name(),
        billing: row.billing,
        creator: row.creator.clone(),
        create_time: Some(timestamp(row.created_at)),
    }
}

fn key_to_proto(row: &key::Model) -> ServiceAccountKey {
    ServiceAccountKey {
        name: row.name.clone(),
        expire_time: Some(timestamp(row.expires_at)),
        create_time: Some(timestamp(row.created_at)),
        last_used_time: row.last_used_at.map(timestamp),
    }
}

fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The permissions of an account's role (without billing).
async fn role_of<C: ConnectionTrait>(
    conn: &C,
    row: &account::Model,
) -> ApiResult<roles::Permissions> {
    Ok(role_permissions(conn, &assigned(row))
        .await?
        .unwrap_or_else(|| roles::built_in(steward_runtime::claims::Role::Custom)))
}

fn permission_names(held: &roles::Permissions) -> Vec<String> {
    held.iter().map(|(p, _)| roles::permission_name(p).to_string()).collect()
}

async fn find<C: ConnectionTrait>(
    conn: &C,
    name: &ServiceAccountName,
) -> ApiResult<account::Model> {
    account::Entity::find_by_id(name.to_string())
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.to_string()))
}

/// An account, when it exists and `key` (a key's resource name) is one of its keys, unexpired
/// at `unexpired_at` when given, with what its role holds now: one statement joining the
/// account, the key and the organization's own role the account holds, if any.
async fn with_key<C: ConnectionTrait>(
    conn: &C,
    name: &ServiceAccountName,
    key: &str,
    unexpired_at: Option<DateTime<Utc>>,
) -> ApiResult<Option<(account::Model, roles::Permissions)>> {
    let to_key: sea_orm::RelationDef = key::Entity::belongs_to(account::Entity)
        .from(key::Column::ServiceAccount)
        .to(account::Column::Name)
        .into();
    let mut query = account::Entity::find_by_id(name.to_string())
        .join_rev(JoinType::InnerJoin, to_key)
        .filter(key::Column::Name.eq(key))
        .join(JoinType::LeftJoin, role_join::<account::Entity>(account::Column::Role));
    if let Some(now) = unexpired_at {
        query = query.filter(key::Column::ExpiresAt.gt(now));
    }
    let found = query.select_also(crate::entity::role::Entity).one(conn).await?;
    Ok(found.map(|(row, custom)| {
        let held = joined_permissions(&assigned(&row), custom.as_ref());
        (row, held)
    }))
}

/// The caller as [`caller_row`] sees a service account: its account and the key its token was
/// exchanged for must both still exist (a deleted account or revoked key stops at once).
pub async fn caller<C: ConnectionTrait>(conn: &C, principal: &Principal) -> ApiResult<CallerRow> {
    let gone = || ApiError::denied("CALLER_DELETED", "the service account or its key is gone");
    let name = ServiceAccountName::parse("caller", &principal.administrator)?;
    let (row, role) = with_key(conn, &name, &principal.client_id, None).await?.ok_or_else(gone)?;
    Ok(CallerRow {
        name: row.name.clone(),
        organization_id: row.organization_id.clone(),
        contact: row.display_name.clone(),
        role,
        billing: row.billing,
        administrator: None,
    })
}

/// Refuses (`TARGET_OUTRANKS_CALLER`) deleting an account, or revoking its key, when its role
/// holds a permission the caller's does not: no one cuts off a more powerful machine.
fn may_outrank(caller: &CallerRow, role: &roles::Permissions, what: &str) -> ApiResult<()> {
    if caller.role.covers(role) {
        return Ok(());
    }
    Err(ApiError::denied(
        "TARGET_OUTRANKS_CALLER",
        format!("{what} holds permissions your role does not"),
    ))
}

/// Refuses unless `caller` may hand out what `row` holds: its role's permissions, and billing
/// access only with billing access and a recent human sign-in.
fn may_empower(
    caller: &CallerRow,
    principal: &Principal,
    role: &roles::Permissions,
    billing: bool,
    what: &str,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    may_hand_out(&caller.role, role, what)?;
    if billing {
        if !caller.billing {
            return Err(ApiError::denied(
                "BILLING_REQUIRED",
                "only callers with billing access may give billing access",
            ));
        }
        principal.require_recent_authentication(now, RECENT_AUTHENTICATION_SECS)?;
    }
    Ok(())
}

/// CreateServiceAccount.
pub async fn create(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: CreateServiceAccountRequest,
) -> ApiResult<CreateServiceAccountResponse> {
    p.check_organization(&req.parent)?;
    let org_id = parse_org("parent", &req.parent)?;
    let input =
        req.service_account.ok_or_else(|| ApiError::invalid("service_account", "is required"))?;
    let display = input.display_name.trim().to_string();
    if display.is_empty() || display.chars().count() > 100 {
        return Err(ApiError::invalid(
            "service_account.display_name",
            "must be 1 to 100 characters",
        ));
    }
    names::check_text("service_account.display_name", &display, names::Text::Line)?;
    let as_admin = Administrator {
        role: input.role,
        role_name: input.role_name.clone(),
        ..Default::default()
    };
    let role = requested_role(&as_admin).map_err(|err| match err {
        ApiError::InvalidArgument(violations) => ApiError::InvalidArgument(
            violations
                .into_iter()
                .map(|mut v| {
                    v.field = v.field.replace("administrator.", "service_account.");
                    v
                })
                .collect(),
        ),
        other => other,
    })?;
    if let Assigned::Custom(name) = &role {
        p.check_organization(name.as_str())?;
    }
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::ServiceAccountsCreate)).await?;
    let held =
        role_permissions(&txn, &role).await?.ok_or_else(|| ApiError::NotFound(role.name()))?;
    may_empower(&caller, p, &held, input.billing, &role.name(), now)?;
    let name = format!("{}/serviceAccounts/{}", req.parent, names::new_id());
    let row = account::ActiveModel {
        name: Set(name.clone()),
        organization_id: Set(org_id),
        display_name: Set(display),
        role: Set(role.stored()),
        billing: Set(input.billing),
        creator: Set(caller.name.clone()),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    audit.allowed(&txn, &name, &format!("created with role {}", role.name()), now).await?;
    txn.commit().await?;
    tracing::info!(service_account = %name, role = %role.name(), "service account created");
    Ok(CreateServiceAccountResponse { service_account: Some(to_proto(&row)) })
}

/// GetServiceAccount.
pub async fn get(
    state: &State,
    p: &Principal,
    req: GetServiceAccountRequest,
) -> ApiResult<GetServiceAccountResponse> {
    let name = ServiceAccountName::parse("name", &req.name)?;
    p.check_organization(name.as_str())?;
    caller_may_read(state, p, Need::Permission(Permission::ServiceAccountsRead)).await?;
    Ok(GetServiceAccountResponse {
        service_account: Some(to_proto(&find(&state.db, &name).await?)),
    })
}

/// ListServiceAccounts.
pub async fn list(
    state: &State,
    p: &Principal,
    req: ListServiceAccountsRequest,
) -> ApiResult<ListServiceAccountsResponse> {
    p.check_organization(&req.parent)?;
    let org_id = parse_org("parent", &req.parent)?;
    caller_may_read(state, p, Need::Permission(Permission::ServiceAccountsRead)).await?;
    let rows = account::Entity::find()
        .filter(account::Column::OrganizationId.eq(org_id))
        .order_by_asc(account::Column::CreatedAt)
        .order_by_asc(account::Column::Name)
        .all(&state.db)
        .await?;
    Ok(ListServiceAccountsResponse { service_accounts: rows.iter().map(to_proto).collect() })
}

/// DeleteServiceAccount: the account and its keys.
pub async fn delete(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: DeleteServiceAccountRequest,
) -> ApiResult<DeleteServiceAccountResponse> {
    let name = ServiceAccountName::parse("name", &req.name)?;
    p.check_organization(name.as_str())?;
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, name.organization().id()).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::ServiceAccountsDelete)).await?;
    let row = find(&txn, &name).await?;
    may_outrank(&caller, &role_of(&txn, &row).await?, name.as_str())?;
    key::Entity::delete_many()
        .filter(key::Column::ServiceAccount.eq(name.as_str()))
        .exec(&txn)
        .await?;
    account::Entity::delete_by_id(name.to_string()).exec(&txn).await?;
    audit.allowed(&txn, name.as_str(), "deleted", now).await?;
    state.commit_narrowing(txn).await?;
    tracing::info!(service_account = %name, "service account deleted");
    Ok(DeleteServiceAccountResponse {})
}

/// CreateServiceAccountKey: a new secret, shown once.
pub async fn create_key(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: CreateServiceAccountKeyRequest,
) -> ApiResult<CreateServiceAccountKeyResponse> {
    let parent = ServiceAccountName::parse("parent", &req.parent)?;
    p.check_organization(parent.as_str())?;
    let input = req.key.ok_or_else(|| ApiError::invalid("key", "is required"))?;
    let expire = input
        .expire_time
        .as_ref()
        .ok_or_else(|| ApiError::invalid("key.expire_time", "is required"))
        .and_then(|t| from_timestamp("key.expire_time", t))?;
    let now = state.now();
    if expire <= now || expire > now + chrono::Duration::days(MAX_KEY_LIFETIME_DAYS) {
        return Err(ApiError::invalid(
            "key.expire_time",
            format!("must be in the future and at most {MAX_KEY_LIFETIME_DAYS} days away"),
        ));
    }
    let txn = state.begin_write().await?;
    lock_org(&txn, parent.organization().id()).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::ServiceAccountsKeys)).await?;
    let row = find(&txn, &parent).await?;
    // A key is the account's power in a string: minting one needs all of it.
    may_empower(&caller, p, &role_of(&txn, &row).await?, row.billing, parent.as_str(), now)?;
    let active = key::Entity::find()
        .filter(key::Column::ServiceAccount.eq(parent.as_str()))
        .filter(key::Column::ExpiresAt.gt(now))
        .all(&txn)
        .await?;
    if active.len() >= MAX_ACTIVE_KEYS {
        return Err(ApiError::precondition(
            "KEY_LIMIT",
            parent.to_string(),
            format!(
                "an account has at most {MAX_ACTIVE_KEYS} unexpired keys; delete one first \
                 (rotation: create, deploy, delete the old one)"
            ),
        ));
    }
    let key_id = names::new_id();
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let name = format!("{parent}/keys/{key_id}");
    let saved = key::ActiveModel {
        name: Set(name.clone()),
        key_id: Set(key_id.clone()),
        service_account: Set(parent.to_string()),
        digest: Set(digest(&secret)),
        expires_at: Set(expire),
        created_at: Set(now),
        last_used_at: Set(None),
    }
    .insert(&txn)
    .await?;
    audit.allowed(&txn, &name, &format!("key created, expires {expire}"), now).await?;
    txn.commit().await?;
    tracing::info!(key = %name, "service account key created");
    Ok(CreateServiceAccountKeyResponse {
        key: Some(key_to_proto(&saved)),
        api_key: format!("{KEY_PREFIX}{key_id}_{secret}"),
    })
}

/// ListServiceAccountKeys.
pub async fn list_keys(
    state: &State,
    p: &Principal,
    req: ListServiceAccountKeysRequest,
) -> ApiResult<ListServiceAccountKeysResponse> {
    let parent = ServiceAccountName::parse("parent", &req.parent)?;
    p.check_organization(parent.as_str())?;
    caller_may_read(state, p, Need::Permission(Permission::ServiceAccountsRead)).await?;
    find(&state.db, &parent).await?;
    let rows = key::Entity::find()
        .filter(key::Column::ServiceAccount.eq(parent.as_str()))
        .order_by_desc(key::Column::CreatedAt)
        .all(&state.db)
        .await?;
    Ok(ListServiceAccountKeysResponse { keys: rows.iter().map(key_to_proto).collect() })
}

/// DeleteServiceAccountKey: revokes at once.
pub async fn delete_key(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: DeleteServiceAccountKeyRequest,
) -> ApiResult<DeleteServiceAccountKeyResponse> {
    let name = ServiceAccountKeyName::parse("name", &req.name)?;
    p.check_organization(name.as_str())?;
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, name.organization().id()).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::ServiceAccountsKeys)).await?;
    let account = name.as_str().rsplit_once("/keys/").map_or("", |(account, _)| account);
    let account = ServiceAccountName::parse("name", account)?;
    if let Some(row) = account::Entity::find_by_id(account.to_string()).one(&txn).await? {
        may_outrank(&caller, &role_of(&txn, &row).await?, account.as_str())?;
    }
    let deleted = key::Entity::delete_by_id(name.to_string()).exec(&txn).await?;
    if deleted.rows_affected == 0 {
        return Err(ApiError::NotFound(name.to_string()));
    }
    audit.allowed(&txn, name.as_str(), "key deleted", now).await?;
    state.commit_narrowing(txn).await?;
    tracing::info!(key = %name, "service account key deleted");
    Ok(DeleteServiceAccountKeyResponse {})
}

/// VerifyApiKey (internal): the account of a valid key; records the key's use.
pub async fn verify(state: &State, req: VerifyApiKeyRequest) -> ApiResult<VerifyApiKeyResponse> {
    let invalid = || ApiError::Unauthenticated("invalid credentials".into());
    let (key_id, secret) = req
        .api_key
        .strip_prefix(KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .ok_or_else(invalid)?;
    let now = state.now();
    let found = key::Entity::find()
        .filter(key::Column::KeyId.eq(key_id))
        .one(&state.db)
        .await?
        .ok_or_else(invalid)?;
    let matches: bool = digest(secret).as_bytes().ct_eq(found.digest.as_bytes()).into();
    if !matches || found.expires_at <= now {
        return Err(invalid());
    }
    let account_name = ServiceAccountName::parse("key", &found.service_account)?;
    let row = account::Entity::find_by_id(account_name.to_string())
        .one(&state.db)
        .await?
        .ok_or_else(invalid)?;
    let mut used = found.clone().into_active_model();
    used.last_used_at = Set(Some(now));
    used.update(&state.db).await?;
    Ok(VerifyApiKeyResponse {
        service_account: Some(to_proto(&row)),
        key: found.name,
        role_permissions: permission_names(&role_of(&state.db, &row).await?),
        key_expire_time: Some(timestamp(found.expires_at)),
    })
}

/// LookupServiceAccount (internal): the account, while the named key (if any) still exists.
pub async fn lookup(
    state: &State,
    req: LookupServiceAccountRequest,
) -> ApiResult<LookupServiceAccountResponse> {
    let name = ServiceAccountName::parse("name", &req.name)?;
    let (row, held) = if req.key.is_empty() {
        let row = find(&state.db, &name).await?;
        let held = role_of(&state.db, &row).await?;
        (row, held)
    } else {
        // A caller's re-check: account, key and role in one statement.
        with_key(&state.db, &name, &req.key, Some(state.now()))
            .await?
            .ok_or_else(|| ApiError::NotFound(req.key.clone()))?
    };
    Ok(LookupServiceAccountResponse {
        service_account: Some(to_proto(&row)),
        role_permissions: permission_names(&held),
        caller_lease_ms: state.caller_lease_ms(),
    })
}
