//! Forced races across two replicas on one database, many rounds each: two calls, one per
//! replica, released together by a barrier, one of them after a random head start (0 to 2 ms;
//! in the grant races, up to the previous revoke's duration) so that either may go first.
//!
//! * The safeguards: an organization with exactly two activated Administrators, both with
//!   billing (plus a Manager, a Read Only, a Command Runner, an invited Administrator with
//!   billing and a service account with the Administrator role, none of which count), and two
//!   calls that each remove an Administrator or a billing administrator (delete, demote, remove
//!   billing, both at once, self-deletion), from the two contenders or the service account.
//!   After every round the organization still has an activated Administrator and an activated
//!   billing administrator, at least one call succeeded, and the two answers and the final state
//!   are exactly those of the two calls applied one after the other in some order (so every
//!   refusal is the documented one: `FAILED_PRECONDITION` naming the broken rules, or
//!   `PERMISSION_DENIED` when the other call removed the caller).
//! * Revoked grants: `DeleteGrant` on one replica while the grantee's `RunCommand` starts on the
//!   other. A run started after the revoke returned is refused (`NO_GRANT`), no run commits after
//!   the revoke returned (the runs read straight from the database at once are all the runs
//!   there will be) and every run's create time precedes the revoke's return. The same when the
//!   grant goes with the runner, demoted or deleted through the admin service, which the
//!   commands service asks about the caller.
//!
//! Access tokens of administrators created during the rounds are signed with the stack's own
//! signing key by the auth service's own signer (same claims and lifetime as a sign-in), and
//! invites are accepted through `AdminInternalService.ActivateAdministrator` as the auth service
//! does: the rounds race the admin and commands services, not password hashing.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::Rng;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use steward_auth::jwt::{Signer, Subject};
use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::administrator::State as AdminState;
use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use steward_proto::admin::v1::{
    ActivateAdministratorRequest, Administrator, BatchDeleteAdministratorsRequest,
    CreateAdministratorRequest, CreateOrganizationRequest, CreateServiceAccountKeyRequest,
    ListAdministratorsRequest, Organization, Role, ServiceAccountKey, UpdateAdministratorRequest,
};
use steward_proto::auth::v1::{ExchangeApiKeyRequest, TokenSet};
use steward_proto::client::Steward;
use steward_proto::commands::v1::{CreateGrantRequest, DeleteGrantRequest, Grant, Run};
use steward_runtime::claims::{Role as Claimed, TokenScope};
use steward_runtime::service::InternalChannel;
use steward_server::ServiceKind;
use steward_storage::testing::Backend;
use tokio::sync::Barrier;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::harness::{Owner, Stack, TestClock};

/// Organizations raced in parallel and rounds per organization: at least 1,000 interleavings on
/// PostgreSQL; fewer on SQLite, whose single writer serializes every transaction anyway.
fn scale(backend: Backend, postgres: (usize, usize)) -> (usize, usize) {
    match backend {
        Backend::Postgres => postgres,
        Backend::Sqlite => (4, 50),
    }
}

/// A stack whose services keep at most 4 database connections each (instead of 8): two
/// replicas of three services under these races would otherwise hold about 50 PostgreSQL
/// connections, and the suite runs tests side by side on one server.
async fn small_pools(backend: Backend) -> Stack {
    Stack::start_with(backend, |config| config.database.max_connections = 4).await
}

/// Signs access tokens as the auth service does at sign-in (its signer, the stack's key).
struct Minter {
    signer: Signer,
    clock: TestClock,
}

impl Minter {
    fn new(stack: &Stack) -> Self {
        let config = &stack.config().auth;
        let keys = steward_auth::keys::load_all(config).unwrap();
        Self { signer: Signer::new(keys, config).unwrap(), clock: stack.clock.clone() }
    }

