//! Talking to the relay: TLS, the JSON API over HTTP/1.1, and session streams, all
//! from the configured local address if there is one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::io::BufReader;
use tokio::net::{lookup_host, TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::config::Config;

/// The `resume` this client asks for on a session stream: the version of
/// `docs/protocol.md` section 8 it speaks (a relay makes the session resumable only
/// for the one it speaks too).
pub const RESUME_VERSION: &str = "2";

/// A session stream.
pub type Stream = WebSocketStream<TlsStream<BufReader<TcpStream>>>;

/// Bytes read from the relay's socket at once. rustls reads at most 4 KiB per
/// `read` into an emptied buffer, so without this a 16 KiB record took 4 `recv`.
const READ_BUFFER: usize = 64 * 1024;

/// A connection-capable handle on the relay.
pub struct Relay {
    host: String,
    port: u16,
    api_key: String,
    tls: TlsConnector,
    bind: Option<IpAddr>,
}

/// A request's body.
enum Body {
    Empty,
    Json(serde_json::Value),
    Text(String),
}

/// Why a TCP connection could not be made.
enum Dial {
    /// The local address could not be taken.
    Bind(IpAddr, std::io::Error),
    /// Resolving or connecting failed.
    Connect(std::io::Error),
}

/// Connect to `host:port`, from `bind` if given (each of the host's addresses of
/// the same family, in turn).
async fn connect(host: &str, port: u16, bind: Option<IpAddr>) -> Result<TcpStream, Dial> {
    let Some(local) = bind else {
        return TcpStream::connect((host, port))
            .await
            .map_err(Dial::Connect);
    };
    let mut last = None;
    for addr in lookup_host((host, port)).await.map_err(Dial::Connect)? {
        if addr.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(Dial::Connect)?;
        socket
            .bind(SocketAddr::new(local, 0))
            .map_err(|e| Dial::Bind(local, e))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(Dial::Connect(last.unwrap_or_else(|| {
        let family = if local.is_ipv4() { "IPv4" } else { "IPv6" };
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("it has no {family} address, as --bind {local} needs"),
        )
    })))
}

/// Percent-encode one path segment or query value: everything but RFC 3986's
/// unreserved characters (section 2.3).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string for `pairs` whose value is given: `?user=alice`, or nothing.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", encode(k), encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn host_port(uri: &Uri, default_port: u16) -> anyhow::Result<(String, u16)> {
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("URL '{uri}' has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

impl Relay {
    /// Prepare TLS for the configured relay.
    pub fn new(config: &Config) -> anyhow::Result<Relay> {
        let uri: Uri = config
            .relay
            .parse()
            .with_context(|| format!("invalid relay URL '{}'", config.relay))?;
        if uri.scheme_str() != Some("https") {
            bail!(
                "invalid relay URL '{}': expected https://HOST[:PORT]",
                config.relay
            );
        }
        let (host, port) = host_port(&uri, 443)?;
        let mut roots = rustls::RootCertStore::empty();
        match &config.ca {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read CA file {}", ca.display()))?;
                for cert in rustls_pemfile::certs(&mut &pem[..]) {
                    roots.add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)?;
                }
                if roots.is_empty() {
                    bail!("no certificate found in CA file {}", ca.display());
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Relay {
            host,
            port,
            api_key: config.api_key.clone(),
            tls: TlsConnector::from(Arc::new(tls)),
            bind: config.bind,
        })
    }

    async fn dial(&self, host: &str, port: u16) -> anyhow::Result<TlsStream<BufReader<TcpStream>>> {
        let addr = format!("{host}:{port}");
        let tcp = tokio::time::timeout(Duration::from_secs(15), connect(host, port, self.bind))
            .await
            .map_err(|_| anyhow!("timed out connecting to the relay at {addr}"))?
            .map_err(|e| match e {
                Dial::Bind(ip, e) => anyhow!("cannot use the local address {ip} (--bind): {e}"),
                Dial::Connect(e) => anyhow!("cannot reach the relay at {addr}: {e}"),
            })?;
        tcp.set_nodelay(true).ok();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| anyhow!("invalid relay host name '{host}'"))?;
        let tcp = BufReader::with_capacity(READ_BUFFER, tcp);
        self.tls.connect(name, tcp).await.map_err(|e| {
            anyhow!(
                "TLS with the relay at {addr} failed: {e} (is SESAME_CA set to the relay's CA?)"
            )
        })
    }

    /// Send one request; the answer's body on success, its `error` message (or its
    /// status) as the error otherwise.
    async fn request(&self, method: &str, path: &str, body: Body) -> anyhow::Result<Bytes> {
        let tls = self.dial(&self.host, self.port).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP handshake with the relay failed")?;
        tokio::spawn(conn);
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let (content_type, bytes) = match body {
            Body::Empty => ("application/json", Bytes::new()),
            Body::Json(v) => ("application/json", Bytes::from(v.to_string())),
            Body::Text(t) => ("text/plain", Bytes::from(t)),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("authorization", format!("Bearer {}", self.api_key))
            .header("content-type", content_type)
            .body(Full::new(bytes))?;
        let resp = send
            .send_request(req)
            .await
            .context("request to the relay failed")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| format!("relay answered {status}"));
            bail!("{msg}");
        }
        Ok(bytes)
    }

    /// Call the JSON API; non-2xx answers become their `error` message. `path` may
    /// carry a query (see [`query`]).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let body = body.map_or(Body::Empty, Body::Json);
        let bytes = self.request(method, path, body).await?;
        serde_json::from_slice(&bytes).context("unexpected answer from the relay")
    }

    /// The relay's origin as a browser names it (`https://host:port`).
    pub fn origin(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    /// `GET path`: the answer's body as it is (a recording), or its error.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Bytes> {
        self.request("GET", path, Body::Empty).await
    }

    /// [`Relay::call`] with a text body (`text/plain`), such as a policy file.
    pub async fn call_text<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        text: String,
    ) -> anyhow::Result<T> {
        let bytes = self.request(method, path, Body::Text(text)).await?;
        serde_json::from_slice(&bytes).context("unexpected answer from the relay")
    }

    /// Open a session stream at `url` (`wss://...`) with its one-use token.
    pub async fn open_stream(&self, url: &str, token: &str) -> anyhow::Result<Stream> {
        self.first_stream(url, token, false).await
    }

    /// [`Relay::open_stream`], asking for the session to be resumable if the agent
    /// can (shell and exec sessions, docs/protocol.md §8).
    pub async fn open_resumable_stream(&self, url: &str, token: &str) -> anyhow::Result<Stream> {
        self.first_stream(url, token, true).await
    }

    async fn first_stream(&self, url: &str, token: &str, resume: bool) -> anyhow::Result<Stream> {
        // This client shows `Notice` frames (someone joined the session).
        let resume = resume.then_some(RESUME_VERSION);
        let q = query(&[
            ("token", Some(token)),
            ("notices", Some("true")),
            ("resume", resume),
        ]);
        Ok(self.stream_at(url, &q).await?)
    }

    /// Open a new stream for the resumable session at `url` (its first stream's URL)
    /// with the latest token the relay gave for it; a refusal keeps its status, so
    /// that the caller can tell a session that is over from a relay that is away.
    pub async fn resume_stream(&self, url: &str, token: &str) -> Result<Stream, StreamError> {
        let q = query(&[
            ("resume_token", Some(token)),
            ("notices", Some("true")),
            ("resume", Some(RESUME_VERSION)),
        ]);
        self.stream_at(url, &q).await
    }

    async fn stream_at(&self, url: &str, query: &str) -> Result<Stream, StreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| StreamError::Failed(anyhow!("bad stream URL '{url}'")))?;
        let (host, port) = host_port(&uri, 443).map_err(StreamError::Failed)?;
        self.websocket(&host, port, &format!("{url}{query}"), None)
            .await
    }

    /// Open the API's WebSocket at `path` (joining a session), with the API key.
    pub async fn open_api_socket(&self, path: &str) -> anyhow::Result<Stream> {
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let url = format!("wss://{host}{path}");
        let key = format!("Bearer {}", self.api_key);
        Ok(self
            .websocket(&self.host, self.port, &url, Some(&key))
            .await?)
    }

    async fn websocket(
        &self,
        host: &str,
        port: u16,
        url: &str,
        authorization: Option<&str>,
    ) -> Result<Stream, StreamError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tls = self.dial(host, port).await.map_err(StreamError::Failed)?;
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(agent_core::wire::DEFAULT_MAX_FRAME as usize + 1024);
        ws_config.max_frame_size = ws_config.max_message_size;
        // tungstenite's 128 KiB defaults are far more than one frame needs.
        ws_config.read_buffer_size = 16 * 1024;
        ws_config.write_buffer_size = 16 * 1024;
        // Not the whole URL: its query holds the session's token.
        let path = url.split('?').next().unwrap_or(url);
        let mut req = url
            .into_client_request()
            .map_err(|_| StreamError::Failed(anyhow!("bad stream URL '{path}'")))?;
        if let Some(a) = authorization {
            let a = a
                .parse()
                .map_err(|_| StreamError::Failed(anyhow!("bad API key")))?;
            req.headers_mut().insert("authorization", a);
        }
        match tokio_tungstenite::client_async_with_config(req, tls, Some(ws_config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                let message = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                    .unwrap_or_else(|| format!("relay answered {status}"));
                Err(StreamError::Refused {
                    status: status.as_u16(),
                    message,
                })
            }
            Err(e) => Err(StreamError::Failed(anyhow!(
                "cannot open the session stream: {e}"
            ))),
        }
    }
}

