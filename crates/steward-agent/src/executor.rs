//! Executes one assignment: the script with its interpreter, in its own process group, with a
//! cleaned environment, as the run-as user, bounded in time and in captured output.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};
use steward_proto::commands::v1::open_stream_response::Assignment;
use steward_proto::commands::v1::{Interpreter, OutputStream, RunState};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

/// The `PATH` given to every run, and searched for the interpreter.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The timeout used when an assignment carries none (the command default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How long output readers may go on after the process group is gone; only a process that
/// left the group (setsid) and kept the pipe open makes them wait that long.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The size of one read from a pipe, and so the largest output chunk.
const READ_BUFFER: usize = 32 * 1024;

/// One assignment, as the executor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The resource name of the run (exported to the script as `STEWARD_RUN`).
    pub run: String,
    /// The script text.
    pub script: String,
    /// The interpreter.
    pub interpreter: Interpreter,
    /// The account to run as; empty means the agent's own.
    pub run_as_user: String,
    /// The maximum run time.
    pub timeout: Duration,
}

impl Job {
    /// The job of an assignment; a missing or non-positive timeout becomes [`DEFAULT_TIMEOUT`].
    pub fn from_assignment(assignment: Assignment) -> Self {
        let timeout = assignment
            .timeout
            .and_then(|d| {
                let secs = u64::try_from(d.seconds).ok()?;
                let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
                Some(Duration::new(secs, nanos))
            })
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_TIMEOUT);
        Self {
            interpreter: Interpreter::try_from(assignment.interpreter)
                .unwrap_or(Interpreter::Unspecified),
            run: assignment.run,
            script: assignment.script,
            run_as_user: assignment.run_as_user,
            timeout,
        }
    }
}

/// Progress of a job while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The process was started.
    Started {
        /// Its process ID (also its process group ID).
        pid: u32,
    },
    /// Output, within the bound.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Vec<u8>,
        /// The offset of `data` within the stream.
        offset: u64,
    },
}

/// Why a job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The service cancelled the run: it ends [`RunState::Cancelled`].
    Cancel,
    /// The agent is shutting down: the run ends [`RunState::Failed`].
    Shutdown,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// Succeeded, failed, timed out or cancelled.
    pub state: RunState,
    /// The exit code (128 + signal for a process killed by a signal); 0 if never started.
    pub exit_code: i32,
    /// Whether standard output exceeded the bound.
    pub stdout_truncated: bool,
    /// Whether standard error exceeded the bound.
    pub stderr_truncated: bool,
    /// Why the job failed or could not start; empty when it ran to a normal end.
    pub error_message: String,
}

impl Finish {
    /// A job that failed before its process started.
    pub fn not_started(error_message: impl Into<String>) -> Self {
        Self {
            state: RunState::Failed,
            exit_code: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            error_message: error_message.into(),
        }
    }
}

/// Who the agent runs as; injectable so tests can exercise the non-root branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Whether the agent may change to another user (effective UID 0).
    pub is_root: bool,
    /// The agent's user name, if it has a passwd entry.
    pub user_name: Option<String>,
    /// The agent's home directory.
    pub home: PathBuf,
}

impl Identity {
    /// The identity of this process.
    pub fn current() -> Self {
        let euid = nix::unistd::geteuid();
        let user = User::from_uid(euid).ok().flatten();
        Self {
            is_root: euid.is_root(),
            user_name: user.as_ref().map(|u| u.name.clone()),
            home: user.map(|u| u.dir).unwrap_or_else(|| PathBuf::from("/")),
        }
    }
}

/// The account a job runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Account {
    /// The agent's own account.
    Agent,
    /// Another account, switched to in the child.
    Other { name: String, uid: u32, gid: u32, home: PathBuf },
}

/// Runs jobs.
#[derive(Debug, Clone)]
pub struct Executor {
    max_output_bytes: u64,
    identity: Identity,
}

