//! Registration and the work stream: keeps one authenticated OpenStream open (reconnecting with
//! backoff), runs assignments concurrently and reports their progress.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use steward_proto::commands::v1::agent_service_client::AgentServiceClient;
use steward_proto::commands::v1::open_stream_request::{
    self, Heartbeat, Hello, RunFinished, RunStarted,
};
use steward_proto::commands::v1::open_stream_response;
use steward_proto::commands::v1::{OpenStreamRequest, OutputChunk, RegisterAgentRequest, RunState};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::config::{AgentConfig, StoredCredential};
use crate::error::AgentError;
use crate::executor::{Event, Executor, Finish, Job, Stop};
use crate::unconfirmed::Unconfirmed;

/// The agent's version, reported on registration and in Hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The largest gRPC message the agent sends or accepts.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How many finished runs are remembered, to answer a repeated assignment without running it
/// twice.
pub(crate) const RECENT_RUNS: usize = 512;

/// How many times a run's end is reported again on later streams after the stream that carried
/// it broke (the service ignores a report of a result that has already ended).
pub(crate) const REPORT_REPEATS: u8 = 3;

/// How long a shutdown waits for the runs it killed to be reported.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `base`, doubles on each failure up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, next: base }
    }

    /// The delay before the next attempt: uniformly random between half and all of the
    /// current step; then the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        let half = step / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random_u64() % (spread + 1))
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

/// A random number from the standard library's per-process hasher keys (backoff jitter; the
/// agent has no injected clock, and the time only adds entropy).
#[allow(clippy::disallowed_methods)]
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    hasher.finish()
}

/// What a failed call means for the agent.
enum Failure {
    /// Stop: the credential or connect key was refused, or the agent is shutting down.
    Fatal(AgentError),
    /// Try again after a backoff.
    Transient(String),
}

/// A run in progress.
struct Active {
    /// Stops it.
    stop: Option<oneshot::Sender<Stop>>,
    /// Its process ID, once started.
    pid: Option<u32>,
}

/// The runs in progress and the recently finished ones.
#[derive(Default)]
struct Runs {
    active: HashMap<String, Active>,
    recent: VecDeque<(String, RunFinished)>,
}

/// The agent: registration, the stream, and the runs.
pub struct Agent {
    config: AgentConfig,
    executor: Executor,
    runs: Arc<Mutex<Runs>>,
    outbound_tx: mpsc::UnboundedSender<open_stream_request::Message>,
    outbound_rx: mpsc::UnboundedReceiver<open_stream_request::Message>,
    /// A message taken from `outbound_rx` that could not be sent; sent first on the next stream.
    pending: Option<open_stream_request::Message>,
    /// Run ends reported on the current stream, repeated on the next one if it breaks.
    unconfirmed: Unconfirmed,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent with `config`, executing with `executor`.
    pub fn new(config: AgentConfig, executor: Executor) -> Self {
        let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
        Self {
            config,
            executor,
            runs: Arc::default(),
            outbound_tx,
            outbound_rx,
            pending: None,
            unconfirmed: Unconfirmed::default(),
        }
    }

