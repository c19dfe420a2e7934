//! The soak: a long mixed load on a deployment of several replicas, watching each server
//! process for leaks.
//!
//! It registers a fleet of simulated agents (spread over the servers, each agent on its own
//! connection and answering every assignment with success), measures the mixed load's capacity
//! with a short closed-loop run, then keeps an open-loop mixed load at a fraction of it
//! (`utilization`, 70% by default) for the whole duration: CheckAccess, GetAdministrator,
//! ListAdministrators, an invite followed by the deletion of the invitee (writes, outbox and
//! mail), and every `run_every` a command run on a slice of the fleet. Every `sample_every` it
//! reads each server process's resident memory, open file descriptors, sockets and threads from
//! `/proc`, and the process's Tokio task count and database pool connections from its
//! `/metrics` when given.
//!
//! Verdict: any failed call (every code is unexpected at this load) or an agent assignment not
//! received fails the soak, and so does growth after warm-up: resident memory more than 10%
//! above its first post-warm-up sample, or file descriptors, sockets, threads, tasks or pool
//! connections above the highest of the first post-warm-up samples.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use steward_proto::admin::v1::{
    Administrator, BatchDeleteAdministratorsRequest, CreateAdministratorRequest,
    GetAdministratorRequest, ListAdministratorsRequest, Role,
};
use steward_proto::client::Steward;
use steward_proto::commands::v1::{
    CheckAccessRequest, Command, ConnectKey, CreateCommandRequest, CreateConnectKeyRequest,
    Interpreter, RunCommandRequest,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::{fleet, BenchError, Tally};

/// How to soak.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// The servers' URLs (each serving every public service); calls and agents spread over them.
    pub servers: Vec<String>,
    /// The server processes' ids, watched through `/proc`.
    pub pids: Vec<u32>,
    /// Each server process's `/metrics` address (`host:port`), for tasks and pool connections.
    pub metrics: Vec<String>,
    /// PEM of a CA to trust for `https://`.
    pub ca_pem: Option<Vec<u8>>,
    /// A service account's API key (reads and creates administrators, checks access, creates
    /// connect keys and commands and runs them).
    pub api_key: String,
    /// How long the load runs.
    pub duration: Duration,
    /// The first part of it, after which samples must stop growing.
    pub warmup: Duration,
    /// Calls per second; `None`: `utilization` of the capacity measured first.
    pub rate: Option<f64>,
    /// The fraction of capacity to load at.
    pub utilization: f64,
    /// Simulated agents.
    pub agents: usize,
    /// Agents each run targets.
    pub run_targets: usize,
    /// How often a command runs on the fleet.
    pub run_every: Duration,
    /// How often the processes are sampled.
    pub sample_every: Duration,
    /// How long the closed-loop run that measures capacity lasts.
    pub calibration: Duration,
}

/// One sample of one server process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessSample {
    /// Seconds since the load started.
    pub at_secs: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Of which sockets.
    pub sockets: u64,
    /// Threads.
    pub threads: u64,
    /// Tokio tasks alive (`steward_runtime_tasks`), when `/metrics` was given.
    pub tasks: Option<u64>,
    /// Database pool connections, idle and used, summed over the process's services.
    pub pool_connections: Option<u64>,
}

/// What the soak saw.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// The mixed load's closed-loop capacity, calls per second.
    pub capacity: f64,
    /// The open-loop rate it ran at.
    pub rate: f64,
    /// Seconds of load.
    pub seconds: u64,
    /// Calls by outcome: the whole load.
    pub load: crate::Outcome,
    /// Runs started on the fleet, and assignments expected and received.
    pub runs: u64,
    /// Assignments the runs should have delivered.
    pub assignments_expected: u64,
    /// Assignments the agents received.
    pub assignments_received: u64,
    /// Samples of each process under load, in `pids` order.
    pub samples: Vec<Vec<ProcessSample>>,
    /// Each process at rest before the load (fleet connected) and after it drained.
    pub at_rest: Vec<(ProcessSample, ProcessSample)>,
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
}

