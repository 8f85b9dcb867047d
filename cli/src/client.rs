//! Talking to the relay: TLS, the JSON API over HTTP/1.1, and session streams.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::config::Config;

/// A session stream.
pub type Stream = WebSocketStream<TlsStream<TcpStream>>;

/// A connection-capable handle on the relay.
pub struct Relay {
    host: String,
    port: u16,
    api_key: String,
    tls: TlsConnector,
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
        })
    }

    async fn dial(&self, host: &str, port: u16) -> anyhow::Result<TlsStream<TcpStream>> {
        let addr = format!("{host}:{port}");
        let tcp = tokio::time::timeout(Duration::from_secs(15), TcpStream::connect((host, port)))
            .await
            .map_err(|_| anyhow!("timed out connecting to the relay at {addr}"))?
            .map_err(|e| anyhow!("cannot reach the relay at {addr}: {e}"))?;
        tcp.set_nodelay(true).ok();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| anyhow!("invalid relay host name '{host}'"))?;
        self.tls.connect(name, tcp).await.map_err(|e| {
            anyhow!(
                "TLS with the relay at {addr} failed: {e} (is SESAME_CA set to the relay's CA?)"
            )
        })
    }

    /// Call the JSON API; non-2xx answers become their `error` message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
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
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("authorization", format!("Bearer {}", self.api_key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
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
        serde_json::from_slice(&bytes).context("unexpected answer from the relay")
    }

    /// Open a session stream at `url` (`wss://...`) with its one-use token.
    pub async fn open_stream(&self, url: &str, token: &str) -> anyhow::Result<Stream> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("bad stream URL '{url}'"))?;
        let (host, port) = host_port(&uri, 443)?;
        let tls = self.dial(&host, port).await?;
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(agent_core::wire::DEFAULT_MAX_FRAME as usize + 1024);
        ws_config.max_frame_size = ws_config.max_message_size;
        // tungstenite's 128 KiB defaults are far more than one frame needs.
        ws_config.read_buffer_size = 16 * 1024;
        ws_config.write_buffer_size = 16 * 1024;
        let full = format!("{url}?token={token}");
        match tokio_tungstenite::client_async_with_config(full, tls, Some(ws_config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let msg = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                    .unwrap_or_else(|| format!("relay answered {}", resp.status()));
                bail!("{msg}")
            }
            Err(e) => bail!("cannot open the session stream: {e}"),
        }
    }
}
