//! Services killed with SIGKILL mid-flight: each service a real `steward-server` process (as
//! deployed), on a fresh PostgreSQL database or SQLite files, with file mail and a short outbox
//! lease. What was acknowledged before the kill holds after a restart, every invite is mailed
//! exactly once, runs in flight end in a definite state and real agents reconnect by themselves.
//!
//! Needs `steward-agent` built next to `steward-server` (`scripts/test.sh` builds both).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, CreateOrganizationRequest,
    ListAdministratorsRequest, Organization, Role,
};
use steward_proto::auth::v1::{
    sign_in_response, AcceptInviteRequest, RefreshSessionRequest, SignInRequest, TokenSet,
};
use steward_proto::client::Steward;
use steward_proto::commands::v1::{
    Command as StewardCommand, ConnectKey, CreateCommandRequest, CreateConnectKeyRequest,
    GetRunRequest, Interpreter, ListSystemsRequest, Run, RunCommandRequest, RunState,
};
use steward_storage::outbox::Outbox;
use steward_storage::testing::{Backend, TestDatabase, POSTGRES_ENV};

const PASSWORD: &str = "correct horse battery staple 42!";
/// The outbox lease of these deployments: a message claimed by a killed process is taken
/// again 4 s later (each delivery is abandoned after 2 s).
const LEASE_SECS: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Service {
    Auth,
    Admin,
    Commands,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Admin => "admin",
            Self::Commands => "commands",
        }
    }
}

fn log_path(data: &Path, service: Service) -> PathBuf {
    data.join(format!("{}.log", service.name()))
}

