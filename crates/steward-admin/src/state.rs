//! State shared by the services and the domain modules, and the building blocks of every write:
//! the organization lock, the caller re-check, the safeguards' snapshot, and the conversions to
//! API messages.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, JoinType, QueryFilter,
    QuerySelect,
};
use sha2::{Digest, Sha256};
use steward_proto::admin::v1::{administrator as proto_admin, Administrator, Organization};
use steward_runtime::authn::Principal;
use steward_runtime::claims::Role;
use steward_runtime::coalesce::{self, padded, Coalescer};
use steward_runtime::lease::{Leases, Reuse};
use steward_runtime::names::{AdministratorName, OrganizationName, RoleName};
use steward_runtime::roles::{self, Permissions};
use steward_runtime::service::{Clock, Peers};
use steward_runtime::{ApiError, ApiResult};

use crate::entity::{administrator, organization};
use crate::safeguards::Member;

/// What every service and domain function shares.
pub struct State {
    /// The service's database.
    pub db: DatabaseConnection,
    /// The injected clock.
    pub clock: Clock,
    /// Lifetime of invite links, to answer ResendInvite's `invite_expire_time`.
    pub invite_ttl: chrono::Duration,
    /// The other services, for effects delivered before the answer ([`crate::effects::deliver_now`]).
    pub peers: Peers,
    /// `ListAdministrators` totals by organization and filter, each with the organization
    /// revision it was counted at ([`AtRevision`]).
    pub totals: AtRevision<(String, String), u64>,
    /// `ListAdministrators` pages, each with the organization revision it was read at.
    pub pages: AtRevision<PageKey, Arc<Vec<Administrator>>>,
    /// Organizations' revisions by id, read by concurrent calls in one statement.
    pub revisions: Coalescer<String, i64>,
    /// What each caller (by name and API key) holds, reused by reads for the caller lease
    /// ([`caller_may_read`]). Its lease (`internal.caller_lease_ms`) is also what every write
    /// that narrows a caller waits out ([`State::wait_out_leases`]) and what the other
    /// services are told they may keep an answer for.
    pub callers: Leases<(String, String), Permissions>,
    /// Administrator rows by id, read by concurrent GetAdministrator calls in one statement
    /// ([`steward_runtime::coalesce`]): never from a read that started before the call.
    pub administrators: Coalescer<String, administrator::Model>,
}

/// Answers about an organization's administrators, each remembered with the organization's
/// `revision` it was read at: `ListAdministrators` totals (by filter) and pages (by filter,
/// order, offset and size). Every write to an organization's administrators (create, update,
/// delete, activate, MFA reset and enrolment, role changes) bumps that revision in its
/// transaction ([`lock_org`]), and an answer is reused only at the revision read on the call,
/// so only while nothing it shows can have changed, on any replica: a page of a large
/// organization reads one row instead of counting and reading thousands. A new write to
/// administrators must take the lock.
///
/// An answer is also forgotten after [`REMEMBERED_FOR`]: replicas of a version before this
/// rule recorded MFA enrolments without the lock, and during a rolling upgrade a page could
/// otherwise miss one until the organization's next write.
#[derive(Debug)]
pub struct AtRevision<K, V> {
    entries: std::sync::Mutex<std::collections::HashMap<K, (i64, std::time::Instant, V)>>,
    max: usize,
}

/// Longest an answer of [`AtRevision`] is reused, whatever the revision.
pub const REMEMBERED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl<K: Eq + std::hash::Hash, V: Clone> AtRevision<K, V> {
    /// Remembers at most `max` answers; past it the memory starts afresh.
    pub fn new(max: usize) -> Self {
        Self { entries: Default::default(), max }
    }

    /// The answer for `key` read at `revision`, if remembered.
    pub fn get(&self, key: &K, revision: i64) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(at, since, _)| *at == revision && since.elapsed() < REMEMBERED_FOR)
            .map(|(_, _, value)| value.clone())
    }

    /// Remembers `value` for `key` at `revision`.
    pub fn put(&self, key: K, revision: i64, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= self.max && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, (revision, std::time::Instant::now(), value));
    }
}

