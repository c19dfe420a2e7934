//! `SystemService`: systems and the connect keys that enrol them.

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
use steward_proto::commands::v1::system_service_server::SystemService;
use steward_proto::commands::v1::{
    ConnectKey, CreateConnectKeyRequest, CreateConnectKeyResponse, DeleteConnectKeyRequest,
    DeleteConnectKeyResponse, DeleteSystemRequest, DeleteSystemResponse, GetSystemRequest,
    GetSystemResponse, ListConnectKeysRequest, ListConnectKeysResponse, ListSystemsRequest,
    ListSystemsResponse, RunState, System, UpdateSystemRequest, UpdateSystemResponse,
};
use steward_runtime::authn::{self, Need};
use steward_runtime::names;
use steward_runtime::{ApiError, ApiResult};
use tonic::{Request, Response, Status};

use crate::agent::agent_deadline;
use crate::commands::{parse_org, parse_system, refresh_run};
use crate::entity::{connect_key, result, system, target};
use crate::rules::{self, timestamp};
use crate::IDEMPOTENCY;
use crate::{audit, begin_write, caller, State};
use steward_storage::idempotency::Key;

/// The SystemService implementation.
pub struct Systems {
    state: State,
}

impl Systems {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

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

/// A system as returned by the API.
pub(crate) fn system_proto(m: system::Model, now: DateTime<Utc>) -> System {
    let fresh = m.last_seen_time.is_some_and(|seen| seen + agent_deadline() > now);
    System {
        name: m.name,
        display_name: m.display_name,
        hostname: m.hostname,
        os: m.os,
        agent_version: m.agent_version,
        connected: m.stream_id.is_some() && fresh,
        last_seen_time: m.last_seen_time.map(timestamp),
        create_time: Some(timestamp(m.create_time)),
        etag: m.etag,
    }
}

async fn find_system<C: ConnectionTrait>(
    conn: &C,
    organization: &str,
    name: &str,
) -> ApiResult<system::Model> {
    system::Entity::find_by_id(name.to_string())
        .filter(system::Column::Organization.eq(organization))
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.to_string()))
}

/// Ends a deleted system's unfinished results `FAILED` and removes it from every command.
pub(crate) async fn forget_system<C: ConnectionTrait>(
    conn: &C,
    name: &str,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    target::Entity::delete_many().filter(target::Column::System.eq(name)).exec(conn).await?;
    let unfinished: Vec<String> = result::Entity::find()
        .select_only()
        .column(result::Column::Run)
        .filter(result::Column::System.eq(name))
        .filter(result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]))
        .into_tuple()
        .all(conn)
        .await?;
    result::Entity::update_many()
        .col_expr(result::Column::State, Expr::value(RunState::Failed as i32))
        .col_expr(result::Column::EndTime, Expr::value(Some(now)))
        .col_expr(result::Column::ErrorMessage, Expr::value("the system was deleted"))
        .filter(result::Column::System.eq(name))
        .filter(result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]))
        .exec(conn)
        .await?;
    for run in unfinished {
        refresh_run(conn, &run, now).await?;
    }
    Ok(())
}

