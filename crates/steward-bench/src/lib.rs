//! The load tool: calls one of Steward's RPCs from many concurrent streams over a few HTTP/2
//! connections for a fixed time, and reports the rate, latency percentiles (hdrhistogram) and
//! errors by gRPC code. Every run first measures an *empty* tonic server (tonic-health only, in
//! this process) the same way, and quotes each scenario as a ratio to it: absolute figures depend
//! on the machine, ratios measured in one run much less.
//!
//! Authenticated scenarios sign in as a service account (`STEWARD_API_KEY`) whose role reads
//! administrators and checks access (the built-in Read Only role does).

pub mod argon2_baseline;
pub mod fleet;
pub mod soak;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, GetAdministratorRequest, ListAdministratorsRequest,
    Role,
};
use steward_proto::auth::v1::{
    sign_in_response, ExchangeApiKeyRequest, RefreshSessionRequest, SignInRequest,
};
use steward_proto::client::Steward;
use steward_proto::commands::v1::CheckAccessRequest;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// What can stop a run before it measures anything.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A setup call (sign-in, listing administrators) failed.
    #[error("setup call failed: {0}")]
    Setup(#[from] tonic::Status),
    /// The local baseline server could not start.
    #[error("cannot start the baseline server: {0}")]
    Io(#[from] std::io::Error),
    /// The options do not allow the scenario.
    #[error("{0}")]
    Options(String),
}

/// Sign-ins in flight per person: one account's throttle admits five attempts in flight. With
/// several people (`--email a,b`), sign-in keeps this many in flight for each.
pub const SIGN_IN_CONCURRENCY: usize = 4;

/// Calls in flight when a latency is compared rather than a rate (`check-access` alone and under
/// saturated sign-in): few enough that the figure is the call's own latency, not a queue.
pub const LIGHT_CONCURRENCY: usize = 4;

/// One measured call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `grpc.health.v1.Health/Check` on the empty tonic server: the baseline.
    EmptyHealth,
    /// Steward's own `Health/Check` (no authentication, no database).
    Health,
    /// `CommandService/CheckAccess`: the caller's own `commands.read`.
    CheckAccess,
    /// `AdminService/GetAdministrator` of one administrator.
    GetAdministrator,
    /// `AdminService/ListAdministrators`, a page of 50.
    ListAdministrators,
    /// `AuthService/SignIn` with an email and password (argon2id), quoted against the raw
    /// argon2id rate of this machine with the same parameters and as many threads as cores.
    SignIn,
    /// `AuthService/RefreshSession`, each caller rotating its own session's refresh token.
    RefreshSession,
    /// `CheckAccess` at [`LIGHT_CONCURRENCY`] alone, then again while sign-in saturates the
    /// password hashing: how much a burst of sign-ins slows everyone else (p99 ratio).
    CheckAccessUnderSignIn,
}

impl Scenario {
    /// The scenarios measured against Steward, in report order.
    pub const STEWARD: [Scenario; 4] =
        [Self::Health, Self::CheckAccess, Self::GetAdministrator, Self::ListAdministrators];

    /// The scenarios that sign in a person (`--email`, `STEWARD_PASSWORD`).
    pub const PEOPLE: [Scenario; 3] =
        [Self::SignIn, Self::RefreshSession, Self::CheckAccessUnderSignIn];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::EmptyHealth => "empty-tonic-health",
            Self::Health => "health",
            Self::CheckAccess => "check-access",
            Self::GetAdministrator => "get-administrator",
            Self::ListAdministrators => "list-administrators",
            Self::SignIn => "sign-in",
            Self::RefreshSession => "refresh-session",
            Self::CheckAccessUnderSignIn => "check-access-under-sign-in",
        }
    }

    /// The scenario named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::STEWARD.into_iter().chain(Self::PEOPLE).find(|s| s.name() == name)
    }

    fn needs_key(self) -> bool {
        !matches!(self, Self::EmptyHealth | Self::Health | Self::SignIn | Self::RefreshSession)
    }

    fn needs_people(self) -> bool {
        matches!(self, Self::SignIn | Self::RefreshSession | Self::CheckAccessUnderSignIn)
    }
}

