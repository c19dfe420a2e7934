//! The real `steward-agent` binary against a real stack: registration, execution, output,
//! timeouts, cancellation, truncation, restart with the stored credential, and refusals.
//!
//! Needs the agent built next to the test executable: `cargo build -p steward-agent` first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use steward_proto::commands::v1::{
    CancelRunRequest, Command, ConnectKey, CreateCommandRequest, CreateConnectKeyRequest,
    DeleteConnectKeyRequest, DeleteSystemRequest, GetRunRequest, Interpreter, ListSystemsRequest,
    Run, RunCommandRequest, RunState, System,
};
use steward_server::ServiceKind;

use crate::harness::{Owner, Stack};

/// The agent binary, built by `cargo build -p steward-agent` into the same target directory.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("steward-agent");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p steward-agent` before the e2e tests",
        path.display()
    );
    path
}

/// A running agent process; killed when dropped.
pub(crate) struct AgentProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl AgentProcess {
    pub(crate) fn spawn(
        url: &str,
        connect_key: Option<&str>,
        state_dir: &Path,
        extra: &[&str],
    ) -> Self {
        let log = state_dir.with_extension(format!("{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = tokio::process::Command::new(agent_binary());
        command
            .arg("--server")
            .arg(url)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--hostname")
            .arg("e2e-host")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        if let Some(key) = connect_key {
            command.arg("--connect-key").arg(key);
        }
        Self { child: command.spawn().unwrap(), log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; returns its status and log.
    pub(crate) async fn exits_within(
        &mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("the agent did not exit within {limit:?}; log:\n{}", self.log())
            })
            .unwrap();
        (status, self.log())
    }

    pub(crate) async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

pub(crate) async fn connect_key(owner: &Owner) -> (String, String) {
    let key = owner
        .client
        .systems()
        .create_connect_key(CreateConnectKeyRequest {
            parent: owner.org.clone(),
            connect_key: Some(ConnectKey {
                display_name: "e2e agents".into(),
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .connect_key
        .unwrap();
    assert!(!key.key.is_empty());
    (key.name, key.key)
}

async fn systems(owner: &Owner) -> Vec<System> {
    owner
        .client
        .systems()
        .list_systems(ListSystemsRequest {
            parent: owner.org.clone(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .systems
}

/// Waits until exactly one system exists and is connected.
pub(crate) async fn connected_system(owner: &Owner, agent: &AgentProcess) -> System {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = systems(owner).await;
        if let [system] = list.as_slice() {
            if system.connected {
                return system.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connected system: {list:?}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn command(
    owner: &Owner,
    system: &str,
    script: &str,
    timeout_secs: i64,
) -> String {
    command_on(owner, &[system.to_string()], script, timeout_secs).await
}

/// Creates a `sh` command targeting `systems`; returns its name.
pub(crate) async fn command_on(
    owner: &Owner,
    systems: &[String],
    script: &str,
    timeout_secs: i64,
) -> String {
    owner
        .client
        .commands()
        .create_command(CreateCommandRequest {
            parent: owner.org.clone(),
            command: Some(Command {
                display_name: format!("e2e {}", uuid::Uuid::new_v4().simple()),
                script: script.into(),
                interpreter: Interpreter::Sh as i32,
                timeout: Some(prost_types::Duration { seconds: timeout_secs, nanos: 0 }),
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
        .name
}

pub(crate) async fn start_run(owner: &Owner, command: &str) -> String {
    owner
        .client
        .commands()
        .run_command(RunCommandRequest {
            command: command.into(),
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

pub(crate) async fn get_run(owner: &Owner, run: &str) -> Run {
    owner
        .client
        .commands()
        .get_run(GetRunRequest { name: run.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
}

/// Polls the run until `done` holds.
pub(crate) async fn wait_run(
    owner: &Owner,
    agent: &AgentProcess,
    run: &str,
    done: impl Fn(&Run) -> bool,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = get_run(owner, run).await;
        if done(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "run never got there: {current:?}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn finished(run: &Run) -> bool {
    ![RunState::Queued as i32, RunState::Running as i32, RunState::Unspecified as i32]
        .contains(&run.state)
}

/// Runs `script` to its end on the system and returns the finished run.
async fn run_script(
    owner: &Owner,
    agent: &AgentProcess,
    system: &str,
    script: &str,
    timeout_secs: i64,
) -> Run {
    let command = command(owner, system, script, timeout_secs).await;
    let run = start_run(owner, &command).await;
    wait_run(owner, agent, &run, finished).await
}

/// Whether the process is gone (or a zombie nobody reaps in this container).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            matches!(stat.rsplit(')').next().unwrap().trim_start().chars().next(), Some('Z' | 'X'))
        }
    }
}

/// Waits (up to 5 s) for the process to be gone: the kill is delivered asynchronously.
async fn disappears(pid: u32) -> bool {
    for _ in 0..100 {
        if gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn uname_s() -> String {
    String::from_utf8(std::process::Command::new("uname").arg("-s").output().unwrap().stdout)
        .unwrap()
}

backend_test!(agent_executes_commands, |stack| async move {
    let stack: Stack = stack;
    let owner = stack.owner().await;
    let (_, key) = connect_key(&owner).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let url = stack.url(ServiceKind::Commands);
    let mut agent = AgentProcess::spawn(&url, Some(&key), &state, &["--max-output-bytes", "1000"]);

    let system = connected_system(&owner, &agent).await;
    assert_eq!(system.hostname, "e2e-host");
    assert_eq!(system.os, std::env::consts::OS);
    assert_eq!(system.agent_version, env!("CARGO_PKG_VERSION"));
    let credential_file = state.join("credential.json");
    let mode = std::fs::metadata(&credential_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&credential_file).unwrap()).unwrap();
    assert_eq!(stored["system"], system.name.as_str());
    assert!(stored["credential"].as_str().is_some_and(|c| !c.is_empty()));

    // echo / uname: exact output and exit code.
    let run = run_script(&owner, &agent, &system.name, "echo hello world\nuname -s\n", 30).await;
    assert_eq!(run.state, RunState::Succeeded as i32, "{run:?}");
    let result = &run.results[0];
    assert_eq!(result.system, system.name);
    assert_eq!(result.state, RunState::Succeeded as i32);
    assert_eq!(result.exit_code, 0);
    assert_eq!(
        String::from_utf8(result.stdout.clone()).unwrap(),
        format!("hello world\n{}", uname_s())
    );
    assert!(result.stderr.is_empty());
    assert!(!result.stdout_truncated && !result.stderr_truncated);
    assert!(result.start_time.is_some() && result.end_time.is_some());
    assert_eq!(result.error_message, "");

    // Non-zero exit: failed, with its code and stderr.
    let run = run_script(&owner, &agent, &system.name, "echo oops >&2\nexit 3\n", 30).await;
    assert_eq!(run.state, RunState::Failed as i32);
    assert_eq!(run.results[0].exit_code, 3);
    assert_eq!(run.results[0].stderr, b"oops\n");

    // Over its timeout: timed out, and the process (and its child) are gone.
    let run = run_script(&owner, &agent, &system.name, "sleep 30 &\necho $!\nwait\n", 1).await;
    assert_eq!(run.state, RunState::TimedOut as i32, "{run:?}");
    let sleeper: u32 =
        String::from_utf8(run.results[0].stdout.clone()).unwrap().trim().parse().unwrap();
    assert!(disappears(sleeper).await, "the timed-out process {sleeper} is gone");

    // Output over the agent's bound (1000 bytes): truncated and marked.
    let run = run_script(
        &owner,
        &agent,
        &system.name,
        "head -c 5000 /dev/zero | tr '\\0' x\necho tail >&2\n",
        30,
    )
    .await;
    assert_eq!(run.state, RunState::Succeeded as i32);
    assert_eq!(run.results[0].stdout, vec![b'x'; 1000]);
    assert!(run.results[0].stdout_truncated);
    assert_eq!(run.results[0].stderr, b"tail\n");
    assert!(!run.results[0].stderr_truncated);

    // Cancel a running command.
    let command =
        command(&owner, &system.name, "echo started\nsleep 30 &\necho $!\nwait\n", 60).await;
    let run_name = start_run(&owner, &command).await;
    let running = wait_run(&owner, &agent, &run_name, |r| {
        r.state == RunState::Running as i32
            && r.results[0].stdout.split(|b| *b == b'\n').count() >= 3
    })
    .await;
    let output = String::from_utf8(running.results[0].stdout.clone()).unwrap();
    let sleeper: u32 = output.lines().nth(1).unwrap().parse().unwrap();
    owner.client.commands().cancel_run(CancelRunRequest { name: run_name.clone() }).await.unwrap();
    // The run is CANCELLED at once; its system's result once the agent confirms the kill.
    let run = wait_run(&owner, &agent, &run_name, |r| {
        finished(r) && r.results[0].state != RunState::Running as i32
    })
    .await;
    assert_eq!(run.state, RunState::Cancelled as i32, "{run:?}");
    assert_eq!(run.results[0].state, RunState::Cancelled as i32);
    assert!(disappears(sleeper).await, "the cancelled process {sleeper} is gone");

    agent.kill().await;
});

backend_test!(agent_restarts_with_its_credential_and_is_refused_when_deleted, |stack| async move {
    let stack: Stack = stack;
    let owner = stack.owner().await;
    let (key_name, key) = connect_key(&owner).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let url = stack.url(ServiceKind::Commands);

    let mut agent = AgentProcess::spawn(&url, Some(&key), &state, &[]);
    let system = connected_system(&owner, &agent).await;
    agent.kill().await;

    // Restart without the connect key: the stored credential is used, no new system appears,
    // and new runs are executed.
    let mut agent = AgentProcess::spawn(&url, None, &state, &[]);
    let again = connected_system(&owner, &agent).await;
    assert_eq!(again.name, system.name);
    let run = run_script(&owner, &agent, &system.name, "echo back", 30).await;
    assert_eq!(run.state, RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.results[0].stdout, b"back\n");

    // A revoked connect key cannot register another agent.
    owner
        .client
        .systems()
        .delete_connect_key(DeleteConnectKeyRequest { name: key_name })
        .await
        .unwrap();
    let mut refused = AgentProcess::spawn(&url, Some(&key), &dir.path().join("other"), &[]);
    let (status, log) = refused.exits_within(Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(log.contains("registration refused"), "{log}");
    assert!(!dir.path().join("other").join("credential.json").exists());
    assert_eq!(systems(&owner).await.len(), 1);

    // Deleting the system closes the agent's stream and the agent stops with an error.
    owner
        .client
        .systems()
        .delete_system(DeleteSystemRequest { name: system.name.clone(), etag: String::new() })
        .await
        .unwrap();
    let (status, log) = agent.exits_within(Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(log.contains("refused this agent's credential"), "{log}");

    // And a restart with the stored credential is refused at once.
    let mut restarted = AgentProcess::spawn(&url, None, &state, &[]);
    let (status, log) = restarted.exits_within(Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(log.contains("refused this agent's credential"), "{log}");
});

backend_test!(agent_without_credential_or_key_exits, |stack| async move {
    let stack: Stack = stack;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::spawn(
        &stack.url(ServiceKind::Commands),
        None,
        &dir.path().join("state"),
        &[],
    );
    let (status, log) = agent.exits_within(Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(log.contains("not registered"), "{log}");
});

/// Sends `signal` (e.g. "TERM") to the agent process.
fn signal(agent: &AgentProcess, signal: &str) {
    let pid = agent.child.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

backend_test!(agent_stopped_or_killed_during_a_run, |stack| async move {
    let stack: Stack = stack;
    let owner = stack.owner().await;
    let (_, key) = connect_key(&owner).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let url = stack.url(ServiceKind::Commands);
    let mut agent = AgentProcess::spawn(&url, Some(&key), &state, &[]);
    let system = connected_system(&owner, &agent).await;
    let script = "echo started\nsleep 30 &\necho $!\nwait\n";
    let has_pid = |r: &Run| {
        r.state == RunState::Running as i32
            && r.results[0].stdout.split(|b| *b == b'\n').count() >= 3
    };
    let pid_of = |r: &Run| -> u32 {
        String::from_utf8(r.results[0].stdout.clone())
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };

    // SIGTERM: the agent kills its runs, reports them failed, and exits cleanly.
    let command = command(&owner, &system.name, script, 60).await;
    let run = start_run(&owner, &command).await;
    let sleeper = pid_of(&wait_run(&owner, &agent, &run, has_pid).await);
    signal(&agent, "TERM");
    let (status, log) = agent.exits_within(Duration::from_secs(20)).await;
    assert!(status.success(), "{log}");
    let ended = wait_run(&owner, &agent, &run, finished).await;
    assert_eq!(ended.state, RunState::Failed as i32);
    assert_eq!(ended.results[0].error_message, "killed because the agent was stopped");
    assert!(disappears(sleeper).await, "the stopped agent's process {sleeper} is gone");

    // SIGKILL: the service ends the run failed once the agent is past its deadline.
    let mut agent = AgentProcess::spawn(&url, None, &state, &[]);
    connected_system(&owner, &agent).await;
    let run = start_run(&owner, &command).await;
    let sleeper = pid_of(&wait_run(&owner, &agent, &run, has_pid).await);
    agent.kill().await;
    stack
        .clock
        .advance(Duration::from_secs(steward_commands::agent::AGENT_DEADLINE_SECS as u64 + 5));
    let ended = wait_run(&owner, &agent, &run, finished).await;
    assert_eq!(ended.state, RunState::Failed as i32, "{ended:?}");
    // A SIGKILLed agent cannot kill its children; clean up the orphan.
    let _ = std::process::Command::new("kill").arg("-KILL").arg(sleeper.to_string()).status();

    // Restarted, it reconnects and takes new runs.
    let agent = AgentProcess::spawn(&url, None, &state, &[]);
    let run = run_script(&owner, &agent, &system.name, "echo again", 30).await;
    assert_eq!(run.state, RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.results[0].stdout, b"again\n");
});

// Two replicas on one database: the real agent holds its stream on the replica, the run is
// created through the primary, and the output comes back exact.
backend_test!(agent_on_one_replica_runs_what_the_other_created, |stack| async move {
    let mut stack: Stack = stack;
    let replica = stack.add_replica().await;
    let owner = stack.owner().await;
    let (_, key) = connect_key(&owner).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let agent = AgentProcess::spawn(&replica, Some(&key), &state, &[]);
    let system = connected_system(&owner, &agent).await;
    let primary = stack.url(ServiceKind::Commands);
    assert_ne!(primary, replica);
    for i in 0..2 {
        let run = run_script(&owner, &agent, &system.name, &format!("echo round {i}"), 30).await;
        assert_eq!(run.state, RunState::Succeeded as i32, "{run:?}");
        assert_eq!(run.results[0].stdout, format!("round {i}\n").into_bytes());
        assert_eq!(run.results[0].exit_code, 0);
    }
    // The run is visible the same way from the replica that executed it.
    let created = command(&owner, &system.name, "echo seen", 30).await;
    let run = start_run(&owner, &created).await;
    wait_run(&owner, &agent, &run, finished).await;
    let via_replica = stack
        .client_at(&replica)
        .await
        .with_token(&owner.tokens.access_token)
        .unwrap()
        .commands()
        .get_run(GetRunRequest { name: run.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(via_replica.state, RunState::Succeeded as i32);
    assert_eq!(via_replica.results[0].stdout, b"seen\n");
});

// server.max_connection_age_secs: an idle agent stream past its age is ended and the agent
// reconnects at once (to any replica, on a new connection); a stream with a run executing is
// kept until the run is over, so nothing of it crosses a reconnect.
backend_test!(
    agent_streams_are_recycled_when_idle_and_past_their_age,
    start = |backend| Stack::start_with(backend, |config| {
        config.server.max_connection_age_secs = 1;
        config.streams.agent_heartbeat_secs = 1;
    }),
    |stack| async move {
        let stack: Stack = stack;
        let owner = stack.owner().await;
        let (_, key) = connect_key(&owner).await;
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentProcess::spawn(
            &stack.url(ServiceKind::Commands),
            Some(&key),
            &dir.path().join("state"),
            &[],
        );
        let system = connected_system(&owner, &agent).await;
        let opened = |agent: &AgentProcess| agent.log().matches("work stream open").count();
        let deadline = Instant::now() + Duration::from_secs(30);
        while opened(&agent) < 3 {
            assert!(Instant::now() < deadline, "no reconnect:\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A run longer than the age keeps its stream: one start, all the output, its exit code.
        let before = opened(&agent);
        let run =
            run_script(&owner, &agent, &system.name, "echo begun\nsleep 3\necho done\n", 30).await;
        assert_eq!(run.state, RunState::Succeeded as i32, "{run:?}\n{}", agent.log());
        let result = &run.results[0];
        assert_eq!(String::from_utf8(result.stdout.clone()).unwrap(), "begun\ndone\n");
        assert!(!agent.log().contains("reporting its start again"), "{}", agent.log());
        // And the recycling goes on once it is idle again.
        while opened(&agent) <= before + 1 {
            assert!(Instant::now() < deadline + Duration::from_secs(30), "{}", agent.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
);

// GetRun's output budget: an answer carries at most 2 MiB of output, systems in the run's order
// until the next would exceed it; the rest are marked `output_omitted` and each can be asked for
// with `output_system`. Three agents each print 900,000 bytes: two fit, the third does not.
backend_test!(get_run_carries_at_most_its_output_budget, |stack| async move {
    let stack: Stack = stack;
    let owner = stack.owner().await;
    let (_, key) = connect_key(&owner).await;
    let dir = tempfile::tempdir().unwrap();
    let url = stack.url(ServiceKind::Commands);
    let agents: Vec<AgentProcess> = (0..3)
        .map(|i| AgentProcess::spawn(&url, Some(&key), &dir.path().join(format!("s{i}")), &[]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut names: Vec<String> = loop {
        let list = systems(&owner).await;
        if list.len() == 3 && list.iter().all(|s| s.connected) {
            break list.into_iter().map(|s| s.name).collect();
        }
        assert!(Instant::now() < deadline, "agents never connected: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    names.sort();
    const EACH: usize = 900_000;
    let script = format!("head -c {EACH} /dev/zero | tr '\\0' x\n");
    let created = command_on(&owner, &names, &script, 60).await;
    let run = start_run(&owner, &created).await;
    let done = wait_run(&owner, &agents[0], &run, finished).await;
    assert_eq!(done.state, RunState::Succeeded as i32, "{done:?}");

    let get = |output_system: &str| {
        let request = GetRunRequest { name: run.clone(), output_system: output_system.into() };
        let mut client = owner.client.commands();
        async move { client.get_run(request).await.map(|r| r.into_inner().run.unwrap()) }
    };
    let full = vec![b'x'; EACH];
    // Without `output_system`: the first two systems in the run's order, whole; the third left out.
    let budgeted = get("").await.unwrap();
    let carried: Vec<bool> = budgeted.results.iter().map(|r| !r.output_omitted).collect();
    assert_eq!(carried, [true, true, false], "{:?}", budgeted.results.len());
    for r in &budgeted.results[..2] {
        assert!(r.stdout == full && !r.stdout_truncated, "{}: {} bytes", r.system, r.stdout.len());
    }
    assert!(budgeted.results[2].stdout.is_empty());
    assert_eq!(budgeted.results[2].state, RunState::Succeeded as i32);
    // The omitted one, asked for by name: whole, and the others left out this time.
    let third = budgeted.results[2].system.clone();
    let one = get(&third).await.unwrap();
    for r in &one.results {
        assert_eq!(r.output_omitted, r.system != third, "{}", r.system);
        assert_eq!(r.stdout.len(), if r.system == third { EACH } else { 0 });
    }
    // A system the run does not target, or not a system name at all: INVALID_ARGUMENT.
    let other = format!("{}/systems/{}", owner.org, uuid::Uuid::new_v4().simple());
    for bad in [other.as_str(), "systems/x", "not a name"] {
        let status = get(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}: {status:?}");
        assert!(status.message().contains("output_system"), "{status:?}");
    }
    drop(agents);
});
