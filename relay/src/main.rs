//! `sesame-relay`: serve, and the admin commands that work while it serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use relay::store::Store;
use relay::{Server, ServerConfig};

#[derive(Parser)]
#[command(
    name = "sesame-relay",
    version,
    about = "The Sesame relay: agents dial in, users reach them through it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay.
    Serve {
        #[command(flatten)]
        data: DataDir,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// PEM certificate chain (instead of the generated self-signed one).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// PEM private key for --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Extra DNS name or IP for the generated certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Session token lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        token_ttl: u64,
        /// Config file (TOML): session limits (rates, counts, idle timeout, max
        /// duration), unauthenticated connection caps and timeouts, session retention.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory of the Cedar policy files (`*.cedar`; reloaded on SIGHUP)
        /// [default: DATA_DIR/policies].
        #[arg(long = "policies", value_name = "DIR")]
        policy_dir: Option<PathBuf>,
        /// Sessions per agent at most (overrides the config file; an agent's smaller
        /// capacity wins) [default: 20].
        #[arg(long)]
        max_sessions_per_agent: Option<u16>,
    },
    /// Manage agents.
    Agent {
        #[command(subcommand)]
        cmd: AgentCmd,
    },
    /// Provision microcontroller agents.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// The audit log: verify its chain and checkpoints, sign a checkpoint.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check every row's hash chain and every checkpoint (the kept ones and
    /// --checkpoint); names the first bad row. Exit status 1 if anything is wrong.
    Verify {
        #[command(flatten)]
        data: DataDir,
        /// A checkpoint exported earlier (`audit checkpoint > FILE`), kept elsewhere:
        /// catches rows deleted from the end since.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The relay's audit public key (hex, as checkpoints carry it), known from
        /// elsewhere [default: the one of DATA_DIR/audit.key, which whoever changed
        /// the data directory could have replaced].
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
    },
    /// Sign a checkpoint of the log as it is now and print it (one JSON line):
    /// keep it somewhere the relay's host cannot change.
    Checkpoint {
        #[command(flatten)]
        data: DataDir,
    },
}