    /// Runs until `shutdown` completes (then kills the runs in progress, reports them and
    /// returns `Ok`) or the server refuses the agent (`Err`).
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let endpoint = endpoint(
            &self.config.server,
            self.config.ca_file.as_deref(),
            self.config.insecure_plaintext,
        )?;
        tokio::pin!(shutdown);
        let credential = tokio::select! {
            credential = self.credential(&endpoint) => credential?,
            () = &mut shutdown => return Ok(()),
        };
        tracing::info!(system = %credential.system, server = %self.config.server, "agent registered; opening the work stream");
        let mut backoff = Backoff::default();
        loop {
            match self.session(&endpoint, &credential, &mut backoff, &mut shutdown).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(err)) => {
                    self.stop_all(Stop::Shutdown);
                    return Err(err);
                }
                Err(Failure::Transient(reason)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%reason, delay_ms = delay.as_millis() as u64, "work stream lost; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut shutdown => {
                            self.stop_all(Stop::Shutdown);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// The stored credential, or a new one from RegisterAgent (stored before it is used).
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    async fn credential(&self, endpoint: &Endpoint) -> Result<StoredCredential, AgentError> {
        let path = self.config.credential_path();
        if let Some(stored) = StoredCredential::load(&path)? {
            if self.config.connect_key.is_some() {
                tracing::info!(path = %path.display(), "already registered; ignoring the connect key");
            }
            return Ok(stored);
        }
        let Some(connect_key) = self.config.connect_key.clone() else {
            return Err(AgentError::NotRegistered { path });
        };
        let request = RegisterAgentRequest {
            connect_key,
            hostname: self.config.hostname.clone(),
            os: std::env::consts::OS.to_owned(),
            agent_version: AGENT_VERSION.to_owned(),
        };
        let mut backoff = Backoff::default();
        loop {
            let attempt = async {
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|err| connect_failure(&self.config.server, &err, false))?;
                client(channel).register_agent(request.clone()).await.map_err(|status| match status
                    .code()
                {
                    Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::FailedPrecondition => Failure::Fatal(AgentError::RegistrationRefused {
                        code: status.code(),
                        message: status.message().to_owned(),
                    }),
                    _ => Failure::Transient(format!("RegisterAgent failed: {status}")),
                })
            };
            match attempt.await {
                Ok(response) => {
                    let response = response.into_inner();
                    let stored = StoredCredential {
                        server: self.config.server.clone(),
                        system: response.system.map(|s| s.name).unwrap_or_default(),
                        credential: response.credential,
                    };
                    stored.save(&path)?;
                    tracing::info!(system = %stored.system, path = %path.display(), "registered; credential stored");
                    return Ok(stored);
                }
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Transient(reason)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%reason, delay_ms = delay.as_millis() as u64, "registration failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One stream: Hello, then assignments in and progress out until it breaks (`Transient`),
    /// the credential is refused (`Fatal`) or `shutdown` completes (`Ok`).
    async fn session<S: Future<Output = ()> + Unpin>(
        &mut self,
        endpoint: &Endpoint,
        credential: &StoredCredential,
        backoff: &mut Backoff,
        shutdown: &mut S,
    ) -> Result<(), Failure> {
        let channel = tokio::select! {
            channel = endpoint.connect() => channel.map_err(|err| connect_failure(&self.config.server, &err, true))?,
            () = &mut *shutdown => { self.shutdown(None).await; return Ok(()); }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let hello =
            open_stream_request::Message::Hello(Hello { agent_version: AGENT_VERSION.to_owned() });
        send(&tx, hello)?;
        // What was reported on a stream that broke may never have been read: report it again.
        let (running, reports) = self.unconfirmed.take_for_repeat();
        for chunk in running {
            send(&tx, open_stream_request::Message::Output(chunk))?;
        }
        for (finished, output, repeats) in reports {
            tracing::info!(run = %finished.run, "reporting the end of a run again after a reconnect");
            for chunk in &output {
                send(&tx, open_stream_request::Message::Output(chunk.clone()))?;
            }
            send(&tx, open_stream_request::Message::RunFinished(finished.clone()))?;
            self.unconfirmed.sent(finished, output, repeats);
        }
        if let Some(message) = self.pending.take() {
            self.send_tracked(&tx, message)?;
        }
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
        let bearer =
            MetadataValue::try_from(format!("Bearer {}", credential.credential)).map_err(|_| {
                Failure::Fatal(self.refused(
                    Code::Unauthenticated,
                    "the stored credential is not a valid header value",
                ))
            })?;
        request.metadata_mut().insert("authorization", bearer);

        let mut client = client(channel);
        let mut inbound = tokio::select! {
            response = client.open_stream(request) => response.map_err(|status| self.classify(&status))?.into_inner(),
            () = &mut *shutdown => { self.shutdown(None).await; return Ok(()); }
        };
        tracing::info!(system = %credential.system, "work stream open");
        backoff.reset();

        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(response)) => self.handle(response.message),
                    Ok(None) => return Err(Failure::Transient("the server ended the stream".into())),
                    Err(status) => return Err(self.classify(&status)),
                },
                Some(message) = self.outbound_rx.recv() => self.send_tracked(&tx, message)?,
                _ = heartbeat.tick() => {
                    send(&tx, open_stream_request::Message::Heartbeat(Heartbeat { send_time: Some(now()) }))?;
                }
                () = &mut *shutdown => {
                    self.shutdown(Some(&tx)).await;
                    return Ok(());
                }
            }
        }
    }