impl Executor {
    /// An executor for this process's identity.
    pub fn new(max_output_bytes: u64) -> Self {
        Self::with_identity(max_output_bytes, Identity::current())
    }

    /// An executor acting as if it ran with `identity`.
    pub fn with_identity(max_output_bytes: u64, identity: Identity) -> Self {
        Self { max_output_bytes, identity }
    }

    /// Runs `job` to its end, sending [`Event`]s to `events` while it runs (all of them are
    /// sent before this returns). `stop` ends the job early; a dropped sender never stops it.
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    pub async fn execute(
        &self,
        job: &Job,
        stop: oneshot::Receiver<Stop>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Finish {
        let account = match self.account(&job.run_as_user) {
            Ok(account) => account,
            Err(message) => return Finish::not_started(message),
        };
        let Some((interpreter, args, file_name)) = interpreter_command(job.interpreter) else {
            return Finish::not_started(format!(
                "unsupported interpreter {}",
                job.interpreter.as_str_name()
            ));
        };
        let Some(program) = find_program(interpreter) else {
            return Finish::not_started(format!(
                "interpreter {interpreter} not found on this system (searched {SAFE_PATH})"
            ));
        };
        let workdir = match write_script(&job.script, file_name, &account) {
            Ok(dir) => dir,
            Err(message) => return Finish::not_started(message),
        };
        let script_path = workdir.path().join(file_name);

        let mut command = tokio::process::Command::new(&program);
        command
            .args(args)
            .arg(&script_path)
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("LANG", "C.UTF-8")
            .env("STEWARD_RUN", &job.run)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let home = match &account {
            Account::Agent => {
                if let Some(name) = &self.identity.user_name {
                    command.env("USER", name).env("LOGNAME", name);
                }
                self.identity.home.clone()
            }
            Account::Other { name, uid, gid, home } => {
                command.uid(*uid).gid(*gid).env("USER", name).env("LOGNAME", name);
                home.clone()
            }
        };
        command.env("HOME", &home);
        command.current_dir(if home.is_dir() { home.as_path() } else { Path::new("/") });

        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                return Finish::not_started(format!("cannot start {}: {err}", program.display()))
            }
        };
        let Some(pid) = child.id() else {
            return Finish::not_started("the process ended before it could be tracked");
        };
        let pgid = i32::try_from(pid).ok().map(Pid::from_raw);
        tracing::info!(run = %job.run, pid, "run started");
        let _ = events.send(Event::Started { pid });

