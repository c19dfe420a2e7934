//! The agent simulator: registers N systems through one connect key, holds their `OpenStream`
//! sessions open (each on its own HTTP/2 connection, as real agents do, unless told to share),
//! measures the server's CPU while they idle and its memory per connected agent (from `/proc`
//! when its process id is given), then runs one command on up to 1,000 of them and measures
//! how long each agent waits for its assignment. Each agent answers like the real one: started,
//! then finished with exit code 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use steward_proto::client::Steward;
use steward_proto::commands::v1::agent_service_client::AgentServiceClient;
use steward_proto::commands::v1::open_stream_request::{self, Hello, RunFinished, RunStarted};
use steward_proto::commands::v1::{
    open_stream_response, Command, ConnectKey, CreateCommandRequest, CreateConnectKeyRequest,
    Interpreter, OpenStreamRequest, RegisterAgentRequest, RunCommandRequest, RunState,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::BenchError;

/// How to simulate the fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Simulated agents.
    pub agents: usize,
    /// How long they idle before the run.
    pub idle: Duration,
    /// The server's process id, to read its CPU time and memory from `/proc` (Linux).
    pub server_pid: Option<u32>,
    /// Agents sharing one HTTP/2 connection (1: a connection each, like real agents).
    pub agents_per_connection: usize,
    /// Agents the run targets (at most [`MAX_TARGETS`], a command's limit).
    pub targets: usize,
    /// Longest wait, after the agents connected, for the server to go quiet (registering leaves
    /// audit events to relay) before the idle window starts.
    pub settle: Duration,
}

/// The most systems one command targets.
pub const MAX_TARGETS: usize = 1000;
/// Registrations in flight at once.
pub(crate) const REGISTERING: usize = 32;

/// What the fleet measured.
#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    /// Agents connected.
    pub agents: usize,
    /// The server's CPU while they idled, in % of one core (when its pid was given).
    pub idle_cpu_percent: Option<f64>,
    /// The server's CPU over as long before any agent connected, in % of one core: what the
    /// process spends idle anyway (background passes of every service it hosts).
    pub baseline_cpu_percent: Option<f64>,
    /// The server's resident memory before the agents connected and while they idled, KiB.
    pub server_rss_kib: Option<(u64, u64)>,
    /// Growth of the server's resident memory per connected agent, KiB.
    pub rss_per_agent_kib: Option<f64>,
    /// Agents the run targeted.
    pub targets: usize,
    /// Agents that received the run's assignment.
    pub assigned: usize,
    /// From RunCommand being sent to each agent receiving its assignment, milliseconds.
    pub assignment_p50_ms: f64,
    /// 99th percentile.
    pub assignment_p99_ms: f64,
    /// The slowest agent.
    pub assignment_max_ms: f64,
}

/// CPU seconds (user + system) of process `pid`, from `/proc/{pid}/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks, 100 per second on every supported architecture.
    Some((utime + stime) / 100.0)
}