/// How to load the server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Steward's URL.
    pub server: String,
    /// PEM of a CA to trust for `https://` (e.g. `dev --tls`).
    pub ca_pem: Option<Vec<u8>>,
    /// A service account's API key, for the authenticated scenarios.
    pub api_key: Option<String>,
    /// How long each scenario runs.
    pub duration: Duration,
    /// Concurrent calls in flight.
    pub concurrency: usize,
    /// HTTP/2 connections they share.
    pub connections: usize,
    /// The agent simulator, when wanted (its key's role must also create connect keys and
    /// commands and run them).
    pub fleet: Option<fleet::FleetOptions>,
    /// Emails and passwords of people without a second factor, for sign-in and refresh. Sign-in
    /// spreads over all of them; refresh uses the first.
    pub people: Vec<(String, String)>,
    /// Before `list-administrators`, invite administrators until the organization has this
    /// many (the key's role must also create administrators).
    pub organization_size: Option<usize>,
    /// The server's password-hashing threads: raw argon2id, the baseline of `sign-in`, hashes
    /// on as many.
    pub hashing_threads: usize,
}

/// The figures of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The scenario's name.
    pub scenario: String,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second.
    pub rate: f64,
    /// Latency percentiles of successful calls, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// `rate` divided by the baseline's rate in the same run.
    pub ratio: f64,
}

/// A run: the baseline and each scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Concurrent calls in flight.
    pub concurrency: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Seconds per scenario.
    pub seconds: f64,
    /// The empty tonic server.
    pub baseline: Outcome,
    /// The scenarios, in the order run.
    pub scenarios: Vec<Outcome>,
    /// The agent simulator's figures, when it ran.
    pub fleet: Option<fleet::FleetReport>,
    /// Raw argon2id hashes on this machine, the baseline of `sign-in` (when it ran).
    pub argon2_baseline: Option<Outcome>,
    /// Administrators in the organization `list-administrators` paged through.
    pub organization_size: Option<usize>,
    /// `check-access-under-sign-in`: CheckAccess alone and while sign-in saturates.
    pub interference: Option<Interference>,
}

/// CheckAccess latency at [`LIGHT_CONCURRENCY`], alone and while sign-in saturates the password
/// hashing.
#[derive(Clone, Debug, Serialize)]
pub struct Interference {
    /// CheckAccess calls in flight ([`LIGHT_CONCURRENCY`], or `--concurrency` when lower).
    pub in_flight: usize,
    /// CheckAccess alone.
    pub alone: Outcome,
    /// CheckAccess while sign-in runs.
    pub under_sign_in: Outcome,
    /// The sign-ins that ran meanwhile.
    pub sign_in: Outcome,
    /// `under_sign_in.p99_ms / alone.p99_ms`.
    pub p99_ratio: f64,
}

impl Report {
    /// The report as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} calls in flight over {} connections, {} s per scenario\n\n\
             | scenario | calls/s | ratio | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |\n\
             |---|---|---|---|---|---|---|---|\n",
            self.concurrency, self.connections, self.seconds
        );
        for o in std::iter::once(&self.baseline).chain(&self.scenarios).chain(&self.argon2_baseline)
        {
            let errors: Vec<String> = o.errors.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
                o.scenario,
                o.rate,
                o.ratio,
                o.p50_ms,
                o.p90_ms,
                o.p99_ms,
                o.p999_ms,
                if errors.is_empty() { "none".to_string() } else { errors.join(", ") }
            ));
        }
        if let Some(size) = self.organization_size {
            out.push_str(&format!("\nlist-administrators paged an organization of {size}.\n"));
        }
        if let Some(i) = &self.interference {
            out.push_str(&format!(
                "\nCheckAccess at {} in flight: p99 {:.2} ms alone ({:.0}/s), \
                 {:.2} ms while sign-in ran at {:.1}/s ({:.0}/s): {:.2}x\n",
                i.in_flight,
                i.alone.p99_ms,
                i.alone.rate,
                i.under_sign_in.p99_ms,
                i.sign_in.rate,
                i.under_sign_in.rate,
                i.p99_ratio
            ));
        }
        if let Some(f) = &self.fleet {
            let cpu = f.idle_cpu_percent.map_or("not measured".into(), |c| format!("{c:.1}%"));
            let baseline = f
                .baseline_cpu_percent
                .map_or(String::new(), |c| format!(" ({c:.1}% before any agent connected)"));
            let memory = match (f.server_rss_kib, f.rss_per_agent_kib) {
                (Some((before, idle)), Some(per_agent)) => format!(
                    "; server RSS {} → {} MiB, {per_agent:.1} KiB per agent",
                    before / 1024,
                    idle / 1024
                ),
                _ => String::new(),
            };
            out.push_str(&format!(
                "\nfleet: {} agents, server CPU while idle {cpu} of a core{baseline}{memory}; one run on {}: \
                 {} assigned, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
                f.agents,
                f.targets,
                f.assigned,
                f.assignment_p50_ms,
                f.assignment_p99_ms,
                f.assignment_max_ms
            ));
        }
        out
    }
}