        let stdout_truncated = Arc::new(AtomicBool::new(false));
        let stderr_truncated = Arc::new(AtomicBool::new(false));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                out,
                OutputStream::Stdout,
                self.max_output_bytes,
                events.clone(),
                stdout_truncated.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                err,
                OutputStream::Stderr,
                self.max_output_bytes,
                events.clone(),
                stderr_truncated.clone(),
            )));
        }
        drop(events);

        let stopped = async {
            match stop.await {
                Ok(reason) => reason,
                Err(_) => std::future::pending().await,
            }
        };
        let (status, ending) = tokio::select! {
            status = child.wait() => (status, Ending::Exited),
            () = tokio::time::sleep(job.timeout) => {
                kill_group(pgid);
                (child.wait().await, Ending::TimedOut)
            }
            reason = stopped => {
                kill_group(pgid);
                (child.wait().await, Ending::Stopped(reason))
            }
        };
        // Whatever the script left running in its group goes with it.
        kill_group(pgid);

        let drained = tokio::time::timeout(DRAIN_GRACE, async {
            for pump in &mut pumps {
                let _ = pump.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(run = %job.run, "output still open after the process group ended; stopped reading");
            for pump in &pumps {
                pump.abort();
            }
            for pump in pumps {
                let _ = pump.await;
            }
        }
        drop(workdir);

        let (exit_code, signal_message) = match &status {
            Ok(status) => exit_code(status),
            Err(err) => (0, Some(format!("cannot wait for the process: {err}"))),
        };
        let (state, error_message) = match ending {
            Ending::Exited => match (&status, signal_message) {
                (Ok(status), None) if status.success() => (RunState::Succeeded, String::new()),
                (_, Some(message)) => (RunState::Failed, message),
                _ => (RunState::Failed, String::new()),
            },
            Ending::TimedOut => (
                RunState::TimedOut,
                format!("killed after the timeout of {}", humanize(job.timeout)),
            ),
            Ending::Stopped(Stop::Cancel) => (RunState::Cancelled, "cancelled".to_owned()),
            Ending::Stopped(Stop::Shutdown) => {
                (RunState::Failed, "killed because the agent was stopped".to_owned())
            }
        };
        tracing::info!(run = %job.run, pid, state = state.as_str_name(), exit_code, "run finished");
        Finish {
            state,
            exit_code,
            stdout_truncated: stdout_truncated.load(Ordering::SeqCst),
            stderr_truncated: stderr_truncated.load(Ordering::SeqCst),
            error_message,
        }
    }

    /// The account to run as, or why the job must not run.
    fn account(&self, run_as_user: &str) -> Result<Account, String> {
        let wanted = run_as_user.trim();
        if wanted.is_empty() || self.identity.user_name.as_deref() == Some(wanted) {
            return Ok(Account::Agent);
        }
        if !self.identity.is_root {
            return Err(format!("agent is not root; cannot run as {wanted}"));
        }
        match User::from_name(wanted) {
            Ok(Some(user)) => Ok(Account::Other {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
            }),
            Ok(None) => Err(format!("no such user on this system: {wanted}")),
            Err(err) => Err(format!("cannot look up user {wanted}: {err}")),
        }
    }
}

/// Why the process ended.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Exited,
    TimedOut,
    Stopped(Stop),
}

/// The interpreter's program name, its arguments before the script path, and the script's
/// file name; `None` for an interpreter this agent cannot run.
fn interpreter_command(
    interpreter: Interpreter,
) -> Option<(&'static str, &'static [&'static str], &'static str)> {
    match interpreter {
        Interpreter::Sh => Some(("sh", &[], "script.sh")),
        Interpreter::Bash => Some(("bash", &[], "script.sh")),
        Interpreter::Powershell => {
            Some(("pwsh", &["-NoProfile", "-NonInteractive", "-File"], "script.ps1"))
        }
        Interpreter::Python3 => Some(("python3", &[], "script.py")),
        Interpreter::Unspecified => None,
    }
}

/// Finds an executable named `name` in [`SAFE_PATH`].
fn find_program(name: &str) -> Option<PathBuf> {
    SAFE_PATH.split(':').map(|dir| Path::new(dir).join(name)).find(|path| {
        std::fs::metadata(path)
            .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Writes the script to a new private directory (0700, owned by the run-as account).
fn write_script(
    script: &str,
    file_name: &str,
    account: &Account,
) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("steward-run-")
        .tempdir()
        .map_err(|err| format!("cannot create a directory for the script: {err}"))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|err| format!("cannot protect the script directory: {err}"))?;
    let path = dir.path().join(file_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .map_err(|err| format!("cannot write the script: {err}"))?;
    std::io::Write::write_all(&mut file, script.as_bytes())
        .map_err(|err| format!("cannot write the script: {err}"))?;
    drop(file);
    if let Account::Other { uid, gid, .. } = account {
        for path in [dir.path(), path.as_path()] {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|err| format!("cannot hand the script to the run-as user: {err}"))?;
        }
    }
    Ok(dir)
}

/// Reads one output stream to its end, sending what fits within `limit` and marking
/// `truncated` when more came; keeps reading past the limit so the process never blocks.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: OutputStream,
    limit: u64,
    events: mpsc::UnboundedSender<Event>,
    truncated: Arc<AtomicBool>,
) {
    let mut buf = vec![0_u8; READ_BUFFER];
    let mut offset: u64 = 0;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read process output");
                break;
            }
        };
        let room = usize::try_from(limit.saturating_sub(offset)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take > 0 {
            let data = buf.get(..take).unwrap_or_default().to_vec();
            let _ = events.send(Event::Output { stream, data, offset });
            offset = offset.saturating_add(take as u64);
        }
        if take < n {
            truncated.store(true, Ordering::SeqCst);
        }
    }
}