/// A page of `ListAdministrators`: organization id, filter, order, offset and size.
pub type PageKey = (String, String, String, u64, u64);

/// Most totals remembered.
const MAX_TOTALS: usize = 4096;
/// Most pages remembered, each of at most [`MAX_REMEMBERED_PAGE`] administrators (about 550
/// bytes each): 7 MiB at most.
const MAX_PAGES: usize = 128;
/// Longest page remembered; longer ones are read on every call.
pub const MAX_REMEMBERED_PAGE: usize = 100;

/// Shared handle.
pub type Shared = Arc<State>;

impl State {
    /// The state of a service on `db`, whose caller leases last `caller_lease`.
    pub fn new(
        db: DatabaseConnection,
        clock: Clock,
        invite_ttl: chrono::Duration,
        peers: Peers,
        caller_lease: std::time::Duration,
    ) -> Self {
        let administrators =
            coalesce::rows_by::<administrator::Entity>(&db, administrator::Column::Id, |row| {
                row.id.clone()
            });
        let conn = db.clone();
        let revisions = Coalescer::new(move |ids: Vec<String>| {
            let db = conn.clone();
            async move {
                let found: Vec<(String, i64)> = organization::Entity::find()
                    .select_only()
                    .column(organization::Column::Id)
                    .column(organization::Column::Revision)
                    .filter(organization::Column::Id.is_in(padded(ids)))
                    .into_tuple()
                    .all(&db)
                    .await
                    .map_err(ApiError::from)?;
                Ok(found.into_iter().collect())
            }
        });
        Self {
            db,
            clock,
            invite_ttl,
            peers,
            totals: AtRevision::new(MAX_TOTALS),
            pages: AtRevision::new(MAX_PAGES),
            revisions,
            callers: Leases::new(caller_lease),
            administrators,
        }
    }

    /// The administrator `admin_id` of organization `org_id` as it is now, read together with
    /// concurrent calls' ([`State::administrators`]).
    pub async fn administrator(
        &self,
        org_id: &str,
        admin_id: &str,
    ) -> ApiResult<administrator::Model> {
        self.administrators
            .get(admin_id.to_string())
            .await?
            .filter(|row| row.organization_id == org_id)
            .ok_or_else(|| ApiError::NotFound(admin_name(org_id, admin_id)))
    }

    /// The current time, from the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Opens a transaction that writes ([`steward_storage::begin_write`]).
    pub async fn begin_write(&self) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
        steward_storage::begin_write(&self.db, "admin_organizations").await
    }

    /// Commits a write that narrows what a caller holds or a token is minted from (an
    /// administrator updated or deleted, an account or API key deleted, a role's permissions
    /// changed), then waits out the leases ([`State::wait_out_leases`]) before it answers.
    pub async fn commit_narrowing(&self, txn: sea_orm::DatabaseTransaction) -> ApiResult<()> {
        txn.commit().await?;
        self.wait_out_leases().await;
        Ok(())
    }

    /// Waits until no replica of any service can still hold a caller lease read before now
    /// ([`steward_runtime::lease`]): after a narrowing write's commit (or a no-op answer that
    /// says such a change holds), so once it has returned, the next call anywhere acts on it.
    pub async fn wait_out_leases(&self) {
        steward_runtime::lease::wait_out(self.callers.lease()).await;
    }

    /// [`State::wait_out_leases`] when a delete answers `NOT_FOUND`: a client that retries a
    /// delete whose first answer it lost, and takes `NOT_FOUND` as done, must find the
    /// deletion honoured everywhere as if the first answer had arrived.
    pub async fn wait_out_leases_if_gone<T>(&self, result: &ApiResult<T>) {
        if matches!(result, Err(ApiError::NotFound(_))) {
            self.wait_out_leases().await;
        }
    }

    /// The lease the other services may keep this service's answers about callers for
    /// (`caller_lease_ms` of LookupAdministrator and LookupServiceAccount): the one its own
    /// writes wait out, so a reader never keeps an answer longer than the writer waits, even
    /// while replicas with another setting (or none, before leases) still serve.
    pub fn caller_lease_ms(&self) -> u32 {
        u32::try_from(self.callers.lease().as_millis()).unwrap_or(0)
    }
}

