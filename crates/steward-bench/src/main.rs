//! `steward-bench`: loads a Steward server and prints a Markdown table of rates, latency
//! percentiles and ratios to an empty tonic server measured in the same run.

use std::time::Duration;

use clap::Parser;
use steward_bench::{Options, Scenario};

/// Measures Steward's RPCs at a fixed concurrency against an empty tonic server baseline.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Steward's URL.
    #[arg(long, env = "STEWARD_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// A CA certificate (PEM) to trust for an `https://` server.
    #[arg(long, env = "STEWARD_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Scenarios to run (comma-separated): health, check-access, get-administrator,
    /// list-administrators, sign-in, refresh-session, check-access-under-sign-in. Default: the
    /// first four, and the last three when `--email` is given. All but health, sign-in and
    /// refresh-session need `STEWARD_API_KEY`, the key of a service account that reads
    /// administrators and checks access (e.g. Read Only); the last three need people's
    /// `--email` and `STEWARD_PASSWORD` (without a second factor).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Calls in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Emails of people without a second factor (comma-separated), for the sign-in scenarios;
    /// they share the password in `STEWARD_PASSWORD`. Sign-in keeps four attempts in flight per
    /// person (one account's throttle admits five), so saturating the password hashing of a
    /// server takes a few people.
    #[arg(long, env = "STEWARD_EMAIL", value_delimiter = ',')]
    email: Vec<String>,
    /// Before list-administrators, invite Command Runners until the organization has this many
    /// administrators (the key's role must also hold `administrators.create` and what a
    /// Command Runner holds: `runs.read`, `runs.cancel`).
    #[arg(long)]
    organization_size: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Simulate this many agents (0: none): they idle for `--idle` seconds, then one command
    /// runs on all of them. The key's role must also create connect keys and commands and run
    /// them.
    #[arg(long, default_value_t = 0)]
    agents: usize,
    /// Seconds the simulated agents idle before the run.
    #[arg(long, default_value_t = 10)]
    idle: u64,
    /// The server's process id, to report its CPU and memory while the agents idle (Linux
    /// `/proc`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's password-hashing threads, on as many of which raw argon2id (sign-in's
    /// baseline) hashes. Default: counted in `--server-pid`'s threads, else the server's
    /// default for this machine (one fewer than the cores, 1 to 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    hashing_threads: Option<u16>,
    /// Simulated agents sharing one HTTP/2 connection (1: a connection each, like real agents;
    /// the server allows `server.max_concurrent_streams_per_connection` streams on one).
    #[arg(long, default_value_t = 1)]
    agents_per_connection: usize,
    /// Agents the run targets (at most 1,000, a command's limit; default: all, up to that).
    #[arg(long, default_value_t = steward_bench::fleet::MAX_TARGETS)]
    targets: usize,
    /// Longest wait, in seconds, for the server to go quiet once the agents are connected.
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Soak instead of measuring: a mixed load for this many seconds over every `--servers`
    /// URL, with `--agents` simulated agents, watching `--server-pids` for growth after
    /// `--warmup` seconds (see `scripts/soak.sh`). Exits 1 when the soak fails.
    #[arg(long)]
    soak: Option<u64>,
    /// The soak's servers (comma-separated URLs, each serving every public service).
    /// Default: `--server`.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// The soak's server process ids (comma-separated), watched through `/proc`.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Each soaked process's `/metrics` address (`host:port`, comma-separated, in
    /// `--server-pids` order), for its task count and pool connections.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Seconds of the soak after which nothing may grow.
    #[arg(long, default_value_t = 120)]
    warmup: u64,
    /// The soak's load as a fraction of the capacity it measures first.
    #[arg(long, default_value_t = 0.7)]
    utilization: f64,
    /// The soak's load in calls per second (instead of `--utilization`).
    #[arg(long)]
    rate: Option<f64>,
    /// During the soak, one command runs on this many agents every `--run-every` seconds.
    #[arg(long, default_value_t = 100)]
    run_targets: usize,
    /// Seconds between the soak's command runs.
    #[arg(long, default_value_t = 15)]
    run_every: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("steward-bench: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(seconds) = args.soak {
        return soak(args, seconds).await;
    }
    let password = std::env::var("STEWARD_PASSWORD").unwrap_or_default();
    let people: Vec<(String, String)> =
        args.email.into_iter().map(|email| (email, password.clone())).collect();
    let scenarios = if args.scenario.is_empty() {
        let people = if people.is_empty() { &[][..] } else { &Scenario::PEOPLE[..] };
        Scenario::STEWARD.iter().chain(people).copied().collect()
    } else {
        args.scenario
            .iter()
            .map(|name| Scenario::parse(name).ok_or_else(|| format!("unknown scenario `{name}`")))
            .collect::<Result<Vec<_>, _>>()?
    };
    let options = Options {
        server: args.server,
        ca_pem: args.ca_file.map(std::fs::read).transpose()?,
        api_key: std::env::var("STEWARD_API_KEY").ok().filter(|k| !k.is_empty()),
        duration: Duration::from_secs(args.seconds.max(1)),
        concurrency: args.concurrency.max(1),
        connections: args.connections.max(1),
        fleet: (args.agents > 0).then(|| steward_bench::fleet::FleetOptions {
            agents: args.agents,
            idle: Duration::from_secs(args.idle),
            server_pid: args.server_pid,
            agents_per_connection: args.agents_per_connection,
            targets: args.targets,
            settle: Duration::from_secs(args.settle),
        }),
        people,
        organization_size: args.organization_size,
        hashing_threads: args
            .hashing_threads
            .map(usize::from)
            .or_else(|| {
                args.server_pid.and_then(steward_bench::argon2_baseline::hashing_threads_of)
            })
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                cores.saturating_sub(1).clamp(1, 4)
            }),
    };
    let report = steward_bench::run(&options, &scenarios).await?;
    print!("{}", report.markdown());
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// `--soak`: runs the soak and prints (and with `--json` writes) its report.
async fn soak(args: Args, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let options = steward_bench::soak::SoakOptions {
        servers: if args.servers.is_empty() { vec![args.server] } else { args.servers },
        pids: if args.server_pids.is_empty() {
            args.server_pid.into_iter().collect()
        } else {
            args.server_pids
        },
        metrics: args.metrics,
        ca_pem: args.ca_file.map(std::fs::read).transpose()?,
        api_key: std::env::var("STEWARD_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or("the soak needs a service account's key in STEWARD_API_KEY")?,
        duration: Duration::from_secs(seconds.max(1)),
        warmup: Duration::from_secs(args.warmup),
        rate: args.rate,
        utilization: args.utilization,
        agents: args.agents,
        run_targets: args.run_targets,
        run_every: Duration::from_secs(args.run_every.max(1)),
        sample_every: Duration::from_secs(10),
        calibration: Duration::from_secs(10),
    };
    let report = steward_bench::soak::run(&options).await?;
    print!("{}", report.markdown());
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err("the soak failed (see the verdict above)".into())
    }
}