/// Why a WebSocket to the relay could not be opened.
#[derive(Debug)]
pub enum StreamError {
    /// The relay answered the upgrade with an HTTP error: its status, and its
    /// `error` message (or the status in words).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The relay's reason.
        message: String,
    },
    /// No answer: the relay could not be reached, TLS failed, or the connection
    /// broke during the upgrade.
    Failed(anyhow::Error),
}

impl StreamError {
    /// Whether trying again later may succeed: the relay was away, restarting or
    /// busy (no answer, 408, 409, 425, 429, 5xx), rather than refusing for good (a
    /// bad token, a session that is over, a lock).
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Failed(_) => true,
            StreamError::Refused { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || *status >= 500
            }
        }
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Refused { message, .. } => f.write_str(message),
            StreamError::Failed(e) => write!(f, "{e}"),
        }
    }
}

// No `source`: the message says it all (`error: {e:#}` would repeat it).
impl std::error::Error for StreamError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_paths_and_queries() {
        assert_eq!(encode("ops-lab.cedar"), "ops-lab.cedar");
        assert_eq!(encode("a b/c?d&e=é"), "a%20b%2Fc%3Fd%26e%3D%C3%A9");
        assert_eq!(query(&[("user", None)]), "");
        assert_eq!(
            query(&[("user", Some("bob smith")), ("x", None)]),
            "?user=bob%20smith"
        );
        assert_eq!(query(&[("a", Some("1")), ("b", Some("2"))]), "?a=1&b=2");
    }

    #[test]
    fn a_relay_that_is_away_or_restarting_is_tried_again() {
        for status in [409, 503, 502, 429] {
            let e = StreamError::Refused {
                status,
                message: String::new(),
            };
            assert!(e.is_transient(), "{status}");
        }
        for status in [400, 401, 403, 404, 410] {
            let e = StreamError::Refused {
                status,
                message: String::new(),
            };
            assert!(!e.is_transient(), "{status}");
        }
        assert!(StreamError::Failed(anyhow!("connection refused")).is_transient());
    }
}