/// `organizations/{o}`.
pub fn org_name(org_id: &str) -> String {
    format!("organizations/{org_id}")
}

/// `organizations/{o}/administrators/{a}`.
pub fn admin_name(org_id: &str, admin_id: &str) -> String {
    format!("organizations/{org_id}/administrators/{admin_id}")
}

/// The organization id of `organizations/{o}`.
pub fn parse_org(field: &str, name: &str) -> ApiResult<String> {
    Ok(OrganizationName::parse(field, name)?.id().to_string())
}

/// The organization and administrator ids of `organizations/{o}/administrators/{a}`.
pub fn parse_admin(field: &str, name: &str) -> ApiResult<(String, String)> {
    let name = AdministratorName::parse(field, name)?;
    Ok((name.organization().id().to_string(), name.id().to_string()))
}

/// A short opaque checksum over `parts`.
pub fn etag(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// A short digest binding a page token to its query.
pub fn query_digest(parts: &[&str]) -> String {
    etag(parts)
}

pub use steward_runtime::wire::{from_timestamp, timestamp};

/// A role as an administrator holds it: a built-in one, or one of its organization's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assigned {
    /// A built-in role.
    BuiltIn(Role),
    /// An organization's own role.
    Custom(RoleName),
}

impl Assigned {
    /// The value of administrators' `role` column: `Role::as_str`, or the custom role's name.
    pub fn stored(&self) -> String {
        match self {
            Self::BuiltIn(role) => role.as_str().to_string(),
            Self::Custom(name) => name.to_string(),
        }
    }

    /// The API name: `roles/...` or `organizations/{o}/roles/{r}`.
    pub fn name(&self) -> String {
        match self {
            Self::BuiltIn(role) => roles::built_in_name(*role).to_string(),
            Self::Custom(name) => name.to_string(),
        }
    }

    /// The v1 enum value.
    pub fn role(&self) -> Role {
        match self {
            Self::BuiltIn(role) => *role,
            Self::Custom(_) => Role::Custom,
        }
    }
}

/// The role an administrator message asks for: its `role` or its `role_name` (a built-in role's
/// name, or an organization's own role, which `role` may then only give as ROLE_CUSTOM), which
/// must agree when both are given.
pub fn requested_role(input: &Administrator) -> ApiResult<Assigned> {
    let by_value = (input.role != 0).then(|| role_from_proto("administrator.role", input.role));
    let by_name = (!input.role_name.is_empty()).then(|| {
        if input.role_name.starts_with("organizations/") {
            return RoleName::parse("administrator.role_name", &input.role_name)
                .map(Assigned::Custom);
        }
        roles::built_in_named(&input.role_name).map(Assigned::BuiltIn).ok_or_else(|| {
            ApiError::invalid(
                "administrator.role_name",
                format!(
                    "must name a built-in role ({}) or organizations/{{o}}/roles/{{r}}",
                    built_in_names()
                ),
            )
        })
    });
    match (by_value.transpose()?, by_name.transpose()?) {
        (Some(value), Some(name)) if value != name.role() => Err(ApiError::invalid(
            "administrator.role_name",
            "names another role than `role`; give one of them, or both alike",
        )),
        (_, Some(assigned)) => Ok(assigned),
        (Some(Role::Custom), None) => Err(ApiError::invalid(
            "administrator.role_name",
            "is required with ROLE_CUSTOM: the organization's role, organizations/{o}/roles/{r}",
        )),
        (Some(role), None) => Ok(Assigned::BuiltIn(role)),
        (None, None) => Err(ApiError::invalid(
            "administrator.role",
            format!("is required: a Role value or role_name ({})", built_in_names()),
        )),
    }
}

/// The permissions of `assigned` (without billing): a built-in role's, or the stored ones of
/// an organization's own role; `None` when that role does not exist.
pub async fn role_permissions<C: ConnectionTrait>(
    conn: &C,
    assigned: &Assigned,
) -> ApiResult<Option<Permissions>> {
    match assigned {
        Assigned::BuiltIn(role) => Ok(Some(roles::built_in(*role))),
        Assigned::Custom(name) => Ok(crate::entity::role::Entity::find_by_id(name.to_string())
            .one(conn)
            .await?
            .map(|row| roles::custom(row.permissions.split_whitespace()))),
    }
}

