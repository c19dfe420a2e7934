//! The executor with real processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use steward_agent::executor::{Event, Executor, Finish, Identity, Job, Stop};
use steward_proto::commands::v1::{Interpreter, OutputStream, RunState};
use tokio::sync::{mpsc, oneshot};

/// What a finished job produced.
struct Outcome {
    finish: Finish,
    pid: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    events: Vec<Event>,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap()
    }
    fn stderr(&self) -> String {
        String::from_utf8(self.stderr.clone()).unwrap()
    }
}

fn job(interpreter: Interpreter, script: &str) -> Job {
    Job {
        run: "organizations/o/runs/r1".into(),
        script: script.into(),
        interpreter,
        run_as_user: String::new(),
        timeout: Duration::from_secs(20),
    }
}

async fn run_with(executor: &Executor, job: &Job, stop: oneshot::Receiver<Stop>) -> Outcome {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let finish = executor.execute(job, stop, tx).await;
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    let mut outcome = Outcome { finish, pid: None, stdout: Vec::new(), stderr: Vec::new(), events };
    for event in &outcome.events {
        match event {
            Event::Started { pid } => outcome.pid = Some(*pid),
            Event::Output { stream, data, offset } => {
                let buf = match stream {
                    OutputStream::Stdout => &mut outcome.stdout,
                    OutputStream::Stderr => &mut outcome.stderr,
                    OutputStream::Unspecified => panic!("unspecified stream"),
                };
                assert_eq!(*offset, buf.len() as u64, "offsets are contiguous");
                buf.extend_from_slice(data);
            }
        }
    }
    outcome
}

async fn run(job: &Job) -> Outcome {
    let (_keep, stop) = oneshot::channel();
    run_with(&Executor::new(1024 * 1024), job, stop).await
}

/// Whether the process is gone (reaped, or a zombie waiting for a reaper that may not exist in
/// this container).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap().trim_start().chars().next().unwrap();
            state == 'Z' || state == 'X'
        }
    }
}