impl Systems {
    async fn create_connect_key_impl(
        &self,
        request: Request<CreateConnectKeyRequest>,
    ) -> ApiResult<CreateConnectKeyResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        parse_org("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &req.parent, Need::Administrator)
            .await?;
        let input = req.connect_key.unwrap_or_default();
        if input.display_name.chars().count() > rules::MAX_DISPLAY_NAME_CHARS {
            return Err(ApiError::invalid(
                "connect_key.display_name",
                "must be at most 200 characters",
            ));
        }
        let now = self.state.now();
        let expire_time = match &input.expire_time {
            Some(ts) => {
                let at = rules::from_timestamp("connect_key.expire_time", ts)?;
                if at <= now {
                    return Err(ApiError::invalid(
                        "connect_key.expire_time",
                        "must be in the future",
                    ));
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
        let db = &self.state.db;
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

    async fn list_connect_keys_impl(
        &self,
        request: Request<ListConnectKeysRequest>,
    ) -> ApiResult<ListConnectKeysResponse> {
        let p =
            &caller::current(&self.state, authn::principal(&request)?, Need::Administrator).await?;
        let req = request.get_ref();
        parse_org("parent", &req.parent)?;
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
            .all(&self.state.db)
            .await?;
        let (rows, next_page_token) = names::page(rows, size, offset, digest);
        Ok(ListConnectKeysResponse {
            connect_keys: rows.into_iter().map(|m| key_proto(m, String::new())).collect(),
            next_page_token,
        })
    }

    async fn delete_connect_key_impl(
        &self,
        request: Request<DeleteConnectKeyRequest>,
    ) -> ApiResult<DeleteConnectKeyResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let name = request.into_inner().name;
        names::parse("name", &name, &["organizations", "connectKeys"])?;
        p.check_organization(&name)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &name, Need::Administrator).await?;
        let txn = begin_write(&self.state.db).await?;
        let updated = connect_key::Entity::update_many()
            .col_expr(connect_key::Column::Revoked, Expr::value(true))
            .filter(connect_key::Column::Name.eq(&name))
            .filter(connect_key::Column::Organization.eq(&p.organization))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Err(ApiError::NotFound(name));
        }
        let now = self.state.now();
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
        txn.commit().await?;
        tracing::info!(connect_key = %name, "connect key revoked");
        Ok(DeleteConnectKeyResponse {})
    }

    async fn get_system_impl(
        &self,
        request: Request<GetSystemRequest>,
    ) -> ApiResult<GetSystemResponse> {
        let p =
            &caller::current(&self.state, authn::principal(&request)?, Need::Administrator).await?;
        let name = &request.get_ref().name;
        parse_system("name", name)?;
        p.check_organization(name)?;
        let m = find_system(&self.state.db, &p.organization, name).await?;
        Ok(GetSystemResponse { system: Some(system_proto(m, self.state.now())) })
    }

    async fn list_systems_impl(
        &self,
        request: Request<ListSystemsRequest>,
    ) -> ApiResult<ListSystemsResponse> {
        let p =
            &caller::current(&self.state, authn::principal(&request)?, Need::Administrator).await?;
        let req = request.get_ref();
        parse_org("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        let size = names::page_size(req.page_size)?;
        let digest = "systems";
        let offset = names::decode_page_token(&req.page_token, digest)?;
        let rows = system::Entity::find()
            .filter(system::Column::Organization.eq(&p.organization))
            .order_by_asc(system::Column::DisplayName)
            .order_by_asc(system::Column::Name)
            .offset(offset)
            .limit(size + 1)
            .all(&self.state.db)
            .await?;
        let (rows, next_page_token) = names::page(rows, size, offset, digest);
        let now = self.state.now();
        Ok(ListSystemsResponse {
            systems: rows.into_iter().map(|m| system_proto(m, now)).collect(),
            next_page_token,
        })
    }

    async fn update_system_impl(
        &self,
        request: Request<UpdateSystemRequest>,
    ) -> ApiResult<UpdateSystemResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        let s = req.system.ok_or_else(|| ApiError::invalid("system", "is required"))?;
        parse_system("system.name", &s.name)?;
        p.check_organization(&s.name)?;
        let p =
            caller::current_audited(&self.state, &ctx, &p, &s.name, Need::Administrator).await?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        rules::update_paths(&mask, &["display_name"], &["display_name"])?;
        rules::display_name("system.display_name", &s.display_name)?;
        let txn = begin_write(&self.state.db).await?;
        let current = find_system(&txn, &p.organization, &s.name).await?;
        if !s.etag.is_empty() && s.etag != current.etag {
            return Err(ApiError::Aborted(format!(
                "{} has changed since it was read (stale etag)",
                s.name
            )));
        }
        let etag = rules::etag(&s.name, 0, &names::new_id());
        let updated = system::Entity::update_many()
            .col_expr(system::Column::DisplayName, Expr::value(s.display_name.clone()))
            .col_expr(system::Column::Etag, Expr::value(etag.clone()))
            .filter(system::Column::Name.eq(&s.name))
            .filter(system::Column::Etag.eq(&current.etag))
            .exec(&txn)
            .await?;
        if updated.rows_affected != 1 {
            return Err(ApiError::Aborted(format!("{} was changed concurrently, retry", s.name)));
        }
        let now = self.state.now();
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &s.name, Ok(()), now).await?;
        txn.commit().await?;
        let next = system::Model { display_name: s.display_name, etag, ..current };
        Ok(UpdateSystemResponse { system: Some(system_proto(next, now)) })
    }

    async fn delete_system_impl(
        &self,
        request: Request<DeleteSystemRequest>,
    ) -> ApiResult<DeleteSystemResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        parse_system("name", &req.name)?;
        p.check_organization(&req.name)?;
        let p =
            caller::current_audited(&self.state, &ctx, &p, &req.name, Need::Administrator).await?;
        let txn = begin_write(&self.state.db).await?;
        let current = find_system(&txn, &p.organization, &req.name).await?;
        if !req.etag.is_empty() && req.etag != current.etag {
            return Err(ApiError::Aborted(format!(
                "{} has changed since it was read (stale etag)",
                req.name
            )));
        }
        let now = self.state.now();
        system::Entity::delete_many().filter(system::Column::Name.eq(&req.name)).exec(&txn).await?;
        forget_system(&txn, &req.name, now).await?;
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &req.name, Ok(()), now)
            .await?;
        txn.commit().await?;
        self.state.changed.notify_waiters();
        tracing::info!(system = %req.name, "system deleted");
        Ok(DeleteSystemResponse {})
    }
}

#[tonic::async_trait]
impl SystemService for Systems {
    async fn create_connect_key(
        &self,
        r: Request<CreateConnectKeyRequest>,
    ) -> Result<Response<CreateConnectKeyResponse>, Status> {
        self.create_connect_key_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn list_connect_keys(
        &self,
        r: Request<ListConnectKeysRequest>,
    ) -> Result<Response<ListConnectKeysResponse>, Status> {
        self.list_connect_keys_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn delete_connect_key(
        &self,
        r: Request<DeleteConnectKeyRequest>,
    ) -> Result<Response<DeleteConnectKeyResponse>, Status> {
        self.delete_connect_key_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn get_system(
        &self,
        r: Request<GetSystemRequest>,
    ) -> Result<Response<GetSystemResponse>, Status> {
        self.get_system_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn list_systems(
        &self,
        r: Request<ListSystemsRequest>,
    ) -> Result<Response<ListSystemsResponse>, Status> {
        self.list_systems_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn update_system(
        &self,
        r: Request<UpdateSystemRequest>,
    ) -> Result<Response<UpdateSystemResponse>, Status> {
        self.update_system_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn delete_system(
        &self,
        r: Request<DeleteSystemRequest>,
    ) -> Result<Response<DeleteSystemResponse>, Status> {
        self.delete_system_impl(r).await.map(Response::new).map_err(Status::from)
    }
}
