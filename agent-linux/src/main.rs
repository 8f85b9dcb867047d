//! `sesame-agent`: connect this machine to a Sesame relay.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sesame-agent",
    version,
    about = "Sesame agent: dials out to a relay and serves shells and commands"
)]
struct Cli {
    /// Relay URL, wss://HOST:PORT.
    #[arg(long, env = "SESAME_RELAY")]
    relay: String,
    /// PEM file of the CA that signs the relay's certificate.
    #[arg(long, env = "SESAME_CA")]
    ca: PathBuf,
    /// Directory for the agent's identity key.
    #[arg(long, default_value = "/var/lib/sesame-agent")]
    state_dir: PathBuf,
    /// One-time activation code from `sesame-relay agent add` (first run only).
    #[arg(long)]
    activate: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = agent_linux::AgentOptions {
        relay: cli.relay,
        ca: cli.ca,
        state_dir: cli.state_dir,
        activate: cli.activate,
    };
    match rt.block_on(agent_linux::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
