//! The relay's TLS identity: a self-signed CA and server certificate made on first
//! start under `DATA_DIR/tls/` (clients trust `ca.pem`), or real ones from files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::Error;

/// Paths of the generated files inside the data directory.
pub struct TlsFiles {
    /// CA certificate clients and agents trust.
    pub ca: PathBuf,
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files under `data_dir/tls/`.
    pub fn in_dir(data_dir: &Path) -> TlsFiles {
        let dir = data_dir.join("tls");
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// Make the CA and server certificate under `data_dir/tls/` unless they exist.
/// The server certificate names `localhost`, `127.0.0.1`, `::1`, this host's name
/// and every name in `extra_names`.
pub fn ensure_self_signed(data_dir: &Path, extra_names: &[String]) -> Result<TlsFiles, Error> {
    let files = TlsFiles::in_dir(data_dir);
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    if files.ca.exists() {
        return Err(Error::Tls(format!(
            "{} exists but the server certificate is missing; restore it or remove the tls directory to make a new CA",
            files.ca.display()
        )));
    }
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tls = |e: rcgen::Error| Error::Tls(e.to_string());

    let ca_key = rcgen::KeyPair::generate().map_err(tls)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sesame relay CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).map_err(tls)?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    names.extend(extra_names.iter().cloned());
    let key = rcgen::KeyPair::generate().map_err(tls)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(tls)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sesame relay");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(tls)?;

    write_private(&files.key, key.serialize_pem().as_bytes())?;
    write_private(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, cert.pem()).map_err(|e| Error::io(&files.cert, e))?;
    std::fs::write(&files.ca, ca.pem()).map_err(|e| Error::io(&files.ca, e))?;
    Ok(files)
}

/// Write a file only its owner can read (keys).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(data).map_err(|e| Error::io(path, e))
}

/// Largest TLS record payload the relay sends (see `docs/protocol.md` §1).
pub const MAX_RECORD: usize = 4096;

/// A TLS 1.3-only rustls server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let certs = load_certs(cert)?;
    let key_pem = std::fs::read(key).map_err(|e| Error::io(key, e))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| Error::io(key, e))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key found", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Records of at most 4 KiB let a microcontroller agent decrypt with a ~4.3 KiB
    // buffer instead of 16.6 KiB (embedded-tls has no max_fragment_length support
    // in rustls to negotiate it); the cost for large transfers is one 22-byte record
    // header per 4 KiB.
    config.max_fragment_size = Some(MAX_RECORD);
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| Error::io(path, e))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}