impl SoakReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let o = &self.load;
        let errors: Vec<String> = o.errors.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let mut out = format!(
            "soak: {} s at {:.0} calls/s ({:.0}% of a measured capacity of {:.0}/s)\n\n\
             calls ok {}, errors {}; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms\n\
             runs {}, assignments {}/{}\n",
            self.seconds,
            self.rate,
            self.rate / self.capacity.max(f64::EPSILON) * 100.0,
            self.capacity,
            o.ok,
            if errors.is_empty() { "none".into() } else { errors.join(", ") },
            o.p50_ms,
            o.p99_ms,
            o.p999_ms,
            self.runs,
            self.assignments_received,
            self.assignments_expected,
        );
        for (i, samples) in self.samples.iter().enumerate() {
            out.push_str(&format!(
                "\nprocess {i}\n\n| s | RSS MiB | fds | sockets | threads | tasks | pool |\n\
                 |---|---|---|---|---|---|---|\n"
            ));
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            if let Some((before, after)) = self.at_rest.get(i) {
                out.push_str(&format!(
                    "| at rest before | {:.1} | {} | {} | {} | {} | {} |\n",
                    before.rss_kib as f64 / 1024.0,
                    before.fds,
                    before.sockets,
                    before.threads,
                    opt(before.tasks),
                    opt(before.pool_connections)
                ));
                out.push_str(&format!(
                    "| at rest after | {:.1} | {} | {} | {} | {} | {} |\n",
                    after.rss_kib as f64 / 1024.0,
                    after.fds,
                    after.sockets,
                    after.threads,
                    opt(after.tasks),
                    opt(after.pool_connections)
                ));
            }
            for s in samples {
                out.push_str(&format!(
                    "| {} | {:.1} | {} | {} | {} | {} | {} |\n",
                    s.at_secs,
                    s.rss_kib as f64 / 1024.0,
                    s.fds,
                    s.sockets,
                    s.threads,
                    opt(s.tasks),
                    opt(s.pool_connections)
                ));
            }
        }
        if self.failures.is_empty() {
            out.push_str("\nverdict: passed\n");
        } else {
            out.push_str("\nverdict: FAILED\n");
            for failure in &self.failures {
                out.push_str(&format!("- {failure}\n"));
            }
        }
        out
    }
}

/// One call of the mixed load, chosen by a counter.
#[derive(Clone)]
struct Mixed {
    client: Steward,
    organization: String,
    administrator: String,
    tag: Arc<str>,
}

impl Mixed {
    async fn once(&self, n: u64) -> Result<(), tonic::Status> {
        match n % 10 {
            0..=3 => {
                let request =
                    CheckAccessRequest { permission: "commands.read".into(), ..Default::default() };
                self.client.commands().check_access(request).await.map(|_| ())
            }
            4..=6 => {
                let request = GetAdministratorRequest { name: self.administrator.clone() };
                self.client.admin().get_administrator(request).await.map(|_| ())
            }
            7 | 8 => {
                let request = ListAdministratorsRequest {
                    parent: self.organization.clone(),
                    page_size: 50,
                    ..Default::default()
                };
                self.client.admin().list_administrators(request).await.map(|_| ())
            }
            _ => {
                // A write: invite someone (an outbox message and a mail), then delete them.
                let request = CreateAdministratorRequest {
                    parent: self.organization.clone(),
                    administrator: Some(Administrator {
                        email: format!("soak-{}-{n}@example.com", self.tag),
                        role: Role::CommandRunner as i32,
                        ..Default::default()
                    }),
                    request_id: uuid::Uuid::new_v4().to_string(),
                };
                let created = self.client.admin().create_administrator(request).await?;
                let name = created.into_inner().administrator.map(|a| a.name).unwrap_or_default();
                let request = BatchDeleteAdministratorsRequest {
                    parent: self.organization.clone(),
                    names: vec![name],
                    validate_only: false,
                };
                self.client.admin().batch_delete_administrators(request).await.map(|_| ())
            }
        }
    }
}

/// Resident memory, file descriptors, sockets and threads of `pid` from `/proc`.
fn proc_sample(pid: u32) -> Option<(u64, u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let (mut fds, mut sockets) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Some((field("VmRSS:")?, fds, sockets, field("Threads:")?))
}