/// The logs of the services of the deployment whose data directory is `data`.
fn logs(data: &Path) -> String {
    [Service::Auth, Service::Admin, Service::Commands]
        .into_iter()
        .map(|s| {
            let text = std::fs::read_to_string(log_path(data, s)).unwrap_or_default();
            format!("--- {} ---\n{text}", s.name())
        })
        .collect()
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// True when the PostgreSQL variant should run.
fn postgres() -> bool {
    let configured = std::env::var(POSTGRES_ENV).is_ok_and(|v| !v.is_empty());
    if !configured {
        assert!(
            std::env::var("STEWARD_TEST_REQUIRE_POSTGRES").map_or(true, |v| v != "1"),
            "{POSTGRES_ENV} is required"
        );
        eprintln!("skipping: {POSTGRES_ENV} not set");
    }
    configured
}

/// The three services as separate processes sharing one configuration file, each on its own
/// public and internal address, restartable on the same addresses.
struct Deployment {
    data: tempfile::TempDir,
    /// The PostgreSQL database (SQLite files live in `data`).
    database: Option<TestDatabase>,
    config: PathBuf,
    token: String,
    addrs: HashMap<Service, (String, String)>,
    running: HashMap<Service, Child>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Deployment {
    async fn start(backend: Backend, services: &[Service]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::create(Backend::Postgres).await.unwrap()),
        };
        let signing = steward_auth::keys::ensure_dev_signing_key(data.path()).unwrap();
        let mfa = steward_auth::sealed::ensure_dev_mfa_key(data.path()).unwrap();
        let addrs: HashMap<Service, (String, String)> =
            [Service::Auth, Service::Admin, Service::Commands]
                .into_iter()
                .map(|s| (s, (free_addr(), free_addr())))
                .collect();
        let url = database.as_ref().map(|d| format!("url = \"{}\"\n", d.url("all")));
        let config = data.path().join("steward.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\ndata_dir = \"{}\"\n{}\n\
                 [outbox]\nlease_secs = {LEASE_SECS}\n\n\
                 [[auth.signing_keys]]\nkid = \"{}\"\npath = \"{}\"\n\n\
                 [[auth.mfa_keys]]\nid = \"{}\"\npath = \"{}\"\n\n\
                 [internal]\nauth_url = \"http://{}\"\nadmin_url = \"http://{}\"\n\
                 commands_url = \"http://{}\"\n",
                data.path().display(),
                url.unwrap_or_default(),
                signing.kid,
                signing.path.display(),
                mfa.id,
                mfa.path.display(),
                addrs[&Service::Auth].1,
                addrs[&Service::Admin].1,
                addrs[&Service::Commands].1,
            ),
        )
        .unwrap();
        let mut deployment = Self {
            data,
            database,
            config,
            token: "a-test-service-credential-of-sufficient-length".into(),
            addrs,
            running: HashMap::new(),
        };
        for service in services {
            deployment.launch(*service).await;
        }
        deployment
    }

    /// Starts `service` and waits until it is SERVING.
    async fn launch(&mut self, service: Service) {
        let (public, internal) = self.addrs[&service].clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(service))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steward-server"))
            .arg(service.name())
            .env("STEWARD_CONFIG_FILE", &self.config)
            .env("STEWARD_INTERNAL__SERVICE_TOKEN", &self.token)
            .env("STEWARD_SERVER__LISTEN", &public)
            .env("STEWARD_SERVER__INTERNAL_LISTEN", &internal)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.running.insert(service, child);
        self.serving(service).await;
    }

    fn log_path(&self, service: Service) -> PathBuf {
        log_path(self.data.path(), service)
    }

    /// The services' logs, for failure messages.
    fn logs(&self) -> String {
        logs(self.data.path())
    }

    async fn serving(&self, service: Service) {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        let url = self.url(service);
        for _ in 0..600 {
            if let Ok(channel) =
                tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await
            {
                let mut health = HealthClient::new(channel);
                let reply = health.check(HealthCheckRequest { service: String::new() }).await;
                if reply.is_ok_and(|r| r.into_inner().status == 1) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} never became SERVING\n{}", service.name(), self.logs());
    }

    fn url(&self, service: Service) -> String {
        format!("http://{}", self.addrs[&service].0)
    }

    fn pid(&self, service: Service) -> String {
        self.running[&service].id().to_string()
    }

    /// Sends `signal` (`STOP`, `CONT`) to `service`.
    fn signal(&self, service: Service, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid(service)])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", service.name());
    }

    /// Kills `service` with SIGKILL (what `Child::kill` sends on Unix) and reaps it.
    fn kill(&mut self, service: Service) {
        let mut child = self.running.remove(&service).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn mail_dir(&self) -> PathBuf {
        self.data.path().join("mail")
    }

    /// A connection to `service`'s database, as the service opens it.
    async fn db(&self, service: Service) -> DatabaseConnection {
        let url = match &self.database {
            Some(database) => database.url("all"),
            None => steward_storage::sqlite_url(self.data.path(), service.name()).unwrap(),
        };
        steward_storage::connect(&url, 1).await.unwrap()
    }

    async fn pending(&self, service: Service, table: &'static str) -> i64 {
        let db = self.db(service).await;
        let pending = Outbox::new(table).pending(&db).await.unwrap();
        let _ = db.close().await;
        pending
    }

    /// Waits (up to 60 s) until the admin and mail outboxes are empty.
    async fn invites_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let admin = self.pending(Service::Admin, "admin_outbox").await;
            let mail = self.pending(Service::Auth, "auth_mail_outbox").await;
            if admin == 0 && mail == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still queued: {admin} effects, {mail} mails\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn client(&self, service: Service) -> Steward {
        Steward::connect(self.url(service)).await.unwrap()
    }

    /// Creates an organization through the internal listener and signs its owner in.
    async fn owner(&self) -> Owner {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.addrs[&Service::Admin].1
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        let credential = steward_runtime::authn::ServiceCredential::new(&self.token).unwrap();
        let email = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
        let org = OrganizationServiceClient::with_interceptor(channel, credential)
            .create_organization(CreateOrganizationRequest {
                organization: Some(Organization {
                    display_name: "Initech".into(),
                    ..Default::default()
                }),
                owner_email: email.clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .organization
            .unwrap()
            .name;
        let tokens = self.accept_and_sign_in(&email).await;
        let admin = self.client(Service::Admin).await.with_token(&tokens.access_token).unwrap();
        Owner { org, email, tokens, admin }
    }

    /// The link token mailed to `email`, waiting up to 30 s for it.
    async fn invite_token(&self, email: &str) -> String {
        for _ in 0..300 {
            if let Some(token) = steward_server::newest_token_for(&self.mail_dir(), email) {
                return token;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no invite for {email}\n{}", self.logs());
    }

    async fn accept_and_sign_in(&self, email: &str) -> TokenSet {
        let token = self.invite_token(email).await;
        let auth = self.client(Service::Auth).await;
        auth.auth()
            .accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() })
            .await
            .unwrap();
        sign_in(&auth, email).await.unwrap()
    }
}

struct Owner {
    org: String,
    email: String,
    tokens: TokenSet,
    /// The admin service, signed in as the owner.
    admin: Steward,
}

async fn sign_in(auth: &Steward, email: &str) -> Result<TokenSet, tonic::Status> {
    let reply = auth
        .auth()
        .sign_in(SignInRequest {
            email: email.into(),
            password: PASSWORD.into(),
            organization: String::new(),
        })
        .await?
        .into_inner();
    match reply.result {
        Some(sign_in_response::Result::Tokens(tokens)) => Ok(tokens),
        other => panic!("expected tokens, got {other:?}"),
    }
}

/// Creates `count` Command Runners at once; returns their emails (every one acknowledged).
async fn create_administrators(owner: &Owner, count: usize) -> Vec<String> {
    let mut calls = tokio::task::JoinSet::new();
    let mut emails = Vec::new();
    for _ in 0..count {
        let email = format!("invitee-{}@example.com", uuid::Uuid::new_v4().simple());
        emails.push(email.clone());
        let (admin, parent) = (owner.admin.clone(), owner.org.clone());
        calls.spawn(async move {
            admin
                .admin()
                .create_administrator(CreateAdministratorRequest {
                    parent,
                    administrator: Some(Administrator {
                        email,
                        role: Role::CommandRunner as i32,
                        ..Default::default()
                    }),
                    request_id: uuid::Uuid::new_v4().to_string(),
                })
                .await
        });
    }
    while let Some(created) = calls.join_next().await {
        created.unwrap().expect("acknowledged");
    }
    emails
}

/// Every administrator's email in the owner's organization.
async fn administrators(owner: &Owner) -> HashSet<String> {
    let mut emails = HashSet::new();
    let mut page_token = String::new();
    loop {
        let page = owner
            .admin
            .admin()
            .list_administrators(ListAdministratorsRequest {
                parent: owner.org.clone(),
                page_size: 100,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        emails.extend(page.administrators.into_iter().map(|a| a.email));
        if page.next_page_token.is_empty() {
            return emails;
        }
        page_token = page.next_page_token;
    }
}

/// How many dev mail files are addressed to each recipient.
fn mails_per_recipient(dir: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        if let Some(to) = text.lines().find_map(|l| l.strip_prefix("To: ")) {
            *counts.entry(to.trim().to_string()).or_default() += 1;
        }
    }
    counts
}

/// Asserts that each of `emails` was mailed exactly once.
fn mailed_once(deployment: &Deployment, emails: &[String]) {
    let mails = mails_per_recipient(&deployment.mail_dir());
    let wrong: Vec<_> =
        emails.iter().filter(|e| mails.get(*e) != Some(&1)).map(|e| (e, mails.get(e))).collect();
    assert!(wrong.is_empty(), "not mailed exactly once: {wrong:?}\n{}", deployment.logs());
}

macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if super::postgres() {
                    super::$name(Backend::Postgres).await;
                }
            }
        }
    };
}