/// The permissions of `assigned` (without billing) when an organization's own role's row, if
/// any, was read in the same statement (`custom`: the row the role column joined, `None` for a
/// built-in role or one that vanished, which leaves only what every role holds).
pub fn joined_permissions(
    assigned: &Assigned,
    custom: Option<&crate::entity::role::Model>,
) -> Permissions {
    match (assigned, custom) {
        (Assigned::BuiltIn(role), _) => roles::built_in(*role),
        (Assigned::Custom(_), Some(row)) => roles::custom(row.permissions.split_whitespace()),
        (Assigned::Custom(_), None) => roles::built_in(Role::Custom),
    }
}

/// The join from a row's `role` column to the organization's own role it names (a built-in
/// role's stored value, e.g. `administrator`, names no row).
pub fn role_join<E: EntityTrait>(role_column: E::Column) -> sea_orm::RelationDef {
    E::belongs_to(crate::entity::role::Entity)
        .from(role_column)
        .to(crate::entity::role::Column::Name)
        .into()
}

/// The permissions of an administrator's role (without billing). A custom role that vanished
/// (it cannot be deleted while held) leaves only what every role holds.
pub async fn holder_permissions<C: ConnectionTrait>(
    conn: &C,
    row: &administrator::Model,
) -> ApiResult<Permissions> {
    let assigned = stored_assignment(row);
    Ok(role_permissions(conn, &assigned).await?.unwrap_or_else(|| roles::built_in(Role::Custom)))
}