/// Sends SIGKILL to the process group; a group already gone is fine.
fn kill_group(pgid: Option<Pid>) {
    let Some(pgid) = pgid else { return };
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pgid = pgid.as_raw(), error = %err, "cannot kill process group"),
    }
}

/// The exit code of a status (128 + signal when killed by a signal) and, for a signal, a
/// message saying so.
fn exit_code(status: &ExitStatus) -> (i32, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("unknown signal");
            (128 + signal, Some(format!("terminated by signal {signal} ({name})")))
        }
        (None, None) => (0, Some("ended without an exit code".to_owned())),
    }
}

/// A duration for people: "1s", "1.5s", "300s".
fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::disallowed_methods)]

    use super::*;

    fn identity(is_root: bool) -> Identity {
        Identity { is_root, user_name: Some("agent".into()), home: PathBuf::from("/") }
    }

    #[test]
    fn run_as_refused_when_not_root() {
        let executor = Executor::with_identity(10, identity(false));
        assert_eq!(
            executor.account("nobody"),
            Err("agent is not root; cannot run as nobody".into())
        );
        assert_eq!(executor.account(""), Ok(Account::Agent));
        assert_eq!(executor.account("agent"), Ok(Account::Agent));
    }

    #[test]
    fn run_as_unknown_user_refused_as_root() {
        let executor = Executor::with_identity(10, identity(true));
        assert_eq!(
            executor.account("no-such-user-xyz"),
            Err("no such user on this system: no-such-user-xyz".into())
        );
        let Ok(Account::Other { uid, .. }) = executor.account("nobody") else {
            unreachable!("nobody exists on this machine")
        };
        assert_eq!(uid, User::from_name("nobody").unwrap().unwrap().uid.as_raw());
    }

    #[test]
    fn job_from_assignment_defaults_timeout() {
        let mut a = Assignment {
            run: "organizations/o/runs/r".into(),
            command: "organizations/o/commands/c".into(),
            script: "echo hi".into(),
            interpreter: Interpreter::Bash as i32,
            run_as_user: String::new(),
            timeout: Some(prost_types::Duration { seconds: 2, nanos: 500_000_000 }),
        };
        assert_eq!(Job::from_assignment(a.clone()).timeout, Duration::from_millis(2500));
        a.timeout = None;
        assert_eq!(Job::from_assignment(a.clone()).timeout, DEFAULT_TIMEOUT);
        a.timeout = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        assert_eq!(Job::from_assignment(a.clone()).timeout, DEFAULT_TIMEOUT);
        a.interpreter = 99;
        assert_eq!(Job::from_assignment(a).interpreter, Interpreter::Unspecified);
    }

    #[test]
    fn exit_codes() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(&ExitStatus::from_raw(0)), (0, None));
        assert_eq!(exit_code(&ExitStatus::from_raw(3 << 8)), (3, None));
        let (code, message) = exit_code(&ExitStatus::from_raw(9));
        assert_eq!(code, 137);
        assert_eq!(message.unwrap(), "terminated by signal 9 (SIGKILL)");
    }

    #[test]
    fn interpreters() {
        assert_eq!(find_program("sh").unwrap().file_name().unwrap(), "sh");
        assert!(find_program("definitely-not-a-program").is_none());
        assert!(interpreter_command(Interpreter::Unspecified).is_none());
        assert_eq!(interpreter_command(Interpreter::Powershell).unwrap().2, "script.ps1");
    }
}
