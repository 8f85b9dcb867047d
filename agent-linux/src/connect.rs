//! Dialing the relay: TCP, TLS 1.3 verified against the configured CA, WebSocket.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// The agent's WebSocket to the relay.
pub type RelaySocket = WebSocketStream<TlsStream<BufReader<TcpStream>>>;

/// Bytes read from the relay's socket at once. rustls reads at most 4 KiB per
/// `read` into an emptied buffer, so without this a 16 KiB record took 4 `recv`.
const READ_BUFFER: usize = 64 * 1024;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The relay URL is not `wss://host[:port]`.
    #[error("invalid relay URL '{0}': expected wss://HOST[:PORT]")]
    Url(String),
    /// The CA file could not be used.
    #[error("CA file {path}: {msg}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// TCP failed.
    #[error("cannot reach {addr}: {source}")]
    Tcp {
        /// host:port.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS failed (certificate not trusted, wrong name, ...).
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        /// host:port.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The WebSocket upgrade failed.
    #[error("WebSocket upgrade failed: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// Timed out.
    #[error("timed out connecting to {0}")]
    Timeout(String),
}

/// Where and how to reach the relay.
#[derive(Clone)]
pub struct RelayTarget {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl RelayTarget {
    /// Parse `wss://host[:port]` and load the CA certificates from `ca`.
    pub fn new(url: &str, ca: &Path) -> Result<RelayTarget, ConnectError> {
        let uri: Uri = url.parse().map_err(|_| ConnectError::Url(url.into()))?;
        if uri.scheme_str() != Some("wss") {
            return Err(ConnectError::Url(url.into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::Url(url.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let ca_err = |msg: String| ConnectError::Ca {
            path: ca.display().to_string(),
            msg,
        };
        let pem = std::fs::read(ca).map_err(|e| ca_err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_err("no certificate found".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ca_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(RelayTarget {
            host,
            port,
            tls: Arc::new(tls),
        })
    }

    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Open the agent WebSocket (`/v1/agent`).
    pub async fn connect(&self) -> Result<RelaySocket, ConnectError> {
        let addr = self.addr();
        tokio::time::timeout(Duration::from_secs(15), self.connect_inner(&addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr.clone()))?
    }

    async fn connect_inner(&self, addr: &str) -> Result<RelaySocket, ConnectError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ConnectError::Tcp {
                addr: addr.into(),
                source,
            })?;
        tcp.set_nodelay(true).ok();
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| ConnectError::Url(format!("wss://{addr}")))?;
        let tcp = BufReader::with_capacity(READ_BUFFER, tcp);
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                addr: addr.into(),
                source,
            })?;
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(agent_core::wire::DEFAULT_MAX_FRAME as usize + 1024);
        ws_config.max_frame_size = ws_config.max_message_size;
        // tungstenite's 128 KiB defaults are far more than one frame needs.
        ws_config.read_buffer_size = 16 * 1024;
        ws_config.write_buffer_size = 16 * 1024;
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(
            format!("wss://{addr}/v1/agent"),
            tls,
            Some(ws_config),
        )
        .await?;
        Ok(ws)
    }
}