// The admin service is killed while it relays invites, after auth did the work of a delivery
// whose answer admin never read: auth hangs (SIGSTOP) so the relay is inside a delivery, with
// more invites queued behind it; admin is frozen, auth resumes and answers into admin's unread
// socket, then admin is killed. After a restart every acknowledged administrator exists and
// every invitee gets exactly one invite (the repeated delivery is recognised by its
// idempotency key; the claims the dead relay left are taken again after the lease).
async fn admin_killed_mid_delivery(backend: Backend) {
    let mut deployment = Deployment::start(backend, &[Service::Auth, Service::Admin]).await;
    let owner = deployment.owner().await;
    let mut invited = create_administrators(&owner, 20).await;
    deployment.signal(Service::Auth, "STOP");
    invited.extend(create_administrators(&owner, 20).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    deployment.signal(Service::Admin, "STOP");
    deployment.signal(Service::Auth, "CONT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    deployment.kill(Service::Admin);
    let queued = deployment.pending(Service::Admin, "admin_outbox").await;
    assert!(queued > 0, "admin was killed with invites still to relay");

    deployment.launch(Service::Admin).await;
    deployment.invites_drained().await;
    let existing = administrators(&owner).await;
    let missing: Vec<_> = invited.iter().filter(|e| !existing.contains(*e)).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    invited.push(owner.email.clone());
    mailed_once(&deployment, &invited);
}
on_both_backends!(admin_killed_mid_delivery);

/// The recipients of the mails queued in `auth_mail_outbox`.
async fn queued_mail(db: &DatabaseConnection) -> HashSet<String> {
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT payload FROM auth_mail_outbox",
        ))
        .await
        .unwrap();
    rows.into_iter()
        .filter_map(|row| row.try_get::<String>("", "payload").ok())
        .filter_map(|payload| serde_json::from_str::<serde_json::Value>(&payload).ok())
        .filter_map(|payload| payload["email"].as_str().map(str::to_string))
        .collect()
}

