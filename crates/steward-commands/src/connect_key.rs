//! Connect keys: the secrets that enrol a system (CreateConnectKey, ListConnectKeys,
//! DeleteConnectKey), shown once and, for a retry with the same `request_id`, again within ten
//! minutes.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect,
};
use sha2::{Digest, Sha256};
use steward_proto::commands::v1::{
    ConnectKey, CreateConnectKeyRequest, CreateConnectKeyResponse, DeleteConnectKeyRequest,
    DeleteConnectKeyResponse, ListConnectKeysRequest, ListConnectKeysResponse,
};
use steward_runtime::authn::{AdministratorCall, Need};
use steward_runtime::names::{self, ConnectKeyName, OrganizationName};
use steward_runtime::roles::Permission;
use steward_runtime::{ApiError, ApiResult};
use steward_storage::idempotency::Key;

use crate::entity::connect_key;
use crate::rules::{self, timestamp};
use crate::IDEMPOTENCY;
use crate::{audit, begin_write, caller, State};

/// 32 random bytes, URL-safe base64.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// How long a replay of CreateConnectKey (same `request_id`) shows the key again.
pub(crate) const REPLAY_WINDOW_SECS: i64 = 600;

/// The cipher sealing a connect key for replays of the request that created it. Its key comes
/// from the `request_id`, which only the caller knows (the idempotency record keeps a digest of
/// it), so the database and the configuration together cannot open it.
fn replay_cipher(request_id: &str, name: &str) -> XChaCha20Poly1305 {
    let key =
        Sha256::digest(format!("steward connect key replay\n{request_id}\n{name}").as_bytes());
    XChaCha20Poly1305::new(&key)
}

/// `key` sealed for replays of `request_id`: base64(nonce ‖ ciphertext).
fn seal_for_replay(request_id: &str, name: &str, key: &str) -> ApiResult<String> {
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = replay_cipher(request_id, name)
        .encrypt(XNonce::from_slice(&nonce), key.as_bytes())
        .map_err(|_| ApiError::internal("sealing the connect key for replays failed"))?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(blob))
}

/// Opens what [`seal_for_replay`] sealed; `None` if it does not open (another request_id).
fn open_for_replay(request_id: &str, name: &str, stored: &str) -> Option<String> {
    let blob = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(stored).ok()?;
    if blob.len() <= 24 {
        return None;
    }
    let (nonce, sealed) = blob.split_at(24);
    let plain = replay_cipher(request_id, name).decrypt(XNonce::from_slice(nonce), sealed).ok()?;
    String::from_utf8(plain).ok()
}

/// Forgets the sealed keys of connect keys past their replay window.
pub(crate) async fn expire_replays<C: ConnectionTrait>(
    db: &C,
    now: DateTime<Utc>,
) -> ApiResult<u64> {
    let cutoff = now - chrono::TimeDelta::seconds(REPLAY_WINDOW_SECS);
    let cleared = connect_key::Entity::update_many()
        .col_expr(connect_key::Column::ReplayKey, Expr::value(Option::<String>::None))
        .filter(connect_key::Column::ReplayKey.is_not_null())
        .filter(connect_key::Column::CreateTime.lt(cutoff))
        .exec(db)
        .await?;
    Ok(cleared.rows_affected)
}

fn key_proto(m: connect_key::Model, key: String) -> ConnectKey {
    ConnectKey {
        name: m.name,
        display_name: m.display_name,
        key,
        expire_time: m.expire_time.map(timestamp),
        revoked: m.revoked,
        create_time: Some(timestamp(m.create_time)),
        creator: m.creator,
    }
}

