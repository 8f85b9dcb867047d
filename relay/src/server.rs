//! The TLS listener that serves the API and WebSockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use tracing::debug;

use crate::api::{self, ApiConfig, AppState};
use crate::hub::Hub;
use crate::store::Store;
use crate::tls;
use crate::Error;

/// How `sesame-relay serve` is configured.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (store, generated certificates).
    pub data_dir: PathBuf,
    /// Certificate chain and key to use instead of the generated ones.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Extra DNS names or IPs for the generated server certificate.
    pub names: Vec<String>,
    /// How long a session token stays valid.
    pub token_ttl: Duration,
    /// Session limits (from `--config`, then flags).
    pub limits: crate::config::Limits,
}

/// A bound relay, ready to run.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: AppState,
    /// CA certificate that clients should trust (when self-signed).
    pub ca_path: Option<PathBuf>,
}

impl Server {
    /// Open the store, prepare TLS and bind the listener.
    pub async fn bind(config: ServerConfig) -> Result<Server, Error> {
        let store = Store::open(&config.data_dir).await?;
        let (cert, key, ca_path) = match &config.cert {
            Some((c, k)) => (c.clone(), k.clone(), None),
            None => {
                let files = tls::ensure_self_signed(&config.data_dir, &config.names)?;
                (files.cert, files.key, Some(files.ca))
            }
        };
        let tls = tls::server_config(&cert, &key)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io(config.listen.to_string(), e))?;
        Ok(Server {
            listener,
            acceptor: TlsAcceptor::from(tls),
            state: AppState {
                store,
                hub: Arc::new(Hub::default()),
                config: Arc::new(ApiConfig {
                    token_ttl: config.token_ttl,
                    limits: config.limits.clone(),
                }),
            },
            ca_path,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is cancelled.
    pub async fn run(self) -> Result<(), Error> {
        let app = api::router(self.state.clone());
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        let mut app = app.clone();
                        async move { app.call(req).await }
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    debug!(%peer, "connection ended: {e}");
                }
            });
        }
    }
}