    /// Writes `message` to the stream, remembering a run's output and end among the unconfirmed
    /// reports; a message the closed stream refused is kept for the next one.
    fn send_tracked(
        &mut self,
        tx: &mpsc::UnboundedSender<OpenStreamRequest>,
        message: open_stream_request::Message,
    ) -> Result<(), Failure> {
        let tracked = match &message {
            open_stream_request::Message::RunFinished(_)
            | open_stream_request::Message::Output(_) => Some(message.clone()),
            _ => None,
        };
        if let Err(mpsc::error::SendError(message)) =
            tx.send(OpenStreamRequest { message: Some(message) })
        {
            self.pending = message.message;
            return Err(Failure::Transient("the stream was closed".into()));
        }
        match tracked {
            Some(open_stream_request::Message::RunFinished(finished)) => {
                self.unconfirmed.sent(finished, Vec::new(), 0)
            }
            Some(open_stream_request::Message::Output(chunk)) => self.unconfirmed.output(chunk),
            _ => {}
        }
        Ok(())
    }

    /// Handles one message from the service.
    fn handle(&self, message: Option<open_stream_response::Message>) {
        match message {
            Some(open_stream_response::Message::Assignment(assignment)) => {
                self.assign(Job::from_assignment(assignment))
            }
            Some(open_stream_response::Message::CancelRun(cancel)) => self.cancel(&cancel.run),
            Some(open_stream_response::Message::Heartbeat(_)) => {
                tracing::trace!("heartbeat from the service")
            }
            None => tracing::debug!("empty message from the service ignored"),
        }
    }

    /// Starts a job, unless it is already running or recently finished (then its result is
    /// reported again).
    fn assign(&self, job: Job) {
        let (stop_tx, stop_rx) = oneshot::channel();
        {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(active) = runs.active.get(&job.run) {
                // The service lost our start report (a broken stream); repeat it.
                tracing::info!(run = %job.run, "assignment already running; reporting its start again");
                if let Some(pid) = active.pid {
                    let _ = self.outbound_tx.send(event_message(&job.run, Event::Started { pid }));
                }
                return;
            }
            if let Some((_, finished)) = runs.recent.iter().find(|(run, _)| *run == job.run) {
                tracing::info!(run = %job.run, "assignment already finished; reporting the result again");
                let _ = self
                    .outbound_tx
                    .send(open_stream_request::Message::RunFinished(finished.clone()));
                return;
            }
            runs.active.insert(job.run.clone(), Active { stop: Some(stop_tx), pid: None });
        }
        tracing::info!(run = %job.run, interpreter = job.interpreter.as_str_name(), run_as_user = %job.run_as_user, timeout_ms = job.timeout.as_millis() as u64, "assignment received");
        let executor = self.executor.clone();
        let outbound = self.outbound_tx.clone();
        let runs = self.runs.clone();
        tokio::spawn(async move {
            let run = job.run.clone();
            let (events_tx, mut events_rx) = mpsc::unbounded_channel();
            let forward = async {
                while let Some(event) = events_rx.recv().await {
                    if let Event::Started { pid } = event {
                        let mut runs = runs.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some(active) = runs.active.get_mut(&run) {
                            active.pid = Some(pid);
                        }
                    }
                    let _ = outbound.send(event_message(&run, event));
                }
            };
            let (finish, ()) = tokio::join!(executor.execute(&job, stop_rx, events_tx), forward);
            let finished = run_finished(&run, finish);
            let mut runs = runs.lock().unwrap_or_else(PoisonError::into_inner);
            runs.active.remove(&run);
            if runs.recent.len() >= RECENT_RUNS {
                runs.recent.pop_front();
            }
            runs.recent.push_back((run, finished.clone()));
            let _ = outbound.send(open_stream_request::Message::RunFinished(finished));
        });
    }

