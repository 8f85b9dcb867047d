//! The relay's TLS identity: a self-signed CA and server certificate made on first
//! start under `DATA_DIR/tls/` (clients trust `ca.pem`), or real ones from files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ClientHello;
use rustls::{CipherSuite, NamedGroup, ServerConfig};

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

/// Largest TLS record payload the relay sends to a constrained client (see
/// `docs/protocol.md` §1); everyone else gets TLS's 16 KiB.
pub const MAX_RECORD: usize = 4096;

/// The relay's TLS 1.3 server configurations, one chosen per connection from its
/// `ClientHello` ([`Configs::choose`]): they differ only in the size of the records
/// the relay sends.
#[derive(Clone)]
pub struct Configs {
    /// Records of up to 16 KiB, TLS's maximum (RFC 8446 §5.1): the CLI, browsers,
    /// Linux agents.
    full: Arc<ServerConfig>,
    /// Records of at most [`MAX_RECORD`]: a microcontroller agent decrypts with a
    /// ~4.3 KiB buffer instead of 16.6 KiB.
    small: Arc<ServerConfig>,
}

impl Configs {
    /// The configuration for a connection that sent `hello`.
    pub fn choose(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        if constrained(hello.cipher_suites(), hello.named_groups()) {
            self.small.clone()
        } else {
            self.full.clone()
        }
    }

    /// The configuration with full-size records (tests, tools).
    pub fn full(&self) -> Arc<ServerConfig> {
        self.full.clone()
    }
}

/// Whether a `ClientHello` with these cipher suites and key exchange groups comes
/// from a client that may not take 16 KiB records. The relay cannot ask (rustls
/// negotiates neither `max_fragment_length`, RFC 6066, nor `record_size_limit`,
/// RFC 8449), so it goes by what such a client offers: embedded-tls, the device's
/// stack, offers exactly one cipher suite and one group (P-256), while rustls,
/// browsers, OpenSSL and Go offer several suites and X25519. A client that offers a
/// single suite or no X25519 gets 4 KiB records; the cost to a client wrongly taken
/// for a device is only speed.
fn constrained(suites: &[CipherSuite], groups: Option<&[NamedGroup]>) -> bool {
    suites.len() <= 1 || !groups.unwrap_or_default().contains(&NamedGroup::X25519)
}

/// The TLS 1.3-only rustls server configurations from PEM files.
pub fn server_configs(cert: &Path, key: &Path) -> Result<Configs, Error> {
    let certs = load_certs(cert)?;
    let key_pem = std::fs::read(key).map_err(|e| Error::io(key, e))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| Error::io(key, e))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key found", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut full = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    full.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The same identity, session storage and ticketer; only the record size differs.
    let mut small = full.clone();
    // embedded-tls has no max_fragment_length support in rustls to negotiate it; the
    // cost for a device's large transfers is one 22-byte record header per 4 KiB.
    small.max_fragment_size = Some(MAX_RECORD);
    Ok(Configs {
        full: Arc::new(full),
        small: Arc::new(small),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
    use rustls::crypto::CryptoProvider;
    use rustls::server::Acceptor;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    #[test]
    fn a_client_with_one_suite_or_no_x25519_is_constrained() {
        use CipherSuite::{
            TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256,
            TLS13_CHACHA20_POLY1305_SHA256 as CHACHA,
        };
        use NamedGroup::{secp256r1 as P256, secp384r1 as P384, X25519};
        // embedded-tls 0.19 with Aes128GcmSha256, as the device offers.
        assert!(constrained(&[AES128], Some(&[P256])));
        assert!(constrained(&[AES128], Some(&[X25519, P256])));
        assert!(constrained(&[AES256, AES128], Some(&[P256, P384])));
        assert!(constrained(&[AES256, AES128], None));
        // rustls (ring), as the CLI and the Linux agent offer.
        assert!(!constrained(
            &[AES256, AES128, CHACHA],
            Some(&[X25519, P256, P384])
        ));
    }

    /// Sizes of the application data records the relay sends to a client offering
    /// `suites` and `groups`, when it writes 40 000 bytes at once.
    fn records_to(configs: &Configs, provider: CryptoProvider) -> Vec<usize> {
        let pem = std::fs::read(test_dir().join("tls/ca.pem")).unwrap();
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client_config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client =
            ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        let mut acceptor = Acceptor::default();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        acceptor.read_tls(&mut &wire[..]).unwrap();
        let accepted = acceptor.accept().unwrap().unwrap();
        let config = configs.choose(&accepted.client_hello());
        let mut server = accepted.into_connection(config).unwrap();
        while server.is_handshaking() || client.is_handshaking() {
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
        }
        // Drop what the handshake left (session tickets), then send the data alone.
        server.write_tls(&mut Vec::new()).unwrap();
        std::io::Write::write_all(&mut server.writer(), &[7u8; 40_000]).unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut sizes = Vec::new();
        let mut rest = &wire[..];
        while rest.len() >= 5 {
            let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
            // Ciphertext: payload, one content-type byte, a 16-byte tag.
            sizes.push(len - 17);
            rest = &rest[5 + len..];
        }
        assert!(rest.is_empty());
        sizes
    }

    fn test_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sesame-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_device_gets_small_records_and_everyone_else_full_ones() {
        let files = ensure_self_signed(&test_dir(), &[]).unwrap();
        let configs = server_configs(&files.cert, &files.key).unwrap();
        // What embedded-tls offers: one suite, one group.
        let device = CryptoProvider {
            cipher_suites: vec![cipher_suite::TLS13_AES_128_GCM_SHA256],
            kx_groups: vec![kx_group::SECP256R1],
            ..default_provider()
        };
        // rustls counts the 5-byte record header in `max_fragment_size`.
        let mut small = vec![4091; 9];
        small.push(3181);
        assert_eq!(records_to(&configs, device), small);
        assert_eq!(
            records_to(&configs, default_provider()),
            [16384, 16384, 7232]
        );
        let _ = std::fs::remove_dir_all(test_dir());
    }
}