/// The relay's data directory: SQLite store and generated certificates.
#[derive(clap::Args)]
struct DataDir {
    /// Data directory of the relay (store and certificates).
    #[arg(
        long,
        env = "SESAME_RELAY_DATA",
        default_value = "/var/lib/sesame-relay"
    )]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Register an agent; prints its one-time activation code.
    Add {
        /// Unique name.
        name: String,
        #[command(flatten)]
        data: DataDir,
        /// Tag as key=value (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Make a device's key, bind it to the agent CODE names, and write the image to
    /// flash with the firmware (see boards/*/README.md).
    Provision {
        #[command(flatten)]
        data: DataDir,
        /// Activation code from `sesame-relay agent add` (used up here).
        #[arg(long = "activate", value_name = "CODE")]
        code: String,
        /// Where the device dials: HOST:PORT (IPv4 address or DNS name).
        #[arg(long, value_name = "HOST:PORT")]
        relay: String,
        /// DNS name the device checks in the relay's certificate [default: the host].
        #[arg(long, value_name = "NAME")]
        tls_name: Option<String>,
        /// CA certificate (PEM) the device pins.
        #[arg(long, value_name = "CA.pem")]
        ca: PathBuf,
        /// Where to write the image (mode 0600: it holds the device's private key).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Let the device's forward sessions reach these destinations (repeatable):
        /// NET[/PREFIX][:PORTS] or NAME[:PORTS], e.g. 10.0.0.0/8, 192.168.1.5:502,
        /// plc.local:80,8000-8999. Without it the device forwards nothing.
        #[arg(long = "allow-dest", value_name = "RULE")]
        allow_dest: Vec<String>,
        /// Never these destinations (repeatable; deny wins over allow).
        #[arg(long = "deny-dest", value_name = "RULE")]
        deny_dest: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Register a user; prints the API key (shown once).
    Add {
        /// Unique name.
        name: String,
        #[command(flatten)]
        data: DataDir,
        /// Administrator: a member of the group `admins` (which the built-in policy
        /// allows everything).
        #[arg(long)]
        admin: bool,
        /// Member of this group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            data: DataDir { data_dir },
            listen,
            cert,
            key,
            names,
            token_ttl,
            config,
            policy_dir,
            max_sessions_per_agent,
        } => {
            let mut limits = match &config {
                Some(path) => relay::config::Limits::load(path)?,
                None => relay::config::Limits::default(),
            };
            if let Some(n) = max_sessions_per_agent {
                limits.max_sessions_per_agent = n;
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let server = Server::bind(ServerConfig {
                listen,
                data_dir: data_dir.clone(),
                cert: cert.zip(key),
                names,
                token_ttl: Duration::from_secs(token_ttl),
                limits,
                policy_dir,
            })
            .await?;
            let addr = server.local_addr()?;
            match &server.ca_path {
                Some(ca) => println!(
                    "sesame-relay listening on https://{addr} (CA: {})",
                    ca.display()
                ),
                None => println!("sesame-relay listening on https://{addr}"),
            }
            tokio::select! {
                r = server.run() => r?,
                _ = shutdown_signal() => {},
            }
            Ok(())
        }
        Cmd::Agent {
            cmd:
                AgentCmd::Add {
                    name,
                    data: DataDir { data_dir },
                    tags,
                },
        } => {
            let mut map = BTreeMap::new();
            for t in tags {
                let Some((k, v)) = t.split_once('=') else {
                    bail!("invalid tag '{t}': use key=value");
                };
                map.insert(k.to_string(), v.to_string());
            }
            let store = open_store(&data_dir).await?;
            local_change(
                &store,
                "admin.agent.add",
                &name,
                serde_json::json!({ "tags": map }),
            )
            .await?;
            let (_id, code) = store.add_agent(&name, &map).await?;
            println!("{}", code.expose());
            Ok(())
        }
        Cmd::Device {
            cmd:
                DeviceCmd::Provision {
                    data: DataDir { data_dir },
                    code,
                    relay,
                    tls_name,
                    ca,
                    out,
                    allow_dest,
                    deny_dest,
                },
        } => {
            let store = open_store(&data_dir).await?;
            let req = relay::provision::Request {
                code: &code,
                relay: &relay,
                tls_name: tls_name.as_deref(),
                ca_pem: &ca,
                allow_dest: &allow_dest,
                deny_dest: &deny_dest,
            };
            let (name, image) = relay::provision::provision(&store, &req).await?;
            write_private(&out, &image)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "provisioned agent '{name}': {} ({} bytes)",
                out.display(),
                image.len()
            );
            Ok(())
        }
        Cmd::Audit {
            cmd:
                AuditCmd::Verify {
                    data: DataDir { data_dir },
                    checkpoint,
                    key,
                },
        } => {
            let store = open_store(&data_dir).await?;
            let extra = match &checkpoint {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let c: relay::audit::Checkpoint = serde_json::from_str(text.trim())
                        .with_context(|| format!("{} is not a checkpoint", path.display()))?;
                    Some(c)
                }
                None => None,
            };
            let public = match key {
                Some(k) => k.trim().to_ascii_lowercase(),
                None => relay::audit::public_key(&data_dir)?,
            };
            match relay::audit::verify(&store, &public, extra.as_ref()).await {
                Ok(v) => {
                    println!(
                        "audit log verified: {} rows, {} checkpoints",
                        v.rows, v.checkpoints
                    );
                    Ok(())
                }
                Err(problem) => bail!("audit log: {problem}"),
            }
        }
        Cmd::Audit {
            cmd: AuditCmd::Checkpoint {
                data: DataDir { data_dir },
            },
        } => {
            let store = open_store(&data_dir).await?;
            let key = relay::audit::signing_key(&data_dir)?;
            let c = relay::audit::checkpoint(&store, &key).await?;
            println!("{}", serde_json::to_string(&c)?);
            Ok(())
        }
        Cmd::User {
            cmd:
                UserCmd::Add {
                    name,
                    data: DataDir { data_dir },
                    admin,
                    mut groups,
                },
        } => {
            if admin {
                groups.push(relay::policy::ADMINS.to_string());
            }
            let store = open_store(&data_dir).await?;
            local_change(
                &store,
                "admin.user.add",
                &name,
                serde_json::json!({ "groups": groups }),
            )
            .await?;
            let (_user, key) = store.add_user(&name, &groups).await?;
            println!("{}", key.expose());
            Ok(())
        }
    }
}

/// Record a change made on the relay's host (through its data directory) in the
/// audit log, before it is made; actor `local`.
async fn local_change(
    store: &Store,
    event: &str,
    target: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let audit = relay::audit::Audit::start(store.clone());
    let e = relay::audit::Event::new("local", event, target).detail(detail);
    audit.record(e).await?;
    Ok(())
}

/// Write a file only its owner can read.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

async fn open_store(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    Store::open(data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