/// Starts the baseline: a tonic server with only tonic-health, on a loopback port.
pub async fn empty_server() -> Result<SocketAddr, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    // As tonic's own `serve` would: Nagle's algorithm off.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming),
    );
    Ok(addr)
}

/// What one worker calls, prepared once.
#[derive(Clone)]
enum Call {
    Health(HealthClient<Channel>),
    CheckAccess(Steward),
    GetAdministrator(Steward, String),
    ListAdministrators(Steward, String),
    SignIn(Steward, Arc<(String, String)>),
    /// One caller's session: its latest refresh token.
    Refresh(Steward, Arc<std::sync::Mutex<String>>),
}

impl Call {
    async fn once(&mut self) -> Result<(), tonic::Status> {
        match self {
            Self::Health(client) => {
                client.check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
            }
            Self::CheckAccess(client) => {
                let request =
                    CheckAccessRequest { permission: "commands.read".into(), ..Default::default() };
                client.commands().check_access(request).await.map(|_| ())
            }
            Self::GetAdministrator(client, name) => {
                let request = GetAdministratorRequest { name: name.clone() };
                client.admin().get_administrator(request).await.map(|_| ())
            }
            Self::ListAdministrators(client, parent) => {
                let request = ListAdministratorsRequest {
                    parent: parent.clone(),
                    page_size: 50,
                    ..Default::default()
                };
                client.admin().list_administrators(request).await.map(|_| ())
            }
            Self::SignIn(client, person) => sign_in_person(client, person).await.map(|_| ()),
            Self::Refresh(client, session) => {
                let refresh_token = session.lock().map(|t| t.clone()).unwrap_or_default();
                let tokens = client
                    .auth()
                    .refresh_session(RefreshSessionRequest { refresh_token })
                    .await?
                    .into_inner()
                    .tokens
                    .unwrap_or_default();
                if let Ok(mut current) = session.lock() {
                    *current = tokens.refresh_token;
                }
                Ok(())
            }
        }
    }
}

/// Signs `person` in; a second-factor challenge is an error (the scenario needs a person
/// without one).
async fn sign_in_person(
    client: &Steward,
    person: &(String, String),
) -> Result<steward_proto::auth::v1::TokenSet, tonic::Status> {
    let request =
        SignInRequest { email: person.0.clone(), password: person.1.clone(), ..Default::default() };
    match client.auth().sign_in(request).await?.into_inner().result {
        Some(sign_in_response::Result::Tokens(tokens)) => Ok(tokens),
        _ => Err(tonic::Status::failed_precondition("the person must sign in without MFA")),
    }
}

/// Latencies and errors of one worker (or one paced run).
pub(crate) struct Tally {
    histogram: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn new() -> Self {
        // Three significant digits, up to a minute in microseconds.
        Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
            errors: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, elapsed: Duration, result: Result<(), tonic::Status>) {
        match result {
            Ok(()) => {
                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                if let Some(h) = self.histogram.as_mut() {
                    h.saturating_record(micros.max(1));
                }
            }
            Err(status) => *self.errors.entry(format!("{:?}", status.code())).or_default() += 1,
        }
    }