/// `GET /metrics` from `addr`; the body.
async fn scrape(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// The sum of the samples of metric `name` in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

async fn sample(pid: u32, metrics: Option<&String>, at: Duration) -> ProcessSample {
    let (rss_kib, fds, sockets, threads) = proc_sample(pid).unwrap_or_default();
    let text = match metrics {
        Some(addr) => scrape(addr).await,
        None => None,
    };
    let text = text.as_deref().unwrap_or("");
    ProcessSample {
        at_secs: at.as_secs(),
        rss_kib,
        fds,
        sockets,
        threads,
        tasks: metric_sum(text, "steward_runtime_tasks"),
        pool_connections: metric_sum(text, "steward_db_pool_connections"),
    }
}

/// Reads one figure of a sample.
type Reading = fn(&ProcessSample) -> Option<u64>;

/// The median of `read` over `samples`.
fn median(samples: &[&ProcessSample], read: Reading) -> Option<u64> {
    let mut values: Vec<u64> = samples.iter().filter_map(|s| read(s)).collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

/// Growth after warm-up in one process's samples under load, and between its samples at rest
/// before and after the load, described.
///
/// Under load: the median of the last three samples against the median of the first three
/// after warm-up (medians, so one sample caught in a burst of calls proves nothing): resident
/// memory may grow 10%, counts (file descriptors, sockets, threads, tasks, pool connections)
/// 10% plus 2. At rest: the Tokio tasks left once the load has drained may exceed those before
/// it by 10% plus 10 (a leaked task per call would leave thousands).
fn growth(
    i: usize,
    samples: &[ProcessSample],
    warmup: Duration,
    rest: Option<(&ProcessSample, &ProcessSample)>,
) -> Vec<String> {
    let after: Vec<&ProcessSample> =
        samples.iter().filter(|s| s.at_secs >= warmup.as_secs()).collect();
    if after.len() < 2 {
        return vec![format!("process {i}: fewer than two samples after warm-up")];
    }
    let window = after.len().div_ceil(2).min(3);
    let head = after.get(..window).unwrap_or_default();
    let tail = after.get(after.len() - window..).unwrap_or_default();
    let mut failures = Vec::new();
    let checks: [(&str, Reading, f64, u64); 6] = [
        ("resident memory (KiB)", |s| Some(s.rss_kib), 1.10, 0),
        ("file descriptors", |s| Some(s.fds), 1.10, 2),
        ("sockets", |s| Some(s.sockets), 1.10, 2),
        ("threads", |s| Some(s.threads), 1.10, 2),
        ("tasks", |s| s.tasks, 1.10, 2),
        ("pool connections", |s| s.pool_connections, 1.10, 2),
    ];
    for (what, read, factor, slack) in checks {
        if let (Some(early), Some(late)) = (median(head, read), median(tail, read)) {
            let limit = (early as f64 * factor) as u64 + slack;
            if late > limit {
                failures.push(format!(
                    "process {i}: {what} grew under load after warm-up: median {early} early, \
                     {late} at the end (limit {limit})"
                ));
            }
        }
    }
    if let Some((before, after)) = rest {
        if let (Some(before), Some(after)) = (before.tasks, after.tasks) {
            let limit = (before as f64 * 1.10) as u64 + 10;
            if after > limit {
                failures.push(format!(
                    "process {i}: {after} tasks at rest after the load, {before} before it (limit {limit})"
                ));
            }
        }
    }
    failures
}

/// Runs the soak.
#[allow(clippy::disallowed_methods)] // the soak's clock is wall time by definition
pub async fn run(options: &SoakOptions) -> Result<SoakReport, BenchError> {
    let mut clients: Vec<(Channel, Steward)> = Vec::new();
    for server in &options.servers {
        for _ in 0..2 {
            let channel = steward_proto::client::endpoint(server.clone(), options.ca_pem.clone())?
                .connect()
                .await?;
            clients.push((channel.clone(), Steward::from_channel(channel)));
        }
    }
    let organization = crate::sign_in(&clients, &options.api_key).await?;
    let Some((_, first)) = clients.first() else {
        return Err(BenchError::Options("no server to soak".into()));
    };
    let administrator = crate::first_administrator(first, &organization)
        .await?
        .administrators
        .first()
        .map(|a| a.name.clone())
        .ok_or_else(|| BenchError::Options("the organization has no administrator".into()))?;

    // The fleet, spread over the servers.
    let key = first
        .systems()
        .create_connect_key(CreateConnectKeyRequest {
            parent: organization.clone(),
            connect_key: Some(ConnectKey {
                display_name: "steward-soak".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .connect_key
        .map(|k| k.key)
        .unwrap_or_default();
    let (assigned_tx, mut assigned_rx) = mpsc::unbounded_channel::<Instant>();
    let mut systems = Vec::with_capacity(options.agents);
    let mut sessions = Vec::with_capacity(options.agents);
    {
        use futures::StreamExt;
        let mut endpoints = Vec::new();
        for server in &options.servers {
            endpoints
                .push(steward_proto::client::endpoint(server.clone(), options.ca_pem.clone())?);
        }
        let joined: Vec<Result<(String, fleet::Session), BenchError>> =
            futures::stream::iter(0..options.agents)
                .map(|i| {
                    let endpoint = endpoints.get(i % endpoints.len().max(1)).cloned();
                    let (key, assigned) = (key.clone(), assigned_tx.clone());
                    async move {
                        let endpoint =
                            endpoint.ok_or_else(|| BenchError::Options("no server".into()))?;
                        let channel = endpoint.connect().await?;
                        fleet::agent(channel, &key, format!("soak-{i}"), assigned).await
                    }
                })
                .buffered(fleet::REGISTERING)
                .collect()
                .await;
        for joined in joined {
            let (system, session) = joined?;
            systems.push(system);
            sessions.push(session);
        }
    }
    let targets: Vec<String> =
        systems.iter().take(options.run_targets.min(fleet::MAX_TARGETS)).cloned().collect();
    let command = if targets.is_empty() {
        None
    } else {
        first
            .commands()
            .create_command(CreateCommandRequest {
                parent: organization.clone(),
                command: Some(Command {
                    display_name: "steward-soak".into(),
                    script: "true".into(),
                    interpreter: Interpreter::Sh as i32,
                    timeout: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                    target_systems: targets.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .command
            .map(|c| c.name)
    };

    let tag: Arc<str> =
        Arc::from(uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap_or("x"));
    let mixed: Vec<Mixed> = clients
        .iter()
        .map(|(_, client)| Mixed {
            client: client.clone(),
            organization: organization.clone(),
            administrator: administrator.clone(),
            tag: tag.clone(),
        })
        .collect();
    let counter = Arc::new(AtomicU64::new(0));
    let at_rest = |at: Duration| {
        let (pids, metrics) = (options.pids.clone(), options.metrics.clone());
        async move {
            let mut samples = Vec::with_capacity(pids.len());
            for (i, pid) in pids.iter().enumerate() {
                samples.push(sample(*pid, metrics.get(i), at).await);
            }
            samples
        }
    };
    let rest_before = at_rest(Duration::ZERO).await;

    // Capacity: a closed loop of 64 callers.
    let calibration = options.calibration;
    let deadline = Instant::now() + calibration;
    let mut workers = Vec::new();
    for i in 0..64 {
        let Some(call) = mixed.get(i % mixed.len().max(1)).cloned() else { break };
        let counter = counter.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let result = call.once(counter.fetch_add(1, Ordering::Relaxed)).await;
                tally.record(start.elapsed(), result);
            }
            tally
        }));
    }
    let mut calibrated = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            calibrated.add(tally);
        }
    }
    let calibrated = calibrated.outcome("calibration", calibration);
    let capacity = calibrated.rate;
    let rate = options.rate.unwrap_or(capacity * options.utilization).max(1.0);

    // The load, the runs and the sampler, for the duration.
    let started = Instant::now();
    let end = started + options.duration;
    let runs = Arc::new(AtomicU64::new(0));
    let runner = {
        let (client, command, runs) = (first.clone(), command.clone(), runs.clone());
        let every = options.run_every;
        tokio::spawn(async move {
            let Some(command) = command else { return Ok(()) };
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            while Instant::now() + every < end {
                ticker.tick().await;
                let request = RunCommandRequest {
                    command: command.clone(),
                    request_id: uuid::Uuid::new_v4().to_string(),
                    ..Default::default()
                };
                client.commands().run_command(request).await?;
                runs.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), tonic::Status>(())
        })
    };
    let sampler = {
        let (pids, metrics, every) =
            (options.pids.clone(), options.metrics.clone(), options.sample_every);
        tokio::spawn(async move {
            let mut samples: Vec<Vec<ProcessSample>> = vec![Vec::new(); pids.len()];
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                if Instant::now() >= end {
                    break;
                }
                for (i, pid) in pids.iter().enumerate() {
                    let s = sample(*pid, metrics.get(i), started.elapsed()).await;
                    if let Some(list) = samples.get_mut(i) {
                        list.push(s);
                    }
                }
            }
            samples
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (sender, mut answers) = mpsc::unbounded_channel();
    let collector = tokio::spawn(async move {
        let mut tally = Tally::new();
        while let Some((elapsed, result)) = answers.recv().await {
            tally.record(elapsed, result);
        }
        tally
    });
    let mut next = 0_usize;
    while Instant::now() < end {
        let due = ticker.tick().await;
        let Some(call) = mixed.get(next % mixed.len().max(1)).cloned() else { break };
        next += 1;
        let (sender, n) = (sender.clone(), counter.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let result = call.once(n).await;
            let _ = sender.send((due.elapsed(), result));
        });
    }
    drop(sender);
    let load = collector.await.map_err(|e| BenchError::Options(e.to_string()))?;
    let load = load.outcome("soak", options.duration);
    let mut failures = Vec::new();
    match runner.await {
        Ok(Ok(())) => {}
        Ok(Err(status)) => failures.push(format!("a run could not start: {status}")),
        Err(err) => failures.push(format!("the run task failed: {err}")),
    }
    let samples = sampler.await.map_err(|e| BenchError::Options(e.to_string()))?;
    // At rest again: the calls in flight have drained once the task counts stop falling.
    let mut rest_after = at_rest(options.duration).await;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = at_rest(options.duration).await;
        let tasks = |samples: &[ProcessSample]| samples.iter().filter_map(|s| s.tasks).sum::<u64>();
        let settled = tasks(&now) >= tasks(&rest_after);
        rest_after = now;
        if settled {
            break;
        }
    }

    // Every assignment of every run should arrive; give the last run a moment.
    let runs = runs.load(Ordering::Relaxed);
    let expected = runs * targets.len() as u64;
    let mut received = 0_u64;
    let wait_until = Instant::now() + Duration::from_secs(30);
    while received < expected {
        match tokio::time::timeout_at(wait_until.into(), assigned_rx.recv()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    while assigned_rx.try_recv().is_ok() {
        received += 1;
    }
    drop(sessions);

    if !load.errors.is_empty() {
        failures.push(format!(
            "{} calls failed: {:?}",
            load.errors.values().sum::<u64>(),
            load.errors
        ));
    }
    if received < expected {
        failures.push(format!("agents received {received} of {expected} assignments"));
    }
    for (i, list) in samples.iter().enumerate() {
        let rest = rest_before.get(i).zip(rest_after.get(i));
        failures.extend(growth(i, list, options.warmup, rest));
    }
    Ok(SoakReport {
        capacity,
        rate,
        seconds: options.duration.as_secs(),
        load,
        runs,
        assignments_expected: expected,
        assignments_received: received,
        samples,
        at_rest: rest_before.into_iter().zip(rest_after).collect(),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: u64, rss: u64, fds: u64, tasks: u64) -> ProcessSample {
        ProcessSample {
            at_secs: at,
            rss_kib: rss,
            fds,
            sockets: fds / 2,
            threads: 8,
            tasks: Some(tasks),
            pool_connections: Some(4),
        }
    }

    #[test]
    fn growth_flags_leaks_after_warmup_only() {
        let warmup = Duration::from_secs(60);
        // Growth during warm-up is expected; steady afterwards passes, one noisy sample too.
        let steady = [
            s(0, 10_000, 10, 5),
            s(60, 50_000, 40, 30),
            s(120, 52_000, 40, 29),
            s(180, 51_000, 41, 31),
            s(540, 53_000, 39, 30),
            s(600, 53_000, 40, 900),
            s(660, 52_000, 40, 30),
        ];
        assert!(growth(0, &steady, warmup, None).is_empty());
        // Memory up 20% after warm-up fails, as do tasks that keep rising.
        let leaking = [
            s(60, 50_000, 40, 30),
            s(120, 50_000, 40, 30),
            s(540, 60_000, 40, 300),
            s(600, 60_000, 40, 330),
        ];
        let failures = growth(0, &leaking, warmup, None);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("resident memory"), "{failures:?}");
        assert!(failures[1].contains("tasks grew"), "{failures:?}");
        // Tasks left behind once the load is over fail, whatever the samples under load said.
        let (before, after) = (s(0, 1, 1, 200), s(0, 1, 1, 700));
        let failures = growth(0, &steady, warmup, Some((&before, &after)));
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("700 tasks at rest"), "{failures:?}");
    }

    #[test]
    fn metric_sums_add_every_label_set() {
        let text = "# HELP x\nsteward_db_pool_connections{service=\"auth\",state=\"idle\"} 3\n\
                    steward_db_pool_connections{service=\"auth\",state=\"used\"} 1\n\
                    steward_runtime_tasks 42\nsteward_runtime_tasks_other 7\n";
        assert_eq!(metric_sum(text, "steward_db_pool_connections"), Some(4));
        assert_eq!(metric_sum(text, "steward_runtime_tasks"), Some(42));
        assert_eq!(metric_sum(text, "steward_missing"), None);
    }
}