    /// Stops a running job; a run this agent does not know is reported cancelled at once.
    fn cancel(&self, run: &str) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(active) = runs.active.get_mut(run) {
            if let Some(stop) = active.stop.take() {
                tracing::info!(run, "cancelling run");
                let _ = stop.send(Stop::Cancel);
            }
        } else if runs.recent.iter().any(|(r, _)| r == run) {
            tracing::debug!(run, "cancel for a finished run ignored");
        } else {
            tracing::info!(run, "cancel for a run not running here; reporting it cancelled");
            let mut finish = Finish::not_started("the run was not running on this agent");
            finish.state = RunState::Cancelled;
            let _ = self
                .outbound_tx
                .send(open_stream_request::Message::RunFinished(run_finished(run, finish)));
        }
    }

    /// Sends `reason` to every job in progress.
    fn stop_all(&self, reason: Stop) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        for (run, active) in runs.active.iter_mut() {
            if let Some(stop) = active.stop.take() {
                tracing::info!(%run, "stopping run");
                let _ = stop.send(reason);
            }
        }
    }

    /// Kills the jobs in progress and, if a stream is open, forwards their reports for a short
    /// while.
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    async fn shutdown(&mut self, tx: Option<&mpsc::UnboundedSender<OpenStreamRequest>>) {
        let running: Vec<String> = {
            let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            runs.active.keys().cloned().collect()
        };
        tracing::info!(runs = running.len(), "shutting down");
        self.stop_all(Stop::Shutdown);
        let Some(tx) = tx else { return };
        let mut waiting: Vec<String> = running;
        let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(deadline);
        while !waiting.is_empty() {
            tokio::select! {
                Some(message) = self.outbound_rx.recv() => {
                    if let open_stream_request::Message::RunFinished(finished) = &message {
                        waiting.retain(|run| *run != finished.run);
                    }
                    if tx.send(OpenStreamRequest { message: Some(message) }).is_err() {
                        return;
                    }
                }
                () = &mut deadline => return,
            }
        }
        // Give the transport a moment to flush the last reports.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// The failure a stream error means.
    fn classify(&self, status: &tonic::Status) -> Failure {
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                Failure::Fatal(self.refused(status.code(), status.message()))
            }
            _ => Failure::Transient(format!("stream failed: {status}")),
        }
    }

    fn refused(&self, code: Code, message: &str) -> AgentError {
        AgentError::CredentialRefused {
            code,
            message: message.to_owned(),
            path: self.config.credential_path(),
        }
    }
}

/// The endpoint for `server`, with keep-alives so a dead connection is noticed. `https://` is
/// verified against the system's roots plus `ca_file`; plaintext `http://` is refused for
/// anything but a loopback address unless `insecure_plaintext`.
fn endpoint(
    server: &str,
    ca_file: Option<&std::path::Path>,
    insecure_plaintext: bool,
) -> Result<Endpoint, AgentError> {
    let invalid = |reason: String| AgentError::InvalidServer { url: server.to_owned(), reason };
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(invalid("must start with http:// or https://".into()));
    }
    server.parse::<tonic::transport::Uri>().map_err(|err| invalid(format!("{err}")))?;
    if steward_proto::client::is_plaintext_off_loopback(server) && !insecure_plaintext {
        return Err(invalid(
            "plaintext http:// is allowed only to a loopback address; use https:// or pass --insecure-plaintext".into(),
        ));
    }
    let ca_pem = match ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| AgentError::Io {
            action: "read the CA file",
            path: path.to_path_buf(),
            source,
        })?),
        None => None,
    };
    steward_proto::client::endpoint(server.to_owned(), ca_pem)
        .map_err(|err| invalid(steward_proto::client::error_chain(&err)))
        .map(|endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(10))
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        })
}