/// Kills auth while its mail relay works. It stops auth again and again (SIGSTOP) until it
/// finds it between writing a mail and removing the mail's outbox row, and kills it there: the
/// moment a restarted relay would mail again. Returns whether that moment was found before
/// every one of `invited` was mailed (auth is killed either way).
async fn kill_auth_between_a_mail_and_its_row(
    deployment: &mut Deployment,
    invited: &[String],
) -> bool {
    let db = deployment.db(Service::Auth).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tries = 0;
    let caught = loop {
        tries += 1;
        deployment.signal(Service::Auth, "STOP");
        let queued = queued_mail(&db).await;
        let mailed = mails_per_recipient(&deployment.mail_dir());
        if queued.iter().any(|email| mailed.contains_key(email)) {
            break true;
        }
        let all_mailed = invited.iter().all(|email| mailed.contains_key(email));
        if (queued.is_empty() && all_mailed) || Instant::now() > deadline {
            break false;
        }
        deployment.signal(Service::Auth, "CONT");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    deployment.kill(Service::Auth);
    let _ = db.close().await;
    eprintln!("auth stopped {tries} times; killed between a mail and its row: {caught}");
    caught
}

// The auth service is killed while invites are mailed, invites accepted and administrators
// signed in. After a restart, every result acknowledged before the kill holds: sessions
// refresh, accepted invites stay accepted (their passwords sign in), and every invitee has
// exactly one invite, including the one whose mail was written just before the kill.
async fn auth_killed_mid_run(backend: Backend) {
    let mut deployment = Deployment::start(backend, &[Service::Auth, Service::Admin]).await;
    let owner = deployment.owner().await;
    let auth = deployment.client(Service::Auth).await;
    // Before: members with sessions, and invitees who will accept during the run.
    let members = create_administrators(&owner, 3).await;
    let mut sessions = vec![owner.tokens.refresh_token.clone()];
    for email in &members {
        sessions.push(deployment.accept_and_sign_in(email).await.refresh_token);
    }
    let accepting = create_administrators(&owner, 3).await;
    let mut links = Vec::new();
    for email in &accepting {
        links.push((email.clone(), deployment.invite_token(email).await));
    }

    // In flight when auth dies: invites being mailed, acceptances and sign-ins.
    let mut calls = tokio::task::JoinSet::new();
    for (email, token) in links {
        let auth = auth.clone();
        calls.spawn(async move {
            let accepted = auth
                .auth()
                .accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() })
                .await;
            (email, "accepted", accepted.is_ok().then(String::new))
        });
    }
    for email in members.iter().cycle().take(9).cloned() {
        let auth = auth.clone();
        calls.spawn(async move {
            let session = sign_in(&auth, &email).await.ok().map(|t| t.refresh_token);
            (email, "signed in", session)
        });
    }
    let invited = create_administrators(&owner, 30).await;
    kill_auth_between_a_mail_and_its_row(&mut deployment, &invited).await;
    let mut accepted = Vec::new();
    while let Some(outcome) = calls.join_next().await {
        match outcome.unwrap() {
            (email, "accepted", Some(_)) => accepted.push(email),
            (_, "signed in", Some(session)) => sessions.push(session),
            _ => {}
        }
    }

    deployment.launch(Service::Auth).await;
    deployment.invites_drained().await;
    let auth = deployment.client(Service::Auth).await;
    for refresh_token in sessions {
        auth.auth()
            .refresh_session(RefreshSessionRequest { refresh_token })
            .await
            .expect("a session acknowledged before the kill still refreshes");
    }
    for email in &accepted {
        sign_in(&auth, email).await.expect("an accepted invite stays accepted");
    }
    let everyone: Vec<String> = [vec![owner.email.clone()], members, accepting, invited].concat();
    mailed_once(&deployment, &everyone);
}
on_both_backends!(auth_killed_mid_run);