    /// A full-scope token for `administrator`, signed in just now with a password.
    fn token(&self, administrator: &str, role: Claimed, billing: bool) -> String {
        let organization = administrator.split("/administrators/").next().unwrap().to_string();
        let subject = Subject {
            administrator: administrator.to_string(),
            organization,
            role,
            role_name: String::new(),
            permissions: Vec::new(),
            client_id: String::new(),
            not_after: None,
            billing,
        };
        let now = self.clock.now();
        let sid = uuid::Uuid::new_v4().to_string();
        let amr = ["pwd".to_string()];
        self.signer.sign(&subject, &sid, &amr, TokenScope::Full, now, now).unwrap().0
    }
}

/// Two replicas of the whole stack on one database, and what creates accounts on them.
struct Replicas {
    /// Anonymous clients of the first and the second replica.
    clients: [Steward; 2],
    /// The internal listener of the first replica, with the service credential.
    internal: InternalChannel,
    minter: Minter,
}

impl Replicas {
    async fn start(stack: &mut Stack) -> Self {
        let second = stack.add_replica().await;
        Self {
            clients: [stack.client().await, stack.client_at(&second).await],
            internal: stack.internal_for(ServiceKind::Admin).await,
            minter: Minter::new(stack),
        }
    }

    /// Clients of both replicas sending `token`.
    fn signed(&self, token: &str) -> [Steward; 2] {
        [self.clients[0].with_token(token).unwrap(), self.clients[1].with_token(token).unwrap()]
    }

