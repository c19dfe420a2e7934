//! TLS with rustls (ring provider): the server's acceptor, whose certificate, key and client CA
//! are re-read when their files change, and the client settings every Steward client uses
//! (internal peers, the CLI, the agent).
//!
//! Rotation: cert-manager (or anyone) replaces the files; [`ServerTls::watch`] notices within its
//! interval and later handshakes use the new material. Established connections keep the
//! certificate they were opened with, so nothing is dropped. A file that does not parse is
//! logged and the previous material stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsConfig;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to be accepted (slow or idle clients
/// cannot pile up sockets and tasks without bound).
const MAX_HANDSHAKES: usize = 256;

/// TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), what: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("no usable PEM private key: {e}"),
    })
}

/// The certificates of a CA bundle as trust anchors.
fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Builds the server's rustls configuration from `tls` (which must be [`TlsConfig::enabled`]):
/// HTTP/2 only (ALPN `h2`); with `client_ca_file`, client certificates are requested and, when
/// presented, verified against that CA (whether a call needs one is decided per RPC by the
/// authentication layer).
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Err(TlsError::Rustls("server.tls needs both cert_file and key_file".into()));
    };
    let chain = certificates(cert_file)?;
    let key = private_key(key_file)?;
    // The provider is named, not taken from the process default, so no other crate's choice can
    // change (or make ambiguous) what the server negotiates.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &tls.client_ca_file {
        Some(ca_file) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca_roots(ca_file)?), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_single_cert(chain, key).map_err(|e| TlsError::Rustls(e.to_string()))?;
    // HTTP/2 first; HTTP/1.1 for gRPC-Web clients that offer only it (browsers behind some
    // proxies, fetch in Node), which the public listener accepts.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Size and modification time of each file: what tells a rotation.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The three files TLS material is built from (any may be unset).
type Files = [Option<PathBuf>; 3];

/// TLS material built from files and rebuilt when any of them changes. A change that does not
/// build (a half-written rotation) keeps the previous material in use, and is retried.
struct Material<T> {
    files: Files,
    build: fn(&Files) -> Result<T, TlsError>,
    current: RwLock<(Stamp, Arc<T>)>,
}

impl<T> Material<T> {
    fn load(files: Files, build: fn(&Files) -> Result<T, TlsError>) -> Result<Self, TlsError> {
        let current = (stamp(&files), Arc::new(build(&files)?));
        Ok(Self { files, build, current: RwLock::new(current) })
    }

    fn current(&self) -> Option<Arc<T>> {
        self.current.read().ok().map(|current| current.1.clone())
    }

    /// Rebuilds if a file changed; answers whether new material is in use.
    fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        let changed = self.current.read().map(|current| current.0 != now).unwrap_or(false);
        if !changed {
            return false;
        }
        match (self.build)(&self.files) {
            Ok(material) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (now, Arc::new(material));
                }
                tracing::info!(files = ?self.files, "TLS material reloaded");
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "TLS files changed but do not load; keeping the previous material");
                false
            }
        }
    }
}

/// The server's TLS acceptor over the current material.
pub struct ServerTls {
    material: Material<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.material.files).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the material named by `files`; fails when it does not load.
    pub fn load(files: TlsConfig) -> Result<Arc<Self>, TlsError> {
        let files = [files.cert_file, files.key_file, files.client_ca_file];
        let material = Material::load(files, |[cert_file, key_file, client_ca_file]| {
            server_config(&TlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: client_ca_file.clone(),
                ..TlsConfig::default()
            })
        })?;
        Ok(Arc::new(Self { material }))
    }

    fn config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.material.current()
    }

    /// Re-reads the files if any of them changed; answers whether new material is in use.
    pub fn reload_if_changed(&self) -> bool {
        self.material.reload_if_changed()
    }

    /// Checks the files every `interval` until the task is aborted.
    pub fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let tls = self.clone();
                let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            }
        })
    }

    /// Accepts TCP connections on `listener` and completes their handshakes concurrently (a slow
    /// or failed handshake delays no one else), yielding the established TLS streams. The accept
    /// loop stops when the returned stream is dropped and the task aborted.
    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> (ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>, tokio::task::JoinHandle<()>)
    {
        let (tx, rx) = mpsc::channel(64);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let _ = tcp.set_nodelay(true);
                let Some(config) = self.config() else { continue };
                let acceptor = TlsAcceptor::from(config);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        (ReceiverStream::new(rx), task)
    }
}

fn stamp(files: &Files) -> Stamp {
    files
        .iter()
        .flatten()
        .map(|path| {
            // `metadata` follows symlinks, as Kubernetes' atomic secret updates need.
            std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Client TLS material for internal calls (`internal.ca_file`, `client_cert_file`,
/// `client_key_file`), re-read when the files change: checked at every new connection (cheap,
/// connections are long-lived), so a rotated client certificate is presented without a restart.
pub struct PeerTls {
    material: Material<rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("files", &self.material.files).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Loads the material; with a CA file, peers are trusted against that CA only (not the
    /// system roots: an internal peer is never a public site).
    pub fn load(internal: &crate::config::InternalConfig) -> Result<Arc<Self>, TlsError> {
        let (client_cert, client_key) =
            match (&internal.client_cert_file, &internal.client_key_file) {
                (Some(cert), Some(key)) => (Some(cert.clone()), Some(key.clone())),
                _ => (None, None),
            };
        let files = [client_cert, client_key, internal.ca_file.clone()];
        Ok(Arc::new(Self { material: Material::load(files, client_config)? }))
    }

    /// The current configuration, reloaded first if a file changed: checked at each new
    /// connection (cheap, and connections are long-lived), so no watcher task is needed.
    fn config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.material.reload_if_changed();
        self.material.current()
    }

    /// A lazy channel to `url` (`https://host:port`) whose connections are TLS with the current
    /// material, HTTP/2 negotiated by ALPN.
    pub fn channel(
        self: &Arc<Self>,
        url: &http::Uri,
        configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, TlsError> {
        let host = url.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
        let port = url.port_u16().unwrap_or(443);
        let server_name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| TlsError::Rustls(format!("{host}: {e}")))?
            .to_owned();
        // tonic sees plaintext HTTP/2 over a stream this connector has already secured.
        let plain = format!("http://{}", url.authority().map(|a| a.as_str()).unwrap_or_default());
        let endpoint = tonic::transport::Endpoint::from_shared(plain)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let tls = self.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let tls = tls.clone();
            let host = host.clone();
            let server_name = server_name.clone();
            async move {
                let config =
                    tls.config().ok_or_else(|| std::io::Error::other("TLS state poisoned"))?;
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let stream =
                    tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(std::io::Error::other(
                        "the peer did not negotiate HTTP/2 (ALPN h2)",
                    ));
                }
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        Ok(configure(endpoint).connect_with_connector_lazy(connector))
    }
}

/// The client configuration of internal calls from `[client cert, client key, CA]` files.
fn client_config(files: &Files) -> Result<rustls::ClientConfig, TlsError> {
    let [client_cert, client_key, ca_file] = files;
    let roots = match ca_file {
        Some(ca_file) => ca_roots(ca_file)?,
        None => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Rustls(e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match (client_cert, client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| TlsError::Rustls(e.to_string()))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
