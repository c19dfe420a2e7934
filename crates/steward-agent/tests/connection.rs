//! The connection loop against an in-process mock AgentService: registration once, the stored
//! credential reused, reconnection after a broken stream, refusals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use steward_agent::config::{AgentConfig, StoredCredential, CREDENTIAL_FILE};
use steward_agent::{Agent, AgentError, Executor};
use steward_proto::commands::v1::agent_service_server::{AgentService, AgentServiceServer};
use steward_proto::commands::v1::open_stream_request::Message as Up;
use steward_proto::commands::v1::open_stream_response::{self, Assignment};
use steward_proto::commands::v1::{
    Interpreter, OpenStreamRequest, OpenStreamResponse, RegisterAgentRequest,
    RegisterAgentResponse, RunState, System,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

const KEY: &str = "good-key";
const CREDENTIAL: &str = "cred-1";
const RUN: &str = "organizations/o/runs/r1";

#[derive(Clone)]
struct Mock {
    registers: Arc<AtomicUsize>,
    opens: Arc<AtomicUsize>,
    received: mpsc::UnboundedSender<Up>,
}

#[tonic::async_trait]
impl AgentService for Mock {
    async fn register_agent(
        &self,
        request: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let request = request.into_inner();
        if request.connect_key != KEY {
            return Err(Status::unauthenticated("invalid, expired or revoked connect key"));
        }
        assert_eq!(request.hostname, "mock-host");
        assert_eq!(request.os, std::env::consts::OS);
        assert_eq!(request.agent_version, env!("CARGO_PKG_VERSION"));
        self.registers.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(RegisterAgentResponse {
            system: Some(System { name: "organizations/o/systems/s".into(), ..Default::default() }),
            credential: CREDENTIAL.into(),
        }))
    }

    type OpenStreamStream = Pin<Box<dyn Stream<Item = Result<OpenStreamResponse, Status>> + Send>>;

    async fn open_stream(
        &self,
        request: Request<Streaming<OpenStreamRequest>>,
    ) -> Result<Response<Self::OpenStreamStream>, Status> {
        let auth =
            request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if auth != format!("Bearer {CREDENTIAL}") {
            return Err(Status::unauthenticated("unknown agent credential"));
        }
        let n = self.opens.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let first = matches!(message.message, Some(Up::Hello(_)));
                let _ = received.send(message.message.unwrap());
                if !first {
                    continue;
                }
                if n == 0 {
                    // The first stream breaks right after Hello.
                    let _ = tx.send(Err(Status::unavailable("going away"))).await;
                    return;
                }
                if n == 1 {
                    let assignment = Assignment {
                        run: RUN.into(),
                        command: "organizations/o/commands/c".into(),
                        script: "echo hi".into(),
                        interpreter: Interpreter::Sh as i32,
                        run_as_user: String::new(),
                        timeout: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
                    };
                    let message = open_stream_response::Message::Assignment(assignment);
                    let _ = tx.send(Ok(OpenStreamResponse { message: Some(message) })).await;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

struct Server {
    url: String,
    registers: Arc<AtomicUsize>,
    opens: Arc<AtomicUsize>,
    received: mpsc::UnboundedReceiver<Up>,
}

async fn server() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, received) = mpsc::unbounded_channel();
    let mock = Mock { registers: Arc::default(), opens: Arc::default(), received: tx };
    let (registers, opens) = (mock.registers.clone(), mock.opens.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(mock))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Server { url, registers, opens, received }
}

fn config(url: &str, state_dir: &Path, connect_key: Option<&str>) -> AgentConfig {
    AgentConfig {
        server: url.into(),
        ca_file: None,
        insecure_plaintext: false,
        connect_key: connect_key.map(str::to_owned),
        state_dir: state_dir.to_owned(),
        max_output_bytes: 1024,
        hostname: "mock-host".into(),
        heartbeat_interval: Duration::from_secs(30),
    }
}

async fn next(received: &mut mpsc::UnboundedReceiver<Up>) -> Up {
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("a message in time")
        .unwrap()
}

#[tokio::test]
async fn registers_once_reconnects_and_reports_a_run() {
    let mut server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = Agent::new(config(&server.url, dir.path(), Some(KEY)), Executor::new(1024));
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    assert!(
        matches!(next(&mut server.received).await, Up::Hello(h) if h.agent_version == env!("CARGO_PKG_VERSION"))
    );
    // The first stream broke: a second one opens after a backoff, Hello first again.
    assert!(matches!(next(&mut server.received).await, Up::Hello(_)));
    let Up::RunStarted(started) = next(&mut server.received).await else {
        panic!("expected RunStarted")
    };
    assert_eq!(started.run, RUN);
    assert!(started.pid > 0);
    let Up::Output(chunk) = next(&mut server.received).await else { panic!("expected output") };
    assert_eq!((chunk.run.as_str(), chunk.data.as_slice(), chunk.offset), (RUN, &b"hi\n"[..], 0));
    let Up::RunFinished(finished) = next(&mut server.received).await else {
        panic!("expected RunFinished")
    };
    assert_eq!(finished.run, RUN);
    assert_eq!(finished.state, RunState::Succeeded as i32);
    assert_eq!(finished.exit_code, 0);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(server.registers.load(Ordering::SeqCst), 1);
    assert_eq!(server.opens.load(Ordering::SeqCst), 2);
    let stored = StoredCredential::load(&dir.path().join(CREDENTIAL_FILE)).unwrap().unwrap();
    assert_eq!(stored.credential, CREDENTIAL);
    assert_eq!(stored.system, "organizations/o/systems/s");

    // A restart without the connect key uses the stored credential and does not register.
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = Agent::new(config(&server.url, dir.path(), None), Executor::new(1024));
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    assert!(matches!(next(&mut server.received).await, Up::Hello(_)));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(server.registers.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_credential_stops_the_agent() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    StoredCredential {
        server: server.url.clone(),
        system: "organizations/o/systems/s".into(),
        credential: "revoked".into(),
    }
    .save(&dir.path().join(CREDENTIAL_FILE))
    .unwrap();
    let agent = Agent::new(config(&server.url, dir.path(), None), Executor::new(1024));
    let result = tokio::time::timeout(Duration::from_secs(10), agent.run(std::future::pending()))
        .await
        .unwrap();
    let Err(AgentError::CredentialRefused { code, message, .. }) = result else {
        panic!("expected a refusal")
    };
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert_eq!(message, "unknown agent credential");
}

#[tokio::test]
async fn refused_connect_key_stops_the_agent_without_storing_anything() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(config(&server.url, dir.path(), Some("bad-key")), Executor::new(1024));
    let result = tokio::time::timeout(Duration::from_secs(10), agent.run(std::future::pending()))
        .await
        .unwrap();
    assert!(matches!(
        result,
        Err(AgentError::RegistrationRefused { code: tonic::Code::Unauthenticated, .. })
    ));
    assert!(!dir.path().join(CREDENTIAL_FILE).exists());
    assert_eq!(server.registers.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unreachable_server_is_retried_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let agent = Agent::new(config(&url, dir.path(), Some(KEY)), Executor::new(1024));
    let result = agent.run(tokio::time::sleep(Duration::from_secs(2))).await;
    assert!(result.is_ok(), "{result:?}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM (CA, cert, key).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

async fn tls_server(cert: &str, key: &str) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (tx, received) = mpsc::unbounded_channel();
    let mock = Mock { registers: Arc::default(), opens: Arc::default(), received: tx };
    let (registers, opens) = (mock.registers.clone(), mock.opens.clone());
    let identity = tonic::transport::Identity::from_pem(cert, key);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(AgentServiceServer::new(mock))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Server { url, registers, opens, received }
}

// Over TLS with the right CA the agent registers and streams; with a server whose certificate it
// cannot verify it stops at once with a clear error, and the server never saw the connect key.
#[tokio::test]
async fn tls_servers_are_verified_before_anything_is_sent() {
    let (ca, cert, key) = certificates();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();

    let mut trusted = tls_server(&cert, &key).await;
    let state = tempfile::tempdir().unwrap();
    let mut settings = config(&trusted.url, state.path(), Some(KEY));
    settings.ca_file = Some(ca_file);
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(Agent::new(settings, Executor::new(1024)).run(async {
        let _ = stopped.await;
    }));
    assert!(matches!(next(&mut trusted.received).await, Up::Hello(_)));
    assert_eq!(trusted.registers.load(Ordering::SeqCst), 1);
    let _ = stop.send(());
    agent.await.unwrap().unwrap();

    // Another CA's certificate: refused, not retried, nothing registered.
    let (_, other_cert, other_key) = certificates();
    let untrusted = tls_server(&other_cert, &other_key).await;
    let state = tempfile::tempdir().unwrap();
    let mut settings = config(&untrusted.url, state.path(), Some(KEY));
    settings.ca_file = Some(dir.path().join("ca.pem"));
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        Agent::new(settings, Executor::new(1024)).run(std::future::pending()),
    )
    .await
    .expect("the agent gives up on an untrusted server instead of retrying");
    let err = result.unwrap_err();
    assert!(matches!(err, AgentError::UntrustedServer { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("not trusted") && text.contains("--ca-file"), "{text}");
    assert_eq!(untrusted.registers.load(Ordering::SeqCst), 0, "connect key never reached it");
    assert_eq!(untrusted.opens.load(Ordering::SeqCst), 0);
    assert!(!state.path().join(CREDENTIAL_FILE).exists());
}

// Plaintext to anything but loopback is refused in one line unless explicitly allowed.
#[tokio::test]
async fn plaintext_to_a_remote_server_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let settings = config("http://192.0.2.10:50051", state.path(), Some(KEY));
    let err =
        Agent::new(settings, Executor::new(1024)).run(std::future::pending()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("--insecure-plaintext") && !text.contains('\n'), "{text}");
}