/// A real `steward-agent` process; killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(server: &str, key: &str, state: &Path, log: &Path) -> Agent {
    let binary = Path::new(env!("CARGO_BIN_EXE_steward-server")).with_file_name("steward-agent");
    assert!(binary.exists(), "build the agent first: cargo build -p steward-agent");
    let child = Command::new(binary)
        .args(["--server", server, "--connect-key", key, "--state-dir"])
        .arg(state)
        .args(["--hostname", &format!("host-{}", uuid::Uuid::new_v4().simple())])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Agent(child)
}

/// Waits (up to 30 s) until `count` systems are connected; returns their names.
async fn connected(
    commands: &Steward,
    org: &str,
    count: usize,
    logs: &dyn Fn() -> String,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let systems = commands
            .systems()
            .list_systems(ListSystemsRequest {
                parent: org.into(),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .map(|r| r.into_inner().systems)
            .unwrap_or_default();
        let up: Vec<String> =
            systems.iter().filter(|s| s.connected).map(|s| s.name.clone()).collect();
        if up.len() == count {
            return up;
        }
        assert!(Instant::now() < deadline, "connected: {up:?} of {systems:?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_of(commands: &Steward, org: &str, systems: &[String], script: &str) -> String {
    let command = commands
        .commands()
        .create_command(CreateCommandRequest {
            parent: org.into(),
            command: Some(StewardCommand {
                display_name: format!("faults {}", uuid::Uuid::new_v4().simple()),
                script: script.into(),
                interpreter: Interpreter::Sh as i32,
                // Far beyond the test: the service's own limit (timeout + 60 s) never ends it.
                timeout: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                target_systems: systems.to_vec(),
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
            command_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .command
        .unwrap()
        .name;
    commands
        .commands()
        .run_command(RunCommandRequest {
            command,
            systems: vec![],
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
        .name
}

/// Polls `run` (up to `limit`) until `done` holds.
async fn wait_run(
    commands: &Steward,
    run: &str,
    limit: Duration,
    done: impl Fn(&Run) -> bool,
    logs: &dyn Fn() -> String,
) -> Run {
    let deadline = Instant::now() + limit;
    loop {
        let current = commands
            .commands()
            .get_run(GetRunRequest { name: run.into(), ..Default::default() })
            .await;
        if let Ok(current) = current.map(|r| r.into_inner().run.unwrap()) {
            if done(&current) {
                return current;
            }
            assert!(Instant::now() < deadline, "{current:?}\n{}", logs());
        }
        assert!(Instant::now() < deadline, "{run} unreadable\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_in(run: &Run, state: RunState) -> bool {
    !run.results.is_empty() && run.results.iter().all(|r| r.state == state as i32)
}

// The commands service hangs (SIGSTOP) while three real agents run two commands, and is then
// killed: one run's scripts end while it hangs, so their reports reach a process that never
// reads them; the other's end after the restart. The agents reconnect by themselves (backoff
// with jitter) and both runs end SUCCEEDED within seconds, not at the service's own limit
// (the run's timeout plus 60 s), because an agent repeats the ends it reported on a stream that
// broke, and with them their output (written to the frozen process, it would be lost).
async fn commands_killed_while_agents_stream(backend: Backend) {
    const AGENTS: usize = 3;
    let mut deployment =
        Deployment::start(backend, &[Service::Auth, Service::Admin, Service::Commands]).await;
    let owner = deployment.owner().await;
    let commands =
        deployment.client(Service::Commands).await.with_token(&owner.tokens.access_token).unwrap();
    let key = commands
        .systems()
        .create_connect_key(CreateConnectKeyRequest {
            parent: owner.org.clone(),
            connect_key: Some(ConnectKey { display_name: "fleet".into(), ..Default::default() }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .connect_key
        .unwrap()
        .key;
    let states = tempfile::tempdir().unwrap();
    let log = |i: usize| states.path().join(format!("agent-{i}.log"));
    let _agents: Vec<Agent> = (0..AGENTS)
        .map(|i| {
            agent(
                &deployment.url(Service::Commands),
                &key,
                &states.path().join(i.to_string()),
                &log(i),
            )
        })
        .collect();
    let data = deployment.data.path().to_path_buf();
    let logs = || {
        let agents: String = (0..AGENTS)
            .map(|i| {
                format!(
                    "--- agent {i} ---\n{}",
                    std::fs::read_to_string(log(i)).unwrap_or_default()
                )
            })
            .collect();
        format!("{}{agents}", logs(&data))
    };
    let systems = connected(&commands, &owner.org, AGENTS, &logs).await;

    // The quick scripts print their last line only once the service is frozen (the test makes
    // `go` then), however long starting the runs took on a loaded machine.
    let go = states.path().join("go");
    let quick_script =
        format!("echo begun\nwhile [ ! -e '{}' ]; do sleep 0.1; done\necho quick\n", go.display());
    let quick = run_of(&commands, &owner.org, &systems, &quick_script).await;
    let slow = run_of(&commands, &owner.org, &systems, "sleep 10\necho slow\n").await;
    let limit = Duration::from_secs(30);
    for run in [&quick, &slow] {
        wait_run(&commands, run, limit, |r| all_in(r, RunState::Running), &logs).await;
    }
    deployment.signal(Service::Commands, "STOP");
    // The quick scripts end now; their output and reports go to a process that will never read
    // them.
    std::fs::write(&go, b"").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    deployment.kill(Service::Commands);
    deployment.launch(Service::Commands).await;

    let quick =
        wait_run(&commands, &quick, limit, |r| r.state != RunState::Running as i32, &logs).await;
    assert!(all_in(&quick, RunState::Succeeded), "{quick:?}\n{}", logs());
    assert_eq!(quick.state, RunState::Succeeded as i32, "{quick:?}");
    for result in &quick.results {
        // "quick" went to the frozen process only: the agents sent it again with the run's end.
        assert_eq!(result.stdout, b"begun\nquick\n", "output sent to the dead process arrives");
    }
    let slow =
        wait_run(&commands, &slow, limit, |r| r.state != RunState::Running as i32, &logs).await;
    assert!(all_in(&slow, RunState::Succeeded), "{slow:?}\n{}", logs());
    for result in &slow.results {
        assert_eq!(result.stdout, b"slow\n", "output produced after the restart arrives whole");
    }
    let again = connected(&commands, &owner.org, AGENTS, &logs).await;
    assert_eq!(again.iter().collect::<HashSet<_>>(), systems.iter().collect::<HashSet<_>>());
}
on_both_backends!(commands_killed_while_agents_stream);