    pub(crate) fn add(&mut self, other: Self) {
        if let (Some(total), Some(h)) = (self.histogram.as_mut(), other.histogram.as_ref()) {
            // Same bounds on both sides: adding cannot fail.
            let _ = total.add(h);
        }
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    pub(crate) fn outcome(self, name: &str, duration: Duration) -> Outcome {
        outcome(name, self.histogram.as_ref(), self.errors, duration)
    }
}

/// Calls `calls` (round-robin over the workers) for `options.duration`.
async fn measure(name: &str, calls: Vec<Call>, options: &Options) -> Outcome {
    let deadline = Instant::now() + options.duration;
    let mut workers = Vec::with_capacity(options.concurrency);
    for i in 0..options.concurrency.max(1) {
        let Some(mut call) = calls.get(i % calls.len().max(1)).cloned() else { break };
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let result = call.once().await;
                tally.record(start.elapsed(), result);
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.add(tally);
        }
    }
    total.outcome(name, options.duration)
}

/// Starts calls at a fixed `rate` per second for `duration`, whatever the answers' pace (an
/// open loop); each latency counts from the moment its call was due, so a stall shows in the
/// percentiles instead of silently slowing the load.
async fn measure_at_rate(name: &str, calls: Vec<Call>, rate: f64, duration: Duration) -> Outcome {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + duration;
    let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut next = 0_usize;
    while Instant::now() < deadline {
        let due = ticker.tick().await;
        let Some(mut call) = calls.get(next % calls.len().max(1)).cloned() else { break };
        next += 1;
        let sender = sender.clone();
        tokio::spawn(async move {
            let result = call.once().await;
            let _ = sender.send((due.elapsed(), result));
        });
    }
    drop(sender);
    let mut tally = Tally::new();
    while let Some((elapsed, result)) = answers.recv().await {
        tally.record(elapsed, result);
    }
    tally.outcome(name, duration)
}

pub(crate) fn outcome(
    name: &str,
    total: Option<&Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    duration: Duration,
) -> Outcome {
    let ms = |q: f64| total.map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0);
    let ok = total.map_or(0, |h| h.len());
    Outcome {
        scenario: name.to_string(),
        ok,
        errors,
        rate: ok as f64 / duration.as_secs_f64().max(f64::EPSILON),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        ratio: 1.0,
    }
}