fn uname(flag: &str) -> String {
    let out = std::process::Command::new("uname").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn echo_and_uname_output_and_exit_code_are_exact() {
    let outcome =
        run(&job(Interpreter::Sh, "echo hello world\nuname -s\necho to-stderr >&2\n")).await;
    assert_eq!(outcome.finish.state, RunState::Succeeded);
    assert_eq!(outcome.finish.exit_code, 0);
    assert_eq!(outcome.finish.error_message, "");
    assert!(!outcome.finish.stdout_truncated && !outcome.finish.stderr_truncated);
    assert_eq!(outcome.stdout(), format!("hello world\n{}", uname("-s")));
    assert_eq!(outcome.stderr(), "to-stderr\n");
    assert!(outcome.pid.is_some());
    assert!(matches!(outcome.events.first(), Some(Event::Started { .. })), "Started comes first");
}

#[tokio::test]
async fn bash_and_python_interpreters() {
    let outcome = run(&job(Interpreter::Bash, "echo \"${BASH_VERSION:+bash}\"; exit 0")).await;
    assert_eq!(outcome.finish.state, RunState::Succeeded);
    assert_eq!(outcome.stdout(), "bash\n");

    let outcome =
        run(&job(Interpreter::Python3, "import sys\nprint('py', sys.version_info[0])\n")).await;
    assert_eq!(outcome.finish.state, RunState::Succeeded, "{:?}", outcome.finish);
    assert_eq!(outcome.stdout(), "py 3\n");
}

#[tokio::test]
async fn nonzero_exit_is_failed_with_its_code() {
    let outcome = run(&job(Interpreter::Sh, "echo partial\nexit 3")).await;
    assert_eq!(outcome.finish.state, RunState::Failed);
    assert_eq!(outcome.finish.exit_code, 3);
    assert_eq!(outcome.finish.error_message, "");
    assert_eq!(outcome.stdout(), "partial\n");
}

#[tokio::test]
async fn missing_interpreter_fails_without_starting() {
    let outcome = run(&job(Interpreter::Unspecified, "echo hi")).await;
    assert_eq!(outcome.finish.state, RunState::Failed);
    assert_eq!(outcome.finish.exit_code, 0);
    assert_eq!(outcome.finish.error_message, "unsupported interpreter INTERPRETER_UNSPECIFIED");
    assert!(outcome.events.is_empty());
    if std::path::Path::new("/usr/bin/pwsh").exists()
        || std::path::Path::new("/usr/local/bin/pwsh").exists()
    {
        return;
    }
    let outcome = run(&job(Interpreter::Powershell, "Write-Output hi")).await;
    assert_eq!(outcome.finish.state, RunState::Failed);
    assert!(
        outcome.finish.error_message.starts_with("interpreter pwsh not found"),
        "{}",
        outcome.finish.error_message
    );
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let mut job = job(Interpreter::Bash, "sleep 30 &\necho $!\nwait\n");
    job.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let outcome = run(&job).await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(outcome.finish.state, RunState::TimedOut);
    assert_eq!(outcome.finish.exit_code, 137);
    assert_eq!(outcome.finish.error_message, "killed after the timeout of 1s");
    let pid = outcome.pid.unwrap();
    let grandchild: u32 = outcome.stdout().trim().parse().unwrap();
    assert_ne!(pid, grandchild);
    assert!(gone(pid), "the shell {pid} is gone");
    assert!(gone(grandchild), "the background sleep {grandchild} is gone");
}

#[tokio::test]
async fn cancel_kills_a_running_command() {
    let job = job(Interpreter::Sh, "echo started\nsleep 30 &\necho $!\nwait\n");
    let (stop_tx, stop_rx) = oneshot::channel();
    let executor = Executor::new(1024);
    let handle = tokio::spawn({
        let job = job.clone();
        async move { run_with(&executor, &job, stop_rx).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    stop_tx.send(Stop::Cancel).unwrap();
    let outcome = handle.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(outcome.finish.state, RunState::Cancelled);
    assert_eq!(outcome.finish.error_message, "cancelled");
    let lines: Vec<&str> =
        outcome.stdout.split(|b| *b == b'\n').map(|l| std::str::from_utf8(l).unwrap()).collect();
    assert_eq!(lines.first(), Some(&"started"));
    let grandchild: u32 = lines.get(1).unwrap().parse().unwrap();
    assert!(gone(outcome.pid.unwrap()));
    assert!(gone(grandchild));
}

#[tokio::test]
async fn shutdown_stop_reports_failed() {
    let (stop_tx, stop_rx) = oneshot::channel();
    stop_tx.send(Stop::Shutdown).unwrap();
    let outcome = run_with(&Executor::new(1024), &job(Interpreter::Sh, "sleep 30"), stop_rx).await;
    assert_eq!(outcome.finish.state, RunState::Failed);
    assert_eq!(outcome.finish.error_message, "killed because the agent was stopped");
    assert!(gone(outcome.pid.unwrap()));
}

#[tokio::test]
async fn output_over_the_limit_is_truncated_and_marked() {
    // 200 000 bytes on stdout, 10 bytes on stderr; limit 50 000.
    let script = "head -c 200000 /dev/zero | tr '\\0' 'a'\nprintf '0123456789' >&2\nexit 0\n";
    let (_keep, stop) = oneshot::channel();
    let outcome = run_with(&Executor::new(50_000), &job(Interpreter::Sh, script), stop).await;
    assert_eq!(outcome.finish.state, RunState::Succeeded, "the writer was never blocked");
    assert!(outcome.finish.stdout_truncated);
    assert!(!outcome.finish.stderr_truncated);
    assert_eq!(outcome.stdout.len(), 50_000);
    assert!(outcome.stdout.iter().all(|b| *b == b'a'));
    assert_eq!(outcome.stderr(), "0123456789");
}

#[tokio::test]
async fn output_is_streamed_while_running() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_keep, stop) = oneshot::channel();
    let job = job(Interpreter::Sh, "echo first\nsleep 2\necho second\n");
    let handle = tokio::spawn(async move { Executor::new(1024).execute(&job, stop, tx).await });
    let started = Instant::now();
    let mut first = None;
    while let Some(event) = rx.recv().await {
        if let Event::Output { data, .. } = event {
            first = Some((data, started.elapsed()));
            break;
        }
    }
    let (data, at) = first.unwrap();
    assert_eq!(data, b"first\n");
    assert!(at < Duration::from_millis(1500), "first chunk arrived after {at:?}");
    assert_eq!(handle.await.unwrap().state, RunState::Succeeded);
}

#[tokio::test]
async fn environment_is_cleaned() {
    std::env::set_var("STEWARD_AGENT_TEST_SECRET", "leaked");
    let outcome = run(&job(Interpreter::Sh, "env | sort\n")).await;
    assert_eq!(outcome.finish.state, RunState::Succeeded);
    let stdout = outcome.stdout();
    let vars: Vec<&str> = stdout.lines().collect();
    assert!(!stdout.contains("STEWARD_AGENT_TEST_SECRET"), "{stdout}");
    assert!(!stdout.contains("leaked"));
    assert!(!stdout.contains("CARGO"), "{stdout}");
    assert!(vars.contains(&"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    assert!(vars.contains(&"LANG=C.UTF-8"));
    assert!(vars.contains(&"STEWARD_RUN=organizations/o/runs/r1"));
    assert!(vars.iter().any(|v| v.starts_with("HOME=")));
    let names: Vec<&str> = vars.iter().filter_map(|v| v.split('=').next()).collect();
    for name in names {
        assert!(
            [
                "HOME",
                "LANG",
                "LOGNAME",
                "PATH",
                "PWD",
                "SHLVL",
                "STEWARD_RUN",
                "USER",
                "_",
                "OLDPWD"
            ]
            .contains(&name),
            "unexpected variable {name} in {stdout}"
        );
    }
}

#[tokio::test]
async fn stdin_is_null() {
    let outcome = run(&job(Interpreter::Sh, "cat; echo done")).await;
    assert_eq!(outcome.finish.state, RunState::Succeeded);
    assert_eq!(outcome.stdout(), "done\n");
}

#[tokio::test]
async fn run_as_another_user_as_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let mut job = job(Interpreter::Sh, "id -u\nid -g\necho \"$USER\"\n");
    job.run_as_user = "nobody".into();
    let outcome = run(&job).await;
    assert_eq!(
        outcome.finish.state,
        RunState::Succeeded,
        "{:?} {}",
        outcome.finish,
        outcome.stderr()
    );
    assert_eq!(
        outcome.stdout(),
        format!("{}\n{}\nnobody\n", nobody.uid.as_raw(), nobody.gid.as_raw())
    );
}

#[tokio::test]
async fn run_as_another_user_refused_when_not_root() {
    let identity =
        Identity { is_root: false, user_name: Some("agent".into()), home: PathBuf::from("/") };
    let executor = Executor::with_identity(1024, identity);
    let mut job = job(Interpreter::Sh, "touch /tmp/steward-agent-must-not-run");
    job.run_as_user = "nobody".into();
    let (_keep, stop) = oneshot::channel();
    let outcome = run_with(&executor, &job, stop).await;
    assert_eq!(outcome.finish.state, RunState::Failed);
    assert_eq!(outcome.finish.exit_code, 0);
    assert_eq!(outcome.finish.error_message, "agent is not root; cannot run as nobody");
    assert!(outcome.events.is_empty(), "nothing was started");
}

#[tokio::test]
async fn run_as_unknown_user_refused() {
    let mut job = job(Interpreter::Sh, "echo hi");
    job.run_as_user = "no-such-user-steward".into();
    let identity =
        Identity { is_root: true, user_name: Some("root".into()), home: PathBuf::from("/root") };
    let (_keep, stop) = oneshot::channel();
    let outcome = run_with(&Executor::with_identity(1024, identity), &job, stop).await;
    assert_eq!(outcome.finish.state, RunState::Failed);
    assert_eq!(outcome.finish.error_message, "no such user on this system: no-such-user-steward");
    assert!(outcome.events.is_empty());
}
