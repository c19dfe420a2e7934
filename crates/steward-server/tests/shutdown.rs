//! Graceful shutdown under load, with the real binary: two `steward-server dev` replicas on one
//! database (one SQLite file per service shared by both processes, or one PostgreSQL database),
//! a client balanced over both that takes a replica out once its health says NOT_SERVING or it
//! stops answering (as a load balancer or the Kubernetes endpoints controller does), and a mixed
//! load of reads and writes that retries `UNAVAILABLE` as the SDK does. SIGTERM to one replica
//! in the middle of it fails no call, and every acknowledged write is there exactly once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, GetProfileRequest, ListAdministratorsRequest, Role,
};
use steward_proto::auth::v1::AcceptInviteRequest;
use steward_proto::client::Steward;
use steward_proto::commands::v1::{
    ConnectKey, CreateConnectKeyRequest, ListCommandsRequest, ListConnectKeysRequest,
};
use steward_storage::testing::{Backend, TestDatabase};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

const PASSWORD: &str = "correct horse battery staple 42!";
const SERVICE_TOKEN: &str = "a-test-service-credential-of-sufficient-length";
/// Concurrent callers; each loops over four calls (two reads, two writes).
const WORKERS: usize = 6;

/// One `steward-server dev` process.
struct Replica {
    child: Child,
    /// The public listener.
    addr: String,
    /// `telemetry.metrics_listen`.
    metrics: String,
    /// The owner's set-password token, printed by the replica that created the organization.
    token: Option<String>,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Starts `dev` on `data` (the dev signing key, the mail folder and, on SQLite, the databases),
/// with `env`; waits for its banner.
fn start_replica(data: &Path, env: &[(&str, &str)], log: PathBuf) -> Replica {
    let metrics = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_steward-server"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("STEWARD_INTERNAL__SERVICE_TOKEN", SERVICE_TOKEN)
        .env("STEWARD_TELEMETRY__METRICS_LISTEN", &metrics)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut token = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("set-password?token=") {
            token = steward_server::extract_token(&line);
            break;
        }
        if line.contains("existing organization kept") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let addr = addr.unwrap_or_else(|| {
        panic!("dev printed no address; log:\n{}", std::fs::read_to_string(&log).unwrap())
    });
    Replica { child, addr, metrics, token, log }
}

/// Public calls the replica at `metrics` has answered so far (any status; peer calls between
/// its own services are not counted).
fn answered(metrics: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(metrics) else { return 0.0 };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("rpc_server_duration_milliseconds_count{"))
        .filter(|l| !l.contains("InternalService\"") && l.contains("rpc_service=\"steward."))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// What the load balancer in front of the replicas does: it polls each replica's readiness
/// (`grpc.health.v1`, service "") every 100 ms and takes it out of the client's channel once it
/// answers NOT_SERVING or does not answer.
fn balance(replicas: &[String]) -> (Channel, Vec<tokio::task::JoinHandle<()>>) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let (channel, changes) = Channel::balance_channel::<usize>(16);
    let mut watchers = Vec::new();
    for (key, addr) in replicas.iter().enumerate() {
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        changes.try_send(Change::Insert(key, endpoint.clone())).unwrap();
        let changes = changes.clone();
        watchers.push(tokio::spawn(async move {
            let mut health = HealthClient::new(endpoint.connect_lazy());
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                request.set_timeout(Duration::from_secs(1));
                let serving = health.check(request).await.is_ok_and(|r| r.into_inner().status == 1);
                if !serving {
                    let _ = changes.send(Change::Remove(key)).await;
                    return;
                }
            }
        }));
    }
    (channel, watchers)
}

/// What the load recorded.
#[derive(Default)]
struct Tally {
    /// Calls that ended in an error, after the retries: `method: code message`.
    failed: Mutex<Vec<String>>,
    /// Administrators created (acknowledged).
    administrators: Mutex<Vec<String>>,
    /// Connect keys created (acknowledged).
    connect_keys: Mutex<Vec<String>>,
    /// Calls that succeeded.
    succeeded: AtomicUsize,
    /// Write attempts answered `UNAVAILABLE` (and retried): why.
    retried_writes: Mutex<Vec<String>>,
}

impl Tally {
    fn record<T>(&self, method: &str, result: Result<T, tonic::Status>) -> Option<T> {
        match result {
            Ok(value) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                Some(value)
            }
            Err(status) => {
                self.failed.lock().unwrap().push(format!(
                    "{method}: {:?} {}",
                    status.code(),
                    status.message()
                ));
                None
            }
        }
    }
}