/// The built-in roles' names, for error messages.
fn built_in_names() -> String {
    roles::BUILT_IN.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

/// The name of a built-in role (`roles/...`).
pub fn role_name(role: Role) -> String {
    roles::built_in_name(role).to_string()
}

/// The stored role of an API role; `field` names it in the error.
pub fn role_from_proto(field: &str, role: i32) -> ApiResult<Role> {
    Role::from_proto(role).ok_or_else(|| {
        ApiError::invalid(
            field,
            "must be ROLE_ADMINISTRATOR, ROLE_MANAGER, ROLE_HELP_DESK, ROLE_READ_ONLY or \
             ROLE_COMMAND_RUNNER",
        )
    })
}

/// The role of an administrator row.
pub fn stored_assignment(model: &administrator::Model) -> Assigned {
    assignment_of(&model.role)
}

/// The role a `role` column holds (administrators' and service accounts').
pub fn assignment_of(stored: &str) -> Assigned {
    if let Some(role) = Role::parse(stored).filter(|r| *r != Role::Custom) {
        return Assigned::BuiltIn(role);
    }
    // Only `Assigned::stored` values are ever written; anything else would be a corrupted row,
    // and the least privileged role is the safe reading of it.
    RoleName::parse("role", stored).map_or(Assigned::BuiltIn(Role::CommandRunner), Assigned::Custom)
}

fn stored_role(model: &administrator::Model) -> Role {
    stored_assignment(model).role()
}

/// The etag of an administrator.
pub fn admin_etag(model: &administrator::Model) -> String {
    etag(&["administrator", &model.id, &model.revision.to_string()])
}

/// The API form of an administrator row.
pub fn admin_to_proto(model: &administrator::Model) -> Administrator {
    let assigned = stored_assignment(model);
    let state = if model.state == administrator::STATE_ACTIVE {
        proto_admin::State::Active
    } else {
        proto_admin::State::Invited
    };
    Administrator {
        name: admin_name(&model.organization_id, &model.id),
        email: model.email.clone(),
        role: assigned.role().to_proto(),
        role_name: assigned.name(),
        billing: model.billing,
        mfa_required: model.mfa_required,
        mfa_enrolled: model.mfa_enrolled,
        whats_new: model.whats_new,
        state: state.into(),
        create_time: Some(timestamp(model.created_at)),
        update_time: Some(timestamp(model.updated_at)),
        activate_time: model.activated_at.map(timestamp),
        invited_by: model.invited_by.clone(),
        etag: admin_etag(model),
    }
}

/// The API form of an organization row.
pub fn org_to_proto(model: &organization::Model) -> Organization {
    Organization {
        name: org_name(&model.id),
        display_name: model.display_name.clone(),
        create_time: Some(timestamp(model.created_at)),
        etag: etag(&["organization", &model.id, &model.display_name]),
    }
}

/// Takes the organization's write lock for the rest of the transaction `conn`: a row lock on
/// PostgreSQL, the database write lock on SQLite. Every create, update and delete of
/// administrators starts with it, so concurrent writers (also on other replicas) run one after
/// the other and each sees the previous one's result.
pub async fn lock_org<C: ConnectionTrait>(conn: &C, org_id: &str) -> ApiResult<()> {
    let result = organization::Entity::update_many()
        .col_expr(organization::Column::Revision, Expr::col(organization::Column::Revision).add(1))
        .filter(organization::Column::Id.eq(org_id))
        .exec(conn)
        .await?;
    if result.rows_affected == 0 {
        return Err(ApiError::NotFound(org_name(org_id)));
    }
    Ok(())
}

pub use steward_runtime::authn::Need;

/// The caller as it is now: an administrator or a service account.
#[derive(Clone, Debug)]
pub struct CallerRow {
    /// Its resource name.
    pub name: String,
    /// Its organization's id.
    pub organization_id: String,
    /// How an invitation names it: an administrator's email, a service account's display name.
    pub contact: String,
    /// Its role's permissions (without billing).
    pub role: Permissions,
    /// Billing access.
    pub billing: bool,
    /// The administrator's row; `None` for a service account.
    pub administrator: Option<administrator::Model>,
}

/// The caller's current row. Tokens outlive demotions and deletions by their lifetime, so
/// every call re-checks here what the token claims (mutations inside the locked transaction):
/// a demoted or deleted administrator's unexpired token reads and changes nothing more, and a
/// deleted service account or revoked API key stops working at once.
pub async fn caller_row<C: ConnectionTrait>(
    conn: &C,
    principal: &Principal,
    need: Need,
) -> ApiResult<CallerRow> {
    let caller = if principal.is_service_account() {
        crate::service_account::caller(conn, principal).await?
    } else {
        let (org_id, admin_id) = parse_admin("caller", &principal.administrator)?;
        // The row and its organization's own role, if it holds one, in one statement.
        let (row, custom) = administrator::Entity::find_by_id(admin_id)
            .filter(administrator::Column::OrganizationId.eq(org_id))
            .join(
                JoinType::LeftJoin,
                role_join::<administrator::Entity>(administrator::Column::Role),
            )
            .select_also(crate::entity::role::Entity)
            .one(conn)
            .await?
            .ok_or_else(|| {
                ApiError::denied("CALLER_DELETED", "the caller's account no longer exists")
            })?;
        if row.state != administrator::STATE_ACTIVE {
            return Err(ApiError::denied(
                "CALLER_INACTIVE",
                "the caller's account is not activated",
            ));
        }
        CallerRow {
            name: admin_name(&row.organization_id, &row.id),
            organization_id: row.organization_id.clone(),
            contact: row.email.clone(),
            role: joined_permissions(&stored_assignment(&row), custom.as_ref()),
            billing: row.billing,
            administrator: Some(row),
        }
    };
    match need.refusal(&caller.role.with_billing(caller.billing)) {
        Some(refusal) => Err(refusal),
        None => Ok(caller),
    }
}

/// [`caller_row`] for reads outside a transaction, which need only the caller's permission:
/// what the caller holds is reused for the caller lease (`internal.caller_lease_ms`), never
/// past a write that changed it ([`State::wait_out_leases`]). Refusals are not kept.
pub async fn caller_may_read(state: &State, principal: &Principal, need: Need) -> ApiResult<()> {
    let key = (principal.administrator.clone(), principal.client_id.clone());
    let held = state
        .callers
        .read_through(key, Reuse::Lease, || async {
            let caller = caller_row(&state.db, principal, Need::AnyRole).await?;
            Ok::<_, ApiError>((caller.role.with_billing(caller.billing), state.callers.lease()))
        })
        .await?;
    match need.refusal(&held) {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

/// [`caller_row`] for what only people have (their profile): the administrator's row, or
/// `PERMISSION_DENIED` (`PEOPLE_ONLY`) for a service account.
pub async fn caller_administrator<C: ConnectionTrait>(
    conn: &C,
    principal: &Principal,
    need: Need,
) -> ApiResult<administrator::Model> {
    caller_row(conn, principal, need)
        .await?
        .administrator
        .ok_or_else(|| ApiError::denied("PEOPLE_ONLY", "service accounts have no profile"))
}

/// Refuses (`PERMISSION_DENIED`, `ROLE_ESCALATION`) unless the caller's role holds every
/// permission of `role` (`NOT_FOUND` when it is an organization's own role that does not
/// exist): no one hands out more than they hold.
pub async fn may_assign<C: ConnectionTrait>(
    conn: &C,
    caller: &CallerRow,
    role: &Assigned,
) -> ApiResult<()> {
    let assigned =
        role_permissions(conn, role).await?.ok_or_else(|| ApiError::NotFound(role.name()))?;
    may_hand_out(&caller.role, &assigned, &role.name())
}

/// Refuses (`PERMISSION_DENIED`, `ROLE_ESCALATION`) unless `caller` covers `handed`, the
/// permissions of the role `what` names.
pub fn may_hand_out(caller: &Permissions, handed: &Permissions, what: &str) -> ApiResult<()> {
    if caller.covers(handed) {
        return Ok(());
    }
    let missing: Vec<&str> = handed
        .iter()
        .filter(|(p, _)| !caller.holds(*p))
        .map(|(p, _)| roles::permission_name(p))
        .collect();
    Err(ApiError::denied(
        "ROLE_ESCALATION",
        format!(
            "{what} holds permissions your role does not ({}); you may only hand out \
             permissions you hold",
            if missing.is_empty() { "wider scopes".to_string() } else { missing.join(", ") }
        ),
    ))
}

/// Refuses (`PERMISSION_DENIED`, `TARGET_OUTRANKS_CALLER`) acting on `target` when its role
/// can manage administrators and holds a permission the caller's role does not (a Help Desk
/// resets a Manager's second factor, never an Administrator's). Roles are compared without the
/// billing flag, which has its own rule (only billing administrators grant it).
pub async fn may_act_on<C: ConnectionTrait>(
    conn: &C,
    caller: &CallerRow,
    target: &administrator::Model,
) -> ApiResult<()> {
    if roles::may_act_on(&caller.role, &holder_permissions(conn, target).await?) {
        return Ok(());
    }
    Err(ApiError::denied(
        "TARGET_OUTRANKS_CALLER",
        format!(
            "{} may manage administrators and holds permissions your role does not",
            admin_name(&target.organization_id, &target.id)
        ),
    ))
}

/// Every administrator of the organization, as the safeguards see them.
pub async fn members<C: ConnectionTrait>(conn: &C, org_id: &str) -> ApiResult<Vec<Member>> {
    let rows = administrator::Entity::find()
        .filter(administrator::Column::OrganizationId.eq(org_id))
        .all(conn)
        .await?;
    Ok(rows.iter().map(member).collect())
}

/// One row as the safeguards see it.
pub fn member(row: &administrator::Model) -> Member {
    Member {
        name: admin_name(&row.organization_id, &row.id),
        role: stored_role(row),
        billing: row.billing,
        active: row.state == administrator::STATE_ACTIVE,
    }
}

/// The organization row, or NOT_FOUND.
pub async fn organization<C: ConnectionTrait>(
    conn: &C,
    org_id: &str,
) -> ApiResult<organization::Model> {
    organization::Entity::find_by_id(org_id.to_string())
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound(org_name(org_id)))
}

/// An administrator of the organization, or NOT_FOUND naming `name`.
pub async fn administrator<C: ConnectionTrait>(
    conn: &C,
    org_id: &str,
    admin_id: &str,
) -> ApiResult<administrator::Model> {
    administrator::Entity::find_by_id(admin_id.to_string())
        .filter(administrator::Column::OrganizationId.eq(org_id))
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound(admin_name(org_id, admin_id)))
}

pub use steward_runtime::names::check_request_id;

pub use steward_storage::is_unique_violation;