/// Runs the baseline, then each of `scenarios` against `options.server`.
pub async fn run(options: &Options, scenarios: &[Scenario]) -> Result<Report, BenchError> {
    let connections = options.connections.max(1);
    let baseline_url = format!("http://{}", empty_server().await?);
    let mut baseline_calls = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel =
            steward_proto::client::endpoint(baseline_url.clone(), None)?.connect().await?;
        baseline_calls.push(Call::Health(HealthClient::new(channel)));
    }
    let baseline = measure(Scenario::EmptyHealth.name(), baseline_calls, options).await;

    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel =
            steward_proto::client::endpoint(options.server.clone(), options.ca_pem.clone())?
                .connect()
                .await?;
        clients.push((channel.clone(), Steward::from_channel(channel)));
    }
    let mut organization = String::new();
    if let Some(needing) = scenarios.iter().find(|s| s.needs_people()) {
        if options.people.is_empty() {
            return Err(BenchError::Options(format!(
                "{} needs a person's email and password (--email, STEWARD_PASSWORD)",
                needing.name()
            )));
        }
    }
    if let Some(needing) = scenarios.iter().find(|s| s.needs_key()) {
        let key = options.api_key.as_deref().ok_or_else(|| {
            BenchError::Options(format!(
                "{} needs a service account's API key (STEWARD_API_KEY)",
                needing.name()
            ))
        })?;
        organization = sign_in(&clients, key).await?;
    }
    let mut results = Vec::with_capacity(scenarios.len());
    let mut argon2_baseline = None;
    let mut interference = None;
    let mut organization_size = None;
    let ratio = |mut outcome: Outcome| {
        outcome.ratio = outcome.rate / baseline.rate.max(f64::EPSILON);
        outcome
    };
    for scenario in scenarios {
        match scenario {
            Scenario::SignIn => {
                let calls = prepare(*scenario, &clients, &organization, options).await?;
                let mut outcome = measure(scenario.name(), calls, &sign_in_load(options)).await;
                let (threads, duration) = (options.hashing_threads, options.duration);
                let raw =
                    tokio::task::spawn_blocking(move || argon2_baseline::raw(threads, duration))
                        .await
                        .map_err(|e| BenchError::Options(e.to_string()))?;
                outcome.ratio = outcome.rate / raw.rate.max(f64::EPSILON);
                argon2_baseline = Some(raw);
                results.push(outcome);
            }
            Scenario::CheckAccessUnderSignIn => {
                let checks =
                    prepare(Scenario::CheckAccess, &clients, &organization, options).await?;
                let sign_ins = prepare(Scenario::SignIn, &clients, &organization, options).await?;
                let light = Options {
                    concurrency: LIGHT_CONCURRENCY.min(options.concurrency),
                    ..options.clone()
                };
                let alone = ratio(measure("check-access-alone", checks.clone(), &light).await);
                let signing = sign_in_load(options);
                let (under_sign_in, sign_in) = tokio::join!(
                    measure(scenario.name(), checks, &light),
                    measure("sign-in", sign_ins, &signing)
                );
                let under_sign_in = ratio(under_sign_in);
                let p99_ratio = under_sign_in.p99_ms / alone.p99_ms.max(f64::EPSILON);
                results.push(under_sign_in.clone());
                interference = Some(Interference {
                    in_flight: light.concurrency,
                    alone,
                    under_sign_in,
                    sign_in,
                    p99_ratio,
                });
            }
            Scenario::ListAdministrators => {
                if let (Some(size), Some((_, first))) = (options.organization_size, clients.first())
                {
                    populate(first, &organization, size).await?;
                    organization_size = Some(size);
                }
                let calls = prepare(*scenario, &clients, &organization, options).await?;
                let saturated = ratio(measure(scenario.name(), calls.clone(), options).await);
                // The latency target is at half of the saturated rate, where a queue is no
                // excuse.
                let half = saturated.rate / 2.0;
                let paced = measure_at_rate(HALF_RATE, calls, half, options.duration).await;
                results.push(saturated);
                results.push(ratio(paced));
            }
            _ => {
                let calls = prepare(*scenario, &clients, &organization, options).await?;
                results.push(ratio(measure(scenario.name(), calls, options).await));
            }
        }
    }
    let fleet = match (&options.fleet, clients.first()) {
        (Some(fleet_options), Some((_, client))) => {
            if options.api_key.is_none() {
                return Err(BenchError::Options(
                    "the agent simulator needs a service account's API key (STEWARD_API_KEY)"
                        .into(),
                ));
            }
            if organization.is_empty() {
                organization = sign_in(&clients, options.api_key.as_deref().unwrap_or("")).await?;
            }
            let ca = options.ca_pem.clone();
            Some(fleet::run(client, &organization, &options.server, ca, fleet_options).await?)
        }
        _ => None,
    };
    Ok(Report {
        concurrency: options.concurrency,
        connections,
        seconds: options.duration.as_secs_f64(),
        baseline,
        scenarios: results,
        fleet,
        argon2_baseline,
        organization_size,
        interference,
    })
}

/// The name of `list-administrators` paced at half of its saturated rate.
pub const HALF_RATE: &str = "list-administrators-half-rate";

/// The load of the sign-in scenarios: [`SIGN_IN_CONCURRENCY`] in flight per person (one
/// account's throttle admits a few attempts in flight; more would be refused).
fn sign_in_load(options: &Options) -> Options {
    let concurrency = (SIGN_IN_CONCURRENCY * options.people.len().max(1)).min(options.concurrency);
    Options { concurrency, ..options.clone() }
}

/// A page of one administrator of `organization` (with the organization's `total_size`).
pub(crate) async fn first_administrator(
    client: &Steward,
    organization: &str,
) -> Result<steward_proto::admin::v1::ListAdministratorsResponse, BenchError> {
    let request = ListAdministratorsRequest {
        parent: organization.to_string(),
        page_size: 1,
        ..Default::default()
    };
    Ok(client.admin().list_administrators(request).await?.into_inner())
}

