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
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca_file)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    path: ca_file.clone(),
                    what: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_single_cert(chain, key).map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Size and modification time of each configured file: what [`ServerTls::watch`] compares.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The server's TLS acceptor over the current material.
pub struct ServerTls {
    files: TlsConfig,
    current: RwLock<(Stamp, Arc<rustls::ServerConfig>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the material named by `files`; fails when it does not load.
    pub fn load(files: TlsConfig) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(&files);
        let config = Arc::new(server_config(&files)?);
        Ok(Arc::new(Self { files, current: RwLock::new((stamp, config)) }))
    }

    fn config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current.read().ok().map(|current| current.1.clone())
    }

    /// Re-reads the files if any of them changed; answers whether new material is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        let changed = self.current.read().map(|current| current.0 != now).unwrap_or(false);
        if !changed {
            return false;
        }
        match server_config(&self.files) {
            Ok(config) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (now, Arc::new(config));
                }
                tracing::info!("TLS certificate reloaded");
                true
            }
            Err(err) => {
                // Keep serving the previous material; a half-written rotation is retried.
                tracing::warn!(error = %err, "TLS files changed but do not load; keeping the previous certificate");
                false
            }
        }
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

fn stamp(files: &TlsConfig) -> Stamp {
    [&files.cert_file, &files.key_file, &files.client_ca_file]
        .into_iter()
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
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    current: RwLock<(Stamp, Arc<rustls::ClientConfig>)>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("ca_file", &self.ca_file).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Loads the material; with a CA file, peers are trusted against that CA only (not the
    /// system roots: an internal peer is never a public site).
    pub fn load(internal: &crate::config::InternalConfig) -> Result<Arc<Self>, TlsError> {
        let client_cert = match (&internal.client_cert_file, &internal.client_key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => None,
        };
        let peer = Self {
            ca_file: internal.ca_file.clone(),
            client_cert,
            current: RwLock::new((Vec::new(), Arc::new(empty_client_config()?))),
        };
        let stamp = peer.stamp();
        let config = peer.build()?;
        if let Ok(mut current) = peer.current.write() {
            *current = (stamp, Arc::new(config));
        }
        Ok(Arc::new(peer))
    }

    fn stamp(&self) -> Stamp {
        let files = TlsConfig {
            cert_file: self.client_cert.as_ref().map(|c| c.0.clone()),
            key_file: self.client_cert.as_ref().map(|c| c.1.clone()),
            client_ca_file: self.ca_file.clone(),
            reload_interval_secs: 0,
        };
        stamp(&files)
    }

    fn build(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(ca_file) => {
                for cert in certificates(ca_file)? {
                    roots.add(cert).map_err(|e| TlsError::Pem {
                        path: ca_file.clone(),
                        what: format!("not a usable CA certificate: {e}"),
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
        let mut config = match &self.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| TlsError::Rustls(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// The current configuration, reloaded first if a file changed (a file that does not load
    /// keeps the previous material, as on the server).
    fn config(&self) -> Option<Arc<rustls::ClientConfig>> {
        let now = self.stamp();
        let changed = self.current.read().map(|current| current.0 != now).unwrap_or(false);
        if changed {
            match self.build() {
                Ok(config) => {
                    if let Ok(mut current) = self.current.write() {
                        *current = (now, Arc::new(config));
                    }
                    tracing::info!("internal TLS client material reloaded");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "internal TLS files changed but do not load; keeping the previous material");
                }
            }
        }
        self.current.read().ok().map(|current| current.1.clone())
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

fn empty_client_config() -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Rustls(e.to_string()))?
    .with_root_certificates(RootCertStore::empty())
    .with_no_client_auth())
}