/// A write with a `request_id`, retried with the same id on `UNAVAILABLE` with the SDK's
/// policy (5 attempts, 0.2 s doubling): the id makes a retry safe, whatever the first attempt
/// did. Reads are retried by the SDK itself.
async fn write<T, F, Fut>(tally: &Tally, mut attempt: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut wait = Duration::from_millis(200);
    for left in (0..5).rev() {
        match attempt().await {
            Err(status) if status.code() == tonic::Code::Unavailable && left > 0 => {
                tally.retried_writes.lock().unwrap().push(status.message().to_string());
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            result => return result.map(tonic::Response::into_inner),
        }
    }
    unreachable!("the last attempt returns")
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(15));
    request
}

/// One caller: two reads and two writes per round until `stop`.
async fn caller(
    client: Steward,
    org: String,
    worker: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let profile = client.admin().get_profile(timed(GetProfileRequest {})).await;
        tally.record("GetProfile", profile);
        let commands = client
            .commands()
            .list_commands(timed(ListCommandsRequest { parent: org.clone(), ..Default::default() }))
            .await;
        tally.record("ListCommands", commands);

        let request_id = uuid::Uuid::new_v4().to_string();
        let email = format!("w{worker}-r{round}-{}@example.com", &request_id[..8]);
        let created = write(&tally, || {
            let mut admin = client.admin();
            let request = timed(CreateAdministratorRequest {
                parent: org.clone(),
                administrator: Some(Administrator {
                    email: email.clone(),
                    role: Role::CommandRunner as i32,
                    ..Default::default()
                }),
                request_id: request_id.clone(),
            });
            async move { admin.create_administrator(request).await }
        })
        .await;
        if let Some(created) = tally.record("CreateAdministrator", created) {
            tally.administrators.lock().unwrap().push(created.administrator.unwrap().name);
        }

        let request_id = uuid::Uuid::new_v4().to_string();
        let key = write(&tally, || {
            let mut systems = client.systems();
            let request = timed(CreateConnectKeyRequest {
                parent: org.clone(),
                connect_key: Some(ConnectKey {
                    display_name: format!("w{worker}-r{round}"),
                    ..Default::default()
                }),
                request_id: request_id.clone(),
            });
            async move { systems.create_connect_key(request).await }
        })
        .await;
        if let Some(key) = tally.record("CreateConnectKey", key) {
            tally.connect_keys.lock().unwrap().push(key.connect_key.unwrap().name);
        }
    }
}

