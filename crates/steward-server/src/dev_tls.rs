//! `steward-server dev --tls`: a local CA and a server certificate for `localhost`, `127.0.0.1`
//! and `::1`, generated once under `{data_dir}/tls/` (rcgen) and reused on later starts, so
//! clients keep trusting the same CA file.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::ServerError;

/// The files of the dev TLS set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevTls {
    /// The CA certificate clients trust (`--ca-file`, `grpcurl -cacert`).
    pub ca_file: PathBuf,
    /// The server's certificate, signed by the CA.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
}

fn tls_error(err: impl std::fmt::Display) -> ServerError {
    ServerError::Config(format!("dev TLS: {err}"))
}

/// Writes `contents` to `path` readable by the owner only (private keys).
fn write_private(path: &Path, contents: &str) -> Result<(), ServerError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// The dev CA and server certificate under `data_dir/tls`, valid for `localhost`, `127.0.0.1`,
/// `::1` and `listen`'s address when that is another specific one; created when a file is
/// missing or the names changed.
pub fn ensure(data_dir: &Path, listen: std::net::SocketAddr) -> Result<DevTls, ServerError> {
    let dir = data_dir.join("tls");
    let set = DevTls {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
    };
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ip = listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    let names_file = dir.join("names");
    let wanted = names.join("\n");
    let same_names = std::fs::read_to_string(&names_file).is_ok_and(|had| had == wanted);
    if same_names && set.ca_file.exists() && set.cert_file.exists() && set.key_file.exists() {
        return Ok(set);
    }
    std::fs::create_dir_all(&dir)?;

    let ca_key = KeyPair::generate().map_err(tls_error)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "Steward dev CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_error)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(names).map_err(tls_error)?;
    server.distinguished_name.push(DnType::CommonName, "steward dev server");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let server_key = KeyPair::generate().map_err(tls_error)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(tls_error)?;

    // The CA's key is not kept: nothing else is ever signed with it.
    std::fs::write(&set.ca_file, ca_cert.pem())?;
    std::fs::write(&set.cert_file, server_cert.pem())?;
    write_private(&set.key_file, &server_key.serialize_pem())?;
    std::fs::write(&names_file, wanted)?;
    Ok(set)
}