pub(crate) async fn create(
    state: &State,
    call: AdministratorCall,
    req: CreateConnectKeyRequest,
) -> ApiResult<CreateConnectKeyResponse> {
    OrganizationName::parse("parent", &req.parent)?;
    let (p, ctx) = caller::for_mutation(
        state,
        call,
        &req.parent,
        Need::Permission(Permission::ConnectKeysCreate),
    )
    .await?;
    let input = req.connect_key.unwrap_or_default();
    if input.display_name.chars().count() > rules::MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::invalid(
            "connect_key.display_name",
            "must be at most 200 characters",
        ));
    }
    let now = state.now();
    let expire_time = match &input.expire_time {
        Some(ts) => {
            let at = rules::from_timestamp("connect_key.expire_time", ts)?;
            if at <= now {
                return Err(ApiError::invalid("connect_key.expire_time", "must be in the future"));
            }
            Some(at)
        }
        None => None,
    };
    rules::request_id(&req.request_id)?;
    // The request_id is what opens the key sealed for replays, so it must be unguessable: a
    // random (version 4) UUID, compared in its canonical spelling.
    let request_id = match uuid::Uuid::parse_str(&req.request_id) {
        Ok(id) if id.get_version_num() == 4 => id.hyphenated().to_string(),
        Ok(_) => {
            return Err(ApiError::invalid(
                "request_id",
                "must be a random (version 4) UUID: it protects the key on replays",
            ))
        }
        Err(_) => String::new(),
    };
    // The idempotency record holds a digest of the request_id, never the id itself.
    let key = (!request_id.is_empty()).then(|| {
        let digest = Sha256::digest(request_id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    });
    let key = key.and_then(|digest| Key::new("create_connect_key", &p.administrator, &digest));
    let db = &state.db;
    if let Some(previous) = IDEMPOTENCY.recall(db, key.as_ref()).await? {
        let m = connect_key::Entity::find_by_id(previous.clone())
            .filter(connect_key::Column::Organization.eq(&p.organization))
            .one(db)
            .await?
            .ok_or(ApiError::NotFound(previous))?;
        let within = now - m.create_time < chrono::TimeDelta::seconds(REPLAY_WINDOW_SECS);
        let secret = m
            .replay_key
            .as_deref()
            .filter(|_| within)
            .and_then(|sealed| open_for_replay(&request_id, &m.name, sealed));
        return match secret {
            Some(secret) => {
                Ok(CreateConnectKeyResponse { connect_key: Some(key_proto(m, secret)) })
            }
            None => Err(ApiError::precondition(
                "KEY_NO_LONGER_SHOWN",
                m.name,
                "this request_id created that connect key more than 10 minutes ago; its key \
                 is shown only within 10 minutes of creation: delete it and create a new one",
            )),
        };
    }
    let name = format!("{}/connectKeys/{}", p.organization, names::new_id());
    let secret = format!("sck_{}", random_token());
    let replay_key = match &key {
        Some(_) => Some(seal_for_replay(&request_id, &name, &secret)?),
        None => None,
    };
    let model = connect_key::Model {
        name: name.clone(),
        organization: p.organization.clone(),
        display_name: input.display_name,
        key_hash: rules::hash_secret(&secret),
        key_salt: None,
        replay_key,
        expire_time,
        revoked: false,
        create_time: now,
        creator: p.administrator.clone(),
    };
    let txn = begin_write(db).await?;
    connect_key::Entity::insert(model.clone().into_active_model())
        .exec_without_returning(&txn)
        .await?;
    IDEMPOTENCY.record(&txn, key.as_ref(), &name, now).await?;
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
    txn.commit().await?;
    tracing::info!(connect_key = %name, "connect key created");
    Ok(CreateConnectKeyResponse { connect_key: Some(key_proto(model, secret)) })
}

pub(crate) async fn list(
    state: &State,
    call: AdministratorCall,
    req: ListConnectKeysRequest,
) -> ApiResult<ListConnectKeysResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::ConnectKeysRead).await?;
    let req = &req;
    OrganizationName::parse("parent", &req.parent)?;
    p.check_organization(&req.parent)?;
    let size = names::page_size(req.page_size)?;
    let digest = "connect_keys";
    let offset = names::decode_page_token(&req.page_token, digest)?;
    let rows = connect_key::Entity::find()
        .filter(connect_key::Column::Organization.eq(&p.organization))
        .order_by_asc(connect_key::Column::CreateTime)
        .order_by_asc(connect_key::Column::Name)
        .offset(offset)
        .limit(size + 1)
        .all(&state.db)
        .await?;
    let (rows, next_page_token) = names::page(rows, size, offset, digest);
    Ok(ListConnectKeysResponse {
        connect_keys: rows.into_iter().map(|m| key_proto(m, String::new())).collect(),
        next_page_token,
    })
}

pub(crate) async fn delete(
    state: &State,
    call: AdministratorCall,
    req: DeleteConnectKeyRequest,
) -> ApiResult<DeleteConnectKeyResponse> {
    let name = req.name;
    ConnectKeyName::parse("name", &name)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &name, Need::Permission(Permission::ConnectKeysDelete))
            .await?;
    let txn = begin_write(&state.db).await?;
    let updated = connect_key::Entity::update_many()
        .col_expr(connect_key::Column::Revoked, Expr::value(true))
        .filter(connect_key::Column::Name.eq(&name))
        .filter(connect_key::Column::Organization.eq(&p.organization))
        .exec(&txn)
        .await?;
    if updated.rows_affected == 0 {
        return Err(ApiError::NotFound(name));
    }
    let now = state.now();
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
    txn.commit().await?;
    tracing::info!(connect_key = %name, "connect key revoked");
    Ok(DeleteConnectKeyResponse {})
}