/// A failed connection. An untrusted certificate before the agent ever registered is fatal (a
/// misconfiguration: retrying cannot help, and nothing was sent); once registered it is retried
/// like any other failure (a rotation gone briefly wrong, a clock not yet synchronised), with the
/// reason in the log, still sending nothing to a server it cannot verify.
fn connect_failure(server: &str, err: &tonic::transport::Error, registered: bool) -> Failure {
    let reason = steward_proto::client::error_chain(err);
    match reason.find("invalid peer certificate") {
        Some(at) if !registered => Failure::Fatal(AgentError::UntrustedServer {
            url: server.to_owned(),
            reason: reason.get(at..).unwrap_or_default().to_owned(),
        }),
        Some(at) => Failure::Transient(format!(
            "the server's TLS certificate is not trusted ({}); nothing was sent",
            reason.get(at..).unwrap_or_default()
        )),
        None => Failure::Transient(format!("cannot connect: {reason}")),
    }
}

fn client(channel: Channel) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn send(
    tx: &mpsc::UnboundedSender<OpenStreamRequest>,
    message: open_stream_request::Message,
) -> Result<(), Failure> {
    tx.send(OpenStreamRequest { message: Some(message) })
        .map_err(|_| Failure::Transient("the stream was closed".into()))
}

/// The stream message for an executor event of `run`.
pub fn event_message(run: &str, event: Event) -> open_stream_request::Message {
    match event {
        Event::Started { pid } => open_stream_request::Message::RunStarted(RunStarted {
            run: run.to_owned(),
            pid: i64::from(pid),
        }),
        Event::Output { stream, data, offset } => {
            open_stream_request::Message::Output(OutputChunk {
                run: run.to_owned(),
                system: String::new(),
                stream: stream as i32,
                data,
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
            })
        }
    }
}

/// The RunFinished report of `run`.
pub fn run_finished(run: &str, finish: Finish) -> RunFinished {
    RunFinished {
        run: run.to_owned(),
        state: finish.state as i32,
        exit_code: finish.exit_code,
        stdout_truncated: finish.stdout_truncated,
        stderr_truncated: finish.stderr_truncated,
        error_message: finish.error_message,
    }
}

/// The machine's wall clock, for the timestamps the agent reports.
#[allow(clippy::disallowed_methods)]
fn now() -> prost_types::Timestamp {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut step = Duration::from_millis(100);
        for _ in 0..8 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} not within [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(Duration::from_secs(1));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_delays_are_jittered() {
        // The step stays at one second; the delays drawn for it must differ, or agents that
        // lost the same server would all come back at the same instant.
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }

    #[test]
    fn endpoint_validation() {
        assert!(matches!(
            endpoint("localhost:1", None, false),
            Err(AgentError::InvalidServer { .. })
        ));
        assert!(endpoint("http://127.0.0.1:1", None, false).is_ok());
        assert!(endpoint("http://localhost:1", None, false).is_ok());
        assert!(endpoint("http://[::1]:1", None, false).is_ok());
        let remote = endpoint("http://steward.example.com:1", None, false).unwrap_err();
        assert!(remote.to_string().contains("--insecure-plaintext"), "{remote}");
        assert!(endpoint("http://steward.example.com:1", None, true).is_ok());
        assert!(endpoint("https://steward.example.com", None, false).is_ok());
    }
}