    /// A new organization with its owner activated (an Administrator with billing); answers the
    /// organization, the owner and the owner's clients.
    async fn organization(&self) -> (String, String, [Steward; 2]) {
        let mut organizations = OrganizationServiceClient::new(self.internal.clone());
        let created = organizations
            .create_organization(CreateOrganizationRequest {
                organization: Some(Organization {
                    display_name: "Race".into(),
                    ..Default::default()
                }),
                owner_email: email(),
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let org = created.organization.unwrap().name;
        let owner = created.owner.unwrap().name;
        self.activate(&owner).await;
        let token = self.minter.token(&owner, Claimed::Administrator, true);
        (org, owner, self.signed(&token))
    }

    /// Accepts `name`'s invite the way the auth service does.
    async fn activate(&self, name: &str) {
        AdminInternalServiceClient::new(self.internal.clone())
            .activate_administrator(ActivateAdministratorRequest { name: name.to_string() })
            .await
            .unwrap();
    }

    /// `by` invites an administrator, which accepts at once (unless `activate` is false);
    /// answers its name and its clients.
    async fn member(
        &self,
        by: &Steward,
        org: &str,
        role: Role,
        billing: bool,
        activate: bool,
    ) -> (String, [Steward; 2]) {
        let created = by
            .admin()
            .create_administrator(CreateAdministratorRequest {
                parent: org.to_string(),
                administrator: Some(Administrator {
                    email: email(),
                    role: role as i32,
                    billing,
                    ..Default::default()
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .administrator
            .unwrap();
        if activate {
            self.activate(&created.name).await;
        }
        let claimed = match role {
            Role::Administrator => Claimed::Administrator,
            Role::CommandRunner => Claimed::CommandRunner,
            Role::Manager => Claimed::Manager,
            Role::HelpDesk => Claimed::HelpDesk,
            _ => Claimed::ReadOnly,
        };
        let token = self.minter.token(&created.name, claimed, billing);
        (created.name, self.signed(&token))
    }
}

/// A replica at random, for the calls between the races (so both carry the same load).
fn any_replica() -> usize {
    usize::from(rand::thread_rng().gen_bool(0.5))
}

fn email() -> String {
    format!("race-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// When a call was sent and when its answer came, as the test saw it.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: Instant,
    end: Instant,
}

impl Span {
    /// Both calls were outstanding at some instant.
    fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// The longest head start of the safeguard races.
const HEAD_START: Duration = Duration::from_millis(2);

/// A random head start: which of the two calls waits, and for how long (0 to `max`).
fn head_start(max: Duration) -> [Duration; 2] {
    let mut rng = rand::thread_rng();
    let wait = max.mul_f64(rng.gen_range(0.0..=1.0));
    if rng.gen_bool(0.5) {
        [wait, Duration::ZERO]
    } else {
        [Duration::ZERO, wait]
    }
}

async fn released<F: Future>(barrier: &Barrier, wait: Duration, call: F) -> (F::Output, Span) {
    barrier.wait().await;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let start = Instant::now();
    let output = call.await;
    (output, Span { start, end: Instant::now() })
}

/// Runs `a` and `b` released together, one after a random head start (up to `max`) of the
/// other.
async fn together<A: Future, B: Future>(
    max: Duration,
    a: A,
    b: B,
) -> ((A::Output, Span), (B::Output, Span)) {
    let [wait_a, wait_b] = head_start(max);
    let barrier = Barrier::new(2);
    tokio::join!(released(&barrier, wait_a, a), released(&barrier, wait_b, b))
}

/// A refusal as the model predicts it: the code and its reasons (every violated rule of a
/// failed precondition, else the `ErrorInfo` reason).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Refused(Code, Vec<String>),
}

impl Outcome {
    fn of<T>(result: &Result<T, Status>) -> Self {
        let Err(status) = result else { return Self::Done };
        let details = status.get_error_details();
        let mut reasons: Vec<String> = details
            .precondition_failure()
            .map(|f| f.violations.iter().map(|v| v.r#type.clone()).collect())
            .unwrap_or_default();
        if reasons.is_empty() {
            reasons.extend(details.error_info().map(|i| i.reason.clone()));
        }
        Self::Refused(status.code(), reasons)
    }

    fn refused(code: Code, reasons: &[&str]) -> Self {
        Self::Refused(code, reasons.iter().map(|r| r.to_string()).collect())
    }
}

/// What a call does to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// BatchDeleteAdministrators of the target alone.
    Delete,
    /// UpdateAdministrator: role Read Only.
    Demote,
    /// UpdateAdministrator: billing off.
    Unbill,
    /// UpdateAdministrator: role Read Only and billing off in one call.
    DemoteUnbill,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Delete, Kind::Demote, Kind::Unbill, Kind::DemoteUnbill];

    /// (takes an Administrator away, takes a billing administrator away).
    fn removes(self) -> (bool, bool) {
        match self {
            Kind::Delete | Kind::DemoteUnbill => (true, true),
            Kind::Demote => (true, false),
            Kind::Unbill => (false, true),
        }
    }
}

/// Who calls: one of the two contenders, or the organization's service account (Administrator
/// role, no billing; never counted by the safeguards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Actor {
    Contender(usize),
    Account,
}

#[derive(Clone, Copy, Debug)]
struct Op {
    by: Actor,
    kind: Kind,
    target: usize,
}

/// What a contender holds: activated Administrator, billing access (`None`: deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    administrator: bool,
    billing: bool,
}

type Model = [Option<Held>; 2];

const WHOLE: Held = Held { administrator: true, billing: true };

/// The answer and the resulting state of `op` applied alone to `state`, as the admin service
/// documents it: the caller is re-checked first, then the target, then the safeguards.
fn apply(op: Op, state: Model) -> (Outcome, Model) {
    if let Actor::Contender(caller) = op.by {
        match state[caller] {
            None => return (Outcome::refused(Code::PermissionDenied, &["CALLER_DELETED"]), state),
            Some(held) if !held.administrator => {
                return (Outcome::refused(Code::PermissionDenied, &["ROLE_REQUIRED"]), state)
            }
            Some(_) => {}
        }
    }
    let Some(target) = state[op.target] else {
        return (Outcome::refused(Code::NotFound, &[]), state);
    };
    let mut next = state;
    next[op.target] = match op.kind {
        Kind::Delete => None,
        Kind::Demote => Some(Held { administrator: false, ..target }),
        Kind::Unbill => Some(Held { billing: false, ..target }),
        Kind::DemoteUnbill => Some(Held { administrator: false, billing: false }),
    };
    if next == state {
        return (Outcome::Done, state);
    }
    let count = |s: &Model, f: fn(&Held) -> bool| s.iter().flatten().filter(|h| f(h)).count();
    let mut broken = Vec::new();
    if op.kind == Kind::Delete && op.by == Actor::Contender(op.target) {
        broken.push("SELF_DELETE");
    }
    if count(&state, |h| h.administrator) > 0 && count(&next, |h| h.administrator) == 0 {
        broken.push("LAST_ADMINISTRATOR");
    }
    if count(&state, |h| h.billing) > 0 && count(&next, |h| h.billing) == 0 {
        broken.push("LAST_BILLING_ADMINISTRATOR");
    }
    if broken.is_empty() {
        (Outcome::Done, next)
    } else {
        (Outcome::refused(Code::FailedPrecondition, &broken), state)
    }
}

/// The orders (`[first, second]` by op index) in which applying both ops one after the other
/// gives exactly the observed answers and final state.
fn explanations(ops: [Op; 2], observed: &[Outcome; 2], after: Model) -> Vec<[usize; 2]> {
    let mut orders = Vec::new();
    for order in [[0, 1], [1, 0]] {
        let mut state = [Some(WHOLE); 2];
        let mut answers = [Outcome::Done, Outcome::Done];
        for i in order {
            let (answer, next) = apply(ops[i], state);
            answers[i] = answer;
            state = next;
        }
        if &answers == observed && state == after {
            orders.push(order);
        }
    }
    orders
}

/// Every pair (an op on contender 0, an op on contender 1) that together could leave no
/// Administrator or no billing administrator, by every caller: the other contender, the service
/// account, or the target itself (a self-deletion, always refused, among them).
fn combinations() -> Vec<[Op; 2]> {
    let actors =
        |target: usize| [Actor::Contender(1 - target), Actor::Account, Actor::Contender(target)];
    let mut all = Vec::new();
    for k0 in Kind::ALL {
        for k1 in Kind::ALL {
            let (a0, b0) = k0.removes();
            let (a1, b1) = k1.removes();
            if !((a0 && a1) || (b0 && b1)) {
                continue;
            }
            for by0 in actors(0) {
                for by1 in actors(1) {
                    all.push([
                        Op { by: by0, kind: k0, target: 0 },
                        Op { by: by1, kind: k1, target: 1 },
                    ]);
                }
            }
        }
    }
    all
}

/// One organization of the safeguard races.
struct RaceOrg {
    org: String,
    /// The two contenders' names and clients (on both replicas).
    contenders: [(String, [Steward; 2]); 2],
    /// The service account (Administrator role), on both replicas.
    account: [Steward; 2],
}

async fn perform(client: &Steward, org: &str, op: Op, target: &str) -> Result<(), Status> {
    let (role, billing) = match op.kind {
        Kind::Delete => {
            let request = BatchDeleteAdministratorsRequest {
                parent: org.to_string(),
                names: vec![target.to_string()],
                validate_only: false,
            };
            return client.admin().batch_delete_administrators(request).await.map(|_| ());
        }
        Kind::Demote => (Some(Role::ReadOnly), None),
        Kind::Unbill => (None, Some(false)),
        Kind::DemoteUnbill => (Some(Role::ReadOnly), Some(false)),
    };
    update(client, target, role, billing).await
}

async fn update(
    client: &Steward,
    target: &str,
    role: Option<Role>,
    billing: Option<bool>,
) -> Result<(), Status> {
    let mut paths = Vec::new();
    if role.is_some() {
        paths.push("role".to_string());
    }
    if billing.is_some() {
        paths.push("billing".to_string());
    }
    let request = UpdateAdministratorRequest {
        administrator: Some(Administrator {
            name: target.to_string(),
            role: role.map_or(0, |r| r as i32),
            billing: billing.unwrap_or(false),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths }),
    };
    client.admin().update_administrator(request).await.map(|_| ())
}

/// Every administrator of the organization.
async fn administrators(client: &Steward, org: &str) -> Vec<Administrator> {
    let request =
        ListAdministratorsRequest { parent: org.to_string(), page_size: 100, ..Default::default() };
    client.admin().list_administrators(request).await.unwrap().into_inner().administrators
}

/// Sets up an organization for the safeguard races.
async fn race_org(replicas: &Replicas) -> RaceOrg {
    let (org, owner, owner_clients) = replicas.organization().await;
    let by = &owner_clients[0];
    // Around the two contenders: roles and accounts the safeguards never count.
    for role in [Role::Manager, Role::ReadOnly, Role::CommandRunner] {
        replicas.member(by, &org, role, false, true).await;
    }
    replicas.member(by, &org, Role::Administrator, true, false).await;
    let account = crate::service_accounts::create_account(by, &org, "roles/administrator", false)
        .await
        .unwrap();
    let expiry = replicas.minter.clock.now() + chrono::Duration::days(30);
    let request = CreateServiceAccountKeyRequest {
        parent: account.name.clone(),
        key: Some(ServiceAccountKey {
            expire_time: Some(prost_types::Timestamp { seconds: expiry.timestamp(), nanos: 0 }),
            ..Default::default()
        }),
    };
    let created = by.service_accounts().create_service_account_key(request).await.unwrap();
    let key = created.into_inner().api_key;
    let tokens = replicas.clients[0]
        .auth()
        .exchange_api_key(ExchangeApiKeyRequest { api_key: key })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let account = replicas.signed(&tokens.access_token);
    let second = replicas.member(by, &org, Role::Administrator, true, true).await;
    RaceOrg { org, contenders: [(owner, owner_clients), second], account }
}

/// What one organization's rounds saw.
#[derive(Default, Debug)]
struct Tally {
    rounds: usize,
    /// Both calls outstanding at once.
    overlapped: usize,
    /// Only one order explains the round: the first replica's call took effect first, or the
    /// second's.
    first: [usize; 2],
    /// Refusals by code and reasons.
    refusals: std::collections::BTreeMap<String, usize>,
}

/// Restores both contenders to activated Administrators with billing (`state` is what the
/// round left), recreating a deleted one; a contender that is an Administrator with billing
/// does it, after promoting the billing holder when the round split the two.
async fn restore(replicas: &Replicas, race: &mut RaceOrg, mut state: Model) {
    let restorer = match state.iter().position(|h| *h == Some(WHOLE)) {
        Some(i) => i,
        None => {
            let admin = state.iter().position(|h| h.is_some_and(|h| h.administrator)).unwrap();
            let billing = state.iter().position(|h| h.is_some_and(|h| h.billing)).unwrap();
            let client = &race.contenders[admin].1[any_replica()];
            update(client, &race.contenders[billing].0, Some(Role::Administrator), None)
                .await
                .unwrap();
            state[billing] = Some(WHOLE);
            billing
        }
    };
    let other = 1 - restorer;
    let client = race.contenders[restorer].1[any_replica()].clone();
    match state[other] {
        None => {
            race.contenders[other] =
                replicas.member(&client, &race.org, Role::Administrator, true, true).await;
        }
        Some(held) if held != WHOLE => {
            let name = race.contenders[other].0.clone();
            update(&client, &name, Some(Role::Administrator), Some(true)).await.unwrap();
        }
        Some(_) => {}
    }
}

/// Rounds of the safeguard races on one organization; panics on the first violation.
async fn safeguard_rounds(replicas: &Replicas, index: usize, rounds: usize) -> Tally {
    let combinations = combinations();
    let mut race = race_org(replicas).await;
    let mut tally = Tally::default();
    for round in 0..rounds {
        let ops = combinations[(index * rounds + round) % combinations.len()];
        // Which replica carries which call changes at random too.
        let swap = rand::thread_rng().gen_bool(0.5);
        let replica = |i: usize| usize::from((i == 1) != swap);
        let call = |i: usize| {
            let op = ops[i];
            let client = match op.by {
                Actor::Contender(c) => race.contenders[c].1[replica(i)].clone(),
                Actor::Account => race.account[replica(i)].clone(),
            };
            let (org, target) = (race.org.clone(), race.contenders[op.target].0.clone());
            async move { perform(&client, &org, op, &target).await }
        };
        let ((r0, s0), (r1, s1)) = together(HEAD_START, call(0), call(1)).await;
        let observed = [Outcome::of(&r0), Outcome::of(&r1)];
        let everyone = administrators(&race.account[any_replica()], &race.org).await;
        let active: Vec<&Administrator> =
            everyone.iter().filter(|a| a.state == AdminState::Active as i32).collect();
        let context =
            format!("round {round} of {}: {ops:?} (swap {swap}): {r0:?} / {r1:?}", race.org);
        assert!(
            active.iter().any(|a| a.role == Role::Administrator as i32),
            "VIOLATION: no activated Administrator left; {context}"
        );
        assert!(
            active.iter().any(|a| a.billing),
            "VIOLATION: no activated billing administrator left; {context}"
        );
        let after: Model = [0, 1].map(|i| {
            everyone.iter().find(|a| a.name == race.contenders[i].0).map(|a| Held {
                administrator: a.role == Role::Administrator as i32,
                billing: a.billing,
            })
        });
        let alone_succeeds = ops.iter().any(|op| apply(*op, [Some(WHOLE); 2]).0 == Outcome::Done);
        assert!(
            !alone_succeeds || observed.contains(&Outcome::Done),
            "neither call succeeded; {context}"
        );
        let orders = explanations(ops, &observed, after);
        assert!(
            !orders.is_empty(),
            "no serial order of the two calls gives these answers and {after:?}; {context}"
        );
        tally.rounds += 1;
        tally.overlapped += usize::from(s0.overlaps(&s1));
        if let [[first, _]] = orders.as_slice() {
            tally.first[replica(*first)] += 1;
        }
        for outcome in &observed {
            if let Outcome::Refused(code, reasons) = outcome {
                *tally.refusals.entry(format!("{code:?} {}", reasons.join("+"))).or_default() += 1;
            }
        }
        restore(replicas, &mut race, after).await;
    }
    tally
}

async fn safeguard_races(stack: Stack) {
    let mut stack = stack;
    let replicas = Replicas::start(&mut stack).await;
    let (orgs, rounds) = scale(stack.backend, (20, 50));
    let started = Instant::now();
    let tallies = join_all((0..orgs).map(|i| safeguard_rounds(&replicas, i, rounds))).await;
    let mut total = Tally::default();
    for tally in tallies {
        total.rounds += tally.rounds;
        total.overlapped += tally.overlapped;
        total.first[0] += tally.first[0];
        total.first[1] += tally.first[1];
        for (k, v) in tally.refusals {
            *total.refusals.entry(k).or_default() += v;
        }
    }
    eprintln!(
        "{:?}: {} rounds in {:?} over {} combinations; both calls in flight at once in {}; \
         first to take effect: replica 1 in {}, replica 2 in {}; refusals: {:?}",
        stack.backend,
        total.rounds,
        started.elapsed(),
        combinations().len(),
        total.overlapped,
        total.first[0],
        total.first[1],
        total.refusals
    );
    assert_eq!(total.rounds, orgs * rounds);
    // Both orders happened (the head starts make either replica win).
    assert!(total.first[0] > 0 && total.first[1] > 0, "{total:?}");
}

// The last-Administrator and last-billing-administrator safeguards under concurrent removals
// from two replicas: 20 organizations x 50 rounds on PostgreSQL.
backend_test!(
    racing_removals_keep_an_administrator_and_a_billing_administrator,
    start = |backend| small_pools(backend),
    |stack| safeguard_races(stack)
);

/// The names of `runner`'s runs, read straight from the commands service's database.
async fn runs_of(db: &DatabaseConnection, runner: &str) -> BTreeSet<String> {
    let sql = format!("SELECT name FROM commands_runs WHERE runner = '{runner}'");
    let rows = db.query_all(Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
    rows.iter().map(|row| row.try_get_by_index::<String>(0).unwrap()).collect()
}

/// One organization of the grant races: its owner, a system and a command on it.
struct GrantOrg {
    org: String,
    owner: [Steward; 2],
    command: String,
}

async fn grant_org(stack: &Stack, replicas: &Replicas) -> GrantOrg {
    let (org, owner, clients) = replicas.organization().await;
    let owner_view = Owner {
        org: org.clone(),
        admin: owner,
        email: String::new(),
        client: clients[0].clone(),
        tokens: TokenSet::default(),
    };
    let (system, _) = crate::commands::register(stack, &owner_view, "race-host").await;
    let command = crate::commands::create_command(&owner_view, "disk", &[&system]).await;
    GrantOrg { org, owner: clients, command: command.name }
}

/// How a round takes the runner's grant away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revoke {
    /// CommandService.DeleteGrant.
    DeleteGrant,
    /// The runner demoted to Read Only (through the admin service, which has the commands
    /// service remove its grants).
    Demote,
    /// The runner deleted (likewise).
    DeleteRunner,
}

#[derive(Default, Debug)]
struct GrantTally {
    rounds: usize,
    overlapped: usize,
    ran: usize,
    refused: usize,
    /// RunCommand sent after the revoke had returned.
    started_after: usize,
}

/// Rounds of the grant races on one organization; panics on the first violation.
async fn grant_rounds(
    stack: &Stack,
    replicas: &Replicas,
    db: &DatabaseConnection,
    revokes: &[Revoke],
    rounds: usize,
) -> GrantTally {
    let g = grant_org(stack, replicas).await;
    let mut tally = GrantTally::default();
    let mut runner = None;
    // A revoke takes longer than 2 ms (a DeleteGrant asks the admin service about its caller,
    // a demotion waits for the grants' removal): head starts up to the last revoke's duration
    // put the run's start anywhere in the revoke, and sometimes after it.
    let mut longest = HEAD_START;
    for round in 0..rounds {
        let revoke = revokes[round % revokes.len()];
        // DeleteGrant rounds keep one runner; the others need a new one each round.
        if runner.is_none() || revoke != Revoke::DeleteGrant {
            runner = Some(
                replicas
                    .member(&g.owner[any_replica()], &g.org, Role::CommandRunner, false, true)
                    .await,
            );
        }
        let (name, clients) = runner.clone().unwrap();
        let request = CreateGrantRequest {
            parent: g.command.clone(),
            grant: Some(Grant { grantee: name.clone(), ..Default::default() }),
            request_id: String::new(),
        };
        // On a loaded machine the grantee check can outlast the caller lease twice; the
        // server then answers UNAVAILABLE without recording the grant, and a client retries.
        let mut attempts = 0;
        let created = loop {
            attempts += 1;
            match g.owner[any_replica()].commands().create_grant(request.clone()).await {
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && status.message().contains("could not be checked in time")
                        && attempts < 5 => {}
                result => break result.unwrap(),
            }
        };
        let granted = created.into_inner().grant.unwrap();
        let swap = rand::thread_rng().gen_bool(0.5);
        let (revoker, run_on) = if swap { (1, 0) } else { (0, 1) };
        let revoking = async {
            let owner = &g.owner[revoker];
            let result = match revoke {
                Revoke::DeleteGrant => owner
                    .commands()
                    .delete_grant(DeleteGrantRequest { name: granted.name.clone() })
                    .await
                    .map(|_| ()),
                Revoke::Demote => update(owner, &name, Some(Role::ReadOnly), None).await,
                Revoke::DeleteRunner => {
                    let request = BatchDeleteAdministratorsRequest {
                        parent: g.org.clone(),
                        names: vec![name.clone()],
                        validate_only: false,
                    };
                    owner.admin().batch_delete_administrators(request).await.map(|_| ())
                }
            };
            let returned = Instant::now();
            let returned_clock = stack.clock.now();
            let seen = runs_of(db, &name).await;
            (result, returned, returned_clock, seen)
        };
        let running = crate::commands::run(&clients[run_on], &g.command, &[]);
        let (((revoked, returned, returned_clock, seen), revoke_span), (ran, run_span)) =
            together(longest, revoking, running).await;
        longest = HEAD_START.max(revoke_span.end - revoke_span.start);
        let context = format!("round {round} of {} ({revoke:?}, swap {swap}): {ran:?}", g.org);
        revoked.unwrap_or_else(|e| panic!("the revoke failed: {e:?}; {context}"));
        let runs = runs_of(db, &name).await;
        let started_after = run_span.start > returned;
        let late: Vec<&String> = runs.difference(&seen).collect();
        // When RunCommand was sent, in ms after the revoke returned (negative: before).
        let sent_ms = if started_after {
            (run_span.start - returned).as_secs_f64() * 1e3
        } else {
            -(returned - run_span.start).as_secs_f64() * 1e3
        };
        assert!(
            late.is_empty(),
            "VIOLATION: {late:?} committed after the revoke had returned (RunCommand sent at \
             {sent_ms:+.2} ms); {context}"
        );
        match &ran {
            Ok(run) => {
                assert!(
                    !started_after,
                    "VIOLATION: a run started after the revoke returned was created; {context}"
                );
                assert!(runs.contains(&run.name), "{context}");
                let created = created_at(run);
                assert!(
                    created <= returned_clock,
                    "VIOLATION: run created at {created}, after the revoke returned at \
                     {returned_clock}; {context}"
                );
                tally.ran += 1;
            }
            Err(status) => {
                let expected: &[&str] = match revoke {
                    Revoke::DeleteGrant => &["NO_GRANT"],
                    // The grant may already be gone too, if the outbox was quick.
                    Revoke::Demote => &["ROLE_REQUIRED", "NO_GRANT"],
                    Revoke::DeleteRunner => &["CALLER_DELETED", "NO_GRANT"],
                };
                assert_eq!(status.code(), Code::PermissionDenied, "{context}");
                let reason = crate::harness::reason(status);
                assert!(expected.contains(&reason.as_str()), "{reason}; {context}");
                tally.refused += 1;
            }
        }
        tally.rounds += 1;
        tally.started_after += usize::from(started_after);
        tally.overlapped += usize::from(revoke_span.overlaps(&run_span));
    }
    tally
}

fn created_at(run: &Run) -> chrono::DateTime<chrono::Utc> {
    let t = run.create_time.unwrap();
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap()).unwrap()
}

async fn grant_races(stack: Stack, revokes: &[Revoke], postgres: (usize, usize)) {
    let mut stack = stack;
    let replicas = Replicas::start(&mut stack).await;
    let url = steward_server::database_url(stack.config(), ServiceKind::Commands).unwrap();
    let db = steward_storage::connect(&url, 2).await.unwrap();
    let (orgs, rounds) = scale(stack.backend, postgres);
    let started = Instant::now();
    let tallies =
        join_all((0..orgs).map(|_| grant_rounds(&stack, &replicas, &db, revokes, rounds))).await;
    let mut total = GrantTally::default();
    for t in tallies {
        total.rounds += t.rounds;
        total.overlapped += t.overlapped;
        total.ran += t.ran;
        total.refused += t.refused;
        total.started_after += t.started_after;
    }
    eprintln!(
        "{:?} {revokes:?}: {} rounds in {:?}; both calls in flight at once in {}; runs created \
         {}, refused {}; RunCommand sent after the revoke returned in {}",
        stack.backend,
        total.rounds,
        started.elapsed(),
        total.overlapped,
        total.ran,
        total.refused,
        total.started_after
    );
    assert_eq!(total.rounds, orgs * rounds);
    // Both outcomes happened: the races were real.
    assert!(total.ran > 0 && total.refused > 0, "{total:?}");
}

// DeleteGrant on one replica against the grantee's RunCommand on the other: 20 organizations x
// 50 rounds on PostgreSQL.
backend_test!(
    a_revoked_grant_is_never_used_by_a_later_run,
    start = |backend| small_pools(backend),
    |stack| grant_races(stack, &[Revoke::DeleteGrant], (20, 50))
);

// The runner demoted or deleted through the admin service (its grants go later, by the outbox)
// against its RunCommand, which asks the admin service about the caller.
backend_test!(
    a_demoted_or_deleted_runner_starts_no_later_run,
    start = |backend| small_pools(backend),
    |stack| grant_races(stack, &[Revoke::Demote, Revoke::DeleteRunner], (10, 20))
);