/// Invites Command Runners into `organization` until it has `size` administrators.
async fn populate(client: &Steward, organization: &str, size: usize) -> Result<(), BenchError> {
    use futures::{StreamExt, TryStreamExt};
    let have =
        usize::try_from(first_administrator(client, organization).await?.total_size).unwrap_or(0);
    // Tags this run's emails apart from an earlier run's (the load tool has no injected clock).
    #[allow(clippy::disallowed_methods)]
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    futures::stream::iter(have..size)
        .map(|i| {
            let client = client.clone();
            let request = CreateAdministratorRequest {
                parent: organization.to_string(),
                administrator: Some(Administrator {
                    email: format!("bench-{run}-{i}@example.com"),
                    role: Role::CommandRunner as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            };
            async move { client.admin().create_administrator(request).await.map(|_| ()) }
        })
        .buffer_unordered(fleet::REGISTERING)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// Signs every client in with `api_key` (one token, exchanged once); answers the account's
/// organization, read from the token's `org` claim.
pub(crate) async fn sign_in(
    clients: &[(Channel, Steward)],
    api_key: &str,
) -> Result<String, BenchError> {
    use base64::Engine;
    let Some((_, first)) = clients.first() else { return Ok(String::new()) };
    let request = ExchangeApiKeyRequest { api_key: api_key.to_string() };
    let tokens = first.auth().exchange_api_key(request).await?.into_inner().tokens;
    let token = tokens.map(|t| t.access_token).unwrap_or_default();
    for (_, client) in clients {
        client.set_access_token(Some(&token))?;
    }
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
    claims
        .and_then(|c| c.get("org").and_then(|o| o.as_str()).map(str::to_string))
        .ok_or_else(|| BenchError::Options("the access token names no organization".into()))
}

/// The calls of `scenario`, one per connection, after whatever setup it needs.
async fn prepare(
    scenario: Scenario,
    clients: &[(Channel, Steward)],
    organization: &str,
    options: &Options,
) -> Result<Vec<Call>, BenchError> {
    let Some((_, first)) = clients.first() else { return Ok(Vec::new()) };
    if matches!(scenario, Scenario::SignIn | Scenario::RefreshSession) {
        let Some(person) = options.people.first().cloned() else {
            return Err(BenchError::Options(format!(
                "{} needs a person's email and password (--email, STEWARD_PASSWORD)",
                scenario.name()
            )));
        };
        // Anonymous clients on the same connections: these calls carry no access token.
        let anonymous: Vec<Steward> =
            clients.iter().map(|(channel, _)| Steward::from_channel(channel.clone())).collect();
        if scenario == Scenario::SignIn {
            // Worker i signs in person i % people, on connection i % connections.
            let people: Vec<Arc<(String, String)>> =
                options.people.iter().cloned().map(Arc::new).collect();
            let load = sign_in_load(options);
            return Ok((0..load.concurrency.max(1))
                .filter_map(|i| {
                    let client = anonymous.get(i % anonymous.len().max(1))?.clone();
                    let person = people.get(i % people.len().max(1))?.clone();
                    Some(Call::SignIn(client, person))
                })
                .collect());
        }
        // One session per caller, signed in one after another (parallel sign-ins of one
        // account would meet its throttle).
        let mut calls = Vec::with_capacity(options.concurrency);
        for (i, client) in anonymous.iter().cycle().take(options.concurrency.max(1)).enumerate() {
            let tokens = sign_in_person(client, &person).await.map_err(|status| {
                BenchError::Options(format!("sign-in {i} for refresh-session failed: {status}"))
            })?;
            let session = Arc::new(std::sync::Mutex::new(tokens.refresh_token));
            calls.push(Call::Refresh(client.clone(), session));
        }
        return Ok(calls);
    }
    let administrator = if scenario == Scenario::GetAdministrator {
        let listed = first_administrator(first, organization).await?;
        listed.administrators.first().map(|a| a.name.clone()).ok_or_else(|| {
            BenchError::Options("the organization has no administrator to get".into())
        })?
    } else {
        String::new()
    };
    Ok(clients
        .iter()
        .map(|(channel, client)| match scenario {
            Scenario::EmptyHealth | Scenario::Health => {
                Call::Health(HealthClient::new(channel.clone()))
            }
            Scenario::CheckAccess | Scenario::CheckAccessUnderSignIn => {
                Call::CheckAccess(client.clone())
            }
            Scenario::GetAdministrator => {
                Call::GetAdministrator(client.clone(), administrator.clone())
            }
            Scenario::ListAdministrators => {
                Call::ListAdministrators(client.clone(), organization.to_string())
            }
            // Prepared above.
            Scenario::SignIn | Scenario::RefreshSession => {
                Call::Health(HealthClient::new(channel.clone()))
            }
        })
        .collect())
}