/// Process `pid`'s CPU over the next `window`, in % of one core.
#[allow(clippy::disallowed_methods)] // wall-clock window by definition
async fn cpu_percent(pid: u32, window: Duration) -> Option<f64> {
    let before = cpu_seconds(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    Some((cpu_seconds(pid)? - before) / started.elapsed().as_secs_f64() * 100.0)
}

/// Waits until the server uses under a tenth of a core over a second, at most `longest` (or,
/// without its pid, a second).
#[allow(clippy::disallowed_methods)] // wall-clock waits by definition
async fn settle(pid: Option<u32>, longest: Duration) {
    let Some(pid) = pid else {
        tokio::time::sleep(longest.min(Duration::from_secs(1))).await;
        return;
    };
    let started = Instant::now();
    loop {
        let quiet = cpu_percent(pid, Duration::from_secs(1)).await.is_some_and(|c| c < 10.0);
        if quiet || started.elapsed() >= longest {
            return;
        }
    }
}

/// Resident memory of process `pid` in KiB, from `/proc/{pid}/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the fleet scenario against `client`'s server (`commands_url` serves the agent API).
pub async fn run(
    client: &Steward,
    organization: &str,
    commands_url: &str,
    ca_pem: Option<Vec<u8>>,
    options: &FleetOptions,
) -> Result<FleetReport, BenchError> {
    let targets = options.targets.clamp(1, MAX_TARGETS).min(options.agents);
    let key = client
        .systems()
        .create_connect_key(CreateConnectKeyRequest {
            parent: organization.to_string(),
            connect_key: Some(ConnectKey {
                display_name: "steward-bench".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .connect_key
        .map(|k| k.key)
        .unwrap_or_default();
    let rss_before = options.server_pid.and_then(rss_kib);
    let baseline_cpu_percent = match options.server_pid {
        Some(pid) => cpu_percent(pid, options.idle).await,
        None => None,
    };
    let endpoint = steward_proto::client::endpoint(commands_url.to_string(), ca_pem)?;
    let per_connection = options.agents_per_connection.max(1);
    let (assigned_tx, mut assigned_rx) = mpsc::unbounded_channel::<Instant>();
    let mut channels = Vec::with_capacity(options.agents.div_ceil(per_connection));
    for _ in 0..options.agents.div_ceil(per_connection) {
        channels.push(endpoint.connect().await?);
    }
    let joined: Vec<Result<(String, Session), BenchError>> =
        futures::stream::iter(channels.iter().flat_map(|c| std::iter::repeat_n(c, per_connection)))
            .take(options.agents)
            .enumerate()
            .map(|(i, channel)| {
                agent(channel.clone(), &key, format!("bench-{i}"), assigned_tx.clone())
            })
            .buffered(REGISTERING)
            .collect()
            .await;
    drop(channels);
    let mut systems = Vec::with_capacity(options.agents);
    let mut sessions = Vec::with_capacity(options.agents);
    for joined in joined {
        let (system, session) = joined?;
        systems.push(system);
        sessions.push(session);
    }
    settle(options.server_pid, options.settle).await;
    let rss_idle = options.server_pid.and_then(rss_kib);
    let idle_cpu_percent = match options.server_pid {
        Some(pid) => cpu_percent(pid, options.idle).await,
        None => {
            #[allow(clippy::disallowed_methods)] // the idle window is wall time by definition
            tokio::time::sleep(options.idle).await;
            None
        }
    };
    let command = client
        .commands()
        .create_command(CreateCommandRequest {
            parent: organization.to_string(),
            command: Some(Command {
                display_name: "steward-bench fleet".into(),
                script: "true".into(),
                interpreter: Interpreter::Sh as i32,
                timeout: Some(prost_types_duration(60)),
                target_systems: systems.into_iter().take(targets).collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .command
        .map(|c| c.name)
        .unwrap_or_default();
    let started = Instant::now();
    client.commands().run_command(RunCommandRequest { command, ..Default::default() }).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Options(e.to_string()))?;
    let deadline = started + Duration::from_secs(60);
    while histogram.len() < targets as u64 {
        let Ok(Some(at)) = tokio::time::timeout_at(deadline.into(), assigned_rx.recv()).await
        else {
            break;
        };
        let micros = u64::try_from(at.saturating_duration_since(started).as_micros());
        histogram.saturating_record(micros.unwrap_or(u64::MAX).max(1));
    }
    drop(sessions);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let server_rss_kib = rss_before.zip(rss_idle);
    Ok(FleetReport {
        agents: options.agents,
        idle_cpu_percent,
        baseline_cpu_percent,
        server_rss_kib,
        rss_per_agent_kib: server_rss_kib
            .filter(|_| options.agents > 0)
            .map(|(before, idle)| (idle.saturating_sub(before)) as f64 / options.agents as f64),
        targets,
        assigned: usize::try_from(histogram.len()).unwrap_or(usize::MAX),
        assignment_p50_ms: ms(0.5),
        assignment_p99_ms: ms(0.99),
        assignment_max_ms: histogram.max() as f64 / 1000.0,
    })
}

fn prost_types_duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

/// Registers one system and holds its session; answers assignments and reports when each
/// arrived. The session ends when the returned handle is dropped.
pub(crate) async fn agent(
    channel: Channel,
    connect_key: &str,
    hostname: String,
    assigned: mpsc::UnboundedSender<Instant>,
) -> Result<(String, Session), BenchError> {
    let mut client = AgentServiceClient::new(channel);
    let registered = client
        .register_agent(RegisterAgentRequest {
            connect_key: connect_key.to_string(),
            hostname,
            os: "linux".into(),
            agent_version: "steward-bench".into(),
        })
        .await?
        .into_inner();
    let system = registered.system.map(|s| s.name).unwrap_or_default();
    let (tx, rx) = mpsc::channel(16);
    let hello =
        open_stream_request::Message::Hello(Hello { agent_version: "steward-bench".into() });
    tx.send(OpenStreamRequest { message: Some(hello) })
        .await
        .map_err(|_| BenchError::Options("agent stream closed".into()))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", registered.credential)
        .parse()
        .map_err(|_| BenchError::Options("the agent credential is not a header value".into()))?;
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = client.open_stream(request).await?.into_inner();
    let task = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            let Some(open_stream_response::Message::Assignment(assignment)) = message.message
            else {
                continue;
            };
            let _ = assigned.send(Instant::now());
            let run = assignment.run;
            let started =
                open_stream_request::Message::RunStarted(RunStarted { run: run.clone(), pid: 1 });
            let finished = open_stream_request::Message::RunFinished(RunFinished {
                run,
                state: RunState::Succeeded as i32,
                exit_code: 0,
                ..Default::default()
            });
            for message in [started, finished] {
                if tx.send(OpenStreamRequest { message: Some(message) }).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok((system, Session(Arc::new(task))))
}

/// A held agent session; dropping it ends the stream.
pub struct Session(Arc<tokio::task::JoinHandle<()>>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.abort();
    }
}