async fn sigterm_under_load(backend: Backend) {
    let database = TestDatabase::create(backend).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = database.url("all");
    let env: Vec<(&str, &str)> = match backend {
        // dev keeps one SQLite file per service under its data directory: both replicas open
        // the same files.
        Backend::Sqlite => Vec::new(),
        Backend::Postgres => vec![("STEWARD_DATABASE__URL", url.as_str())],
    };
    // 3 s of NOT_SERVING before the listeners close: 30 polls of the balancer.
    let mut env = env;
    env.push(("STEWARD_SERVER__SHUTDOWN_DRAIN_SECS", "3"));
    let first = start_replica(data.path(), &env, data.path().join("first.log"));
    let token = first.token.clone().expect("the first replica creates the organization");
    let mut second = start_replica(data.path(), &env, data.path().join("second.log"));
    assert!(second.token.is_none(), "the second replica keeps the organization");

    let (channel, watchers) = balance(&[first.addr.clone(), second.addr.clone()]);
    let client = Steward::from_channel(channel);
    client
        .auth()
        .accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() })
        .await
        .unwrap();
    client.sign_in("owner@example.com", PASSWORD, "").await.unwrap();
    let org = client
        .admin()
        .get_profile(GetProfileRequest {})
        .await
        .unwrap()
        .into_inner()
        .profile
        .and_then(|profile| profile.organization)
        .unwrap()
        .name;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            tokio::spawn(caller(client.clone(), org.clone(), worker, stop.clone(), tally.clone()))
        })
        .collect();

    // Both replicas carry the load before one of them is told to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered(&first.metrics) < 40.0 || answered(&second.metrics) < 40.0 {
        assert!(Instant::now() < deadline, "the load never reached both replicas");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = tally.succeeded.load(Ordering::Relaxed);
    let pid = first.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut first = first;
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the replica did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The load goes on against the replica left.
    let after_exit = tally.succeeded.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.succeeded.load(Ordering::Relaxed) < after_exit + 40 {
        assert!(Instant::now() < deadline, "the remaining replica stopped answering");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    for watcher in watchers {
        watcher.abort();
    }

    let failed = tally.failed.lock().unwrap().clone();
    let retried = tally.retried_writes.lock().unwrap().clone();
    eprintln!(
        "{backend:?}: {} calls succeeded ({before} before SIGTERM), {} write attempts retried \
         on UNAVAILABLE, {} failed",
        tally.succeeded.load(Ordering::Relaxed),
        retried.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{backend:?}: calls failed during the shutdown:\n{}\nlog of the stopped replica:\n{}",
        failed.join("\n"),
        std::fs::read_to_string(&first.log).unwrap_or_default()
    );
    // With the drain, the balancer takes the replica out while it still serves: no call even
    // needed a retry, so a client that retries nothing (writes without a request_id, the SDK's
    // non-idempotent calls) would not have noticed the shutdown either.
    assert!(
        retried.is_empty(),
        "{backend:?}: writes answered UNAVAILABLE during the shutdown:\n{}",
        retried.join("\n")
    );
    assert!(status.success(), "exit status after SIGTERM: {status}");

    // Every acknowledged write is there, once: nothing more was created than acknowledged.
    let mut administrators = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .admin()
            .list_administrators(ListAdministratorsRequest {
                parent: org.clone(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        administrators.extend(page.administrators.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut acknowledged = tally.administrators.lock().unwrap().clone();
    for name in &acknowledged {
        assert!(administrators.contains(name), "acknowledged {name} is missing");
    }
    acknowledged.sort();
    acknowledged.dedup();
    assert_eq!(administrators.len(), acknowledged.len() + 1, "the owner and the created ones");

    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .systems()
            .list_connect_keys(ListConnectKeysRequest {
                parent: org.clone(),
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        keys.extend(page.connect_keys.into_iter().map(|k| k.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let acknowledged = tally.connect_keys.lock().unwrap().clone();
    for name in &acknowledged {
        assert!(keys.contains(name), "acknowledged {name} is missing");
    }
    assert_eq!(keys.len(), acknowledged.len(), "one connect key per acknowledged request");
    let _ = second.child.kill();
}

/// Holds the auth service's throttle table until dropped or released: the auth service's next
/// write there (every AcceptInvite reserves a throttle slot first) waits for it.
struct ThrottleLock(Option<steward_storage::sea_orm::DatabaseTransaction>);

impl ThrottleLock {
    async fn take(backend: Backend, url: &str) -> Self {
        use steward_storage::sea_orm::{ConnectionTrait, Database};
        let db = Database::connect(url).await.unwrap();
        // SQLite: the database write lock; PostgreSQL: a table lock that blocks writers.
        let txn = steward_storage::begin_write(&db, "auth_throttle").await.unwrap();
        if backend == Backend::Postgres {
            txn.execute_unprepared("LOCK TABLE auth_throttle IN EXCLUSIVE MODE").await.unwrap();
        }
        Self(Some(txn))
    }

    async fn release(mut self) {
        if let Some(txn) = self.0.take() {
            txn.rollback().await.unwrap();
        }
    }
}

/// A call in flight at SIGTERM that calls another service of its own process (dev runs all
/// three; AcceptInvite asks the admin service to activate the administrator, through the
/// internal listener) still finishes: the internal listener closes only after the public one
/// has no call left.
async fn in_flight_calls_reach_the_process_own_services(backend: Backend) {
    let database = TestDatabase::create(backend).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = database.url("all");
    let env: Vec<(&str, &str)> = match backend {
        Backend::Sqlite => Vec::new(),
        Backend::Postgres => vec![("STEWARD_DATABASE__URL", url.as_str())],
    };
    let mut dev = start_replica(data.path(), &env, data.path().join("dev.log"));
    let token = dev.token.clone().expect("dev creates the organization");
    let client = Steward::connect(format!("http://{}", dev.addr)).await.unwrap();

    let auth_db = match backend {
        Backend::Sqlite => steward_storage::sqlite_url(data.path(), "auth").unwrap(),
        Backend::Postgres => url.clone(),
    };
    let lock = ThrottleLock::take(backend, &auth_db).await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .auth()
                .accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!call.is_finished(), "the call must be waiting for the lock");
    let pid = dev.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // The listeners close (no drain here); then the call goes on to the admin service.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!call.is_finished(), "the call must still be waiting for the lock");
    lock.release().await;
    let accepted = call.await.unwrap();
    assert!(
        accepted.is_ok(),
        "{backend:?}: the in-flight AcceptInvite failed: {:?}\nlog:\n{}",
        accepted.err(),
        std::fs::read_to_string(&dev.log).unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_calls_reach_the_process_own_services_sqlite() {
    in_flight_calls_reach_the_process_own_services(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_calls_reach_the_process_own_services_postgres() {
    if postgres() {
        in_flight_calls_reach_the_process_own_services(Backend::Postgres).await;
    }
}

/// Whether PostgreSQL tests run; fails when they must but cannot.
fn postgres() -> bool {
    let available = steward_storage::testing::backends().contains(&Backend::Postgres);
    assert!(
        available || std::env::var("STEWARD_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
        "PostgreSQL is required but STEWARD_TEST_POSTGRES_URL is not set"
    );
    available
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call_sqlite() {
    sigterm_under_load(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call_postgres() {
    if postgres() {
        sigterm_under_load(Backend::Postgres).await;
    }
}
