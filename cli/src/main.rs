//! `sesame`: shells, commands and target listing through a Sesame relay.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use cli::client::Relay;
use cli::config::Config;
use cli::session::{self, Request};

#[derive(Parser)]
#[command(
    name = "sesame",
    version,
    about = "Reach machines through a Sesame relay"
)]
struct Cli {
    /// Relay URL, https://HOST:PORT (default: $SESAME_RELAY, then the config file).
    #[arg(long, global = true)]
    relay: Option<String>,
    /// API key (default: $SESAME_API_KEY, then the config file).
    #[arg(long, global = true, hide_env_values = true)]
    api_key: Option<String>,
    /// CA certificate of the relay (default: $SESAME_CA, then the config file, then
    /// the system's trusted roots).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List targets with their online state.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a target; exits with its exit code.
    Exec {
        /// Target name or id.
        target: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Open an interactive shell on a target.
    Shell {
        /// Target name or id.
        target: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cli::terminal::restore();
        default_hook(info);
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            cli::terminal::restore();
            eprintln!("error: {e:#}");
            255
        }
    };
    cli::terminal::restore();
    // Exit without waiting for the stdin thread, which may be blocked in read().
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let config = Config::load(cli.relay, cli.api_key, cli.ca)?;
    let relay = Relay::new(&config)?;
    match cli.cmd {
        Cmd::Ls { json } => {
            cli::ls::run(&relay, json).await?;
            Ok(0)
        }
        Cmd::Exec { target, command } => {
            session::run(&relay, &target, Request::Exec(command)).await
        }
        Cmd::Shell { target } => session::run(&relay, &target, Request::Shell).await,
    }
}
