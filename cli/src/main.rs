//! `sesame`: shells, commands and target listing through a Sesame relay; policy
//! checks and administration.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use cli::client::Relay;
use cli::config::{Config, Flags};
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
    /// Local IP address of the connections to the relay, like ssh -b (default:
    /// $SESAME_BIND, then the config file).
    #[arg(long, global = true, value_name = "ADDR")]
    bind: Option<IpAddr>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a one-time link that logs this browser in to the relay's console
    /// (valid 5 minutes, once; the browser session acts with this API key).
    Web,
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
        /// Account on the target [default: the agent's default account].
        #[arg(long = "as", value_name = "ACCOUNT")]
        run_as: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Open a shell on a target: on a terminal when stdin is one (or with -t), else
    /// on pipes, so that end of input ends it (`sesame shell gw-01 < script.sh`).
    Shell {
        /// Target name or id.
        target: String,
        /// Account on the target [default: the agent's default account].
        #[arg(long = "as", value_name = "ACCOUNT")]
        run_as: Option<String>,
        /// Ask for a terminal even when stdin is not one; end of input is then sent
        /// as the terminal's end-of-file character.
        #[arg(short = 't', conflicts_with = "no_tty")]
        tty: bool,
        /// Never ask for a terminal.
        #[arg(short = 'T')]
        no_tty: bool,
    },
    /// Forward local TCP ports to HOST:PORT as seen from the target, until Ctrl-C.
    Forward {
        /// Target name or id.
        target: String,
        /// Account on the target [default: the agent's default account].
        #[arg(long = "as", value_name = "ACCOUNT")]
        run_as: Option<String>,
        /// [BIND:]LPORT:HOST:PORT (LPORT 0 picks a free port); several in one session.
        #[arg(required = true)]
        specs: Vec<cli::forward::Spec>,
    },
    /// Bridge stdin/stdout to HOST:PORT on the target (for ssh's ProxyCommand).
    Proxy {
        /// Target name or id.
        target: String,
        /// Account on the target [default: the agent's default account].
        #[arg(long = "as", value_name = "ACCOUNT")]
        run_as: Option<String>,
        /// Port on the target.
        port: u16,
        /// Host as seen from the target.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
    /// Temporary SSH keys.
    SshKey {
        #[command(subcommand)]
        cmd: SshKeyCmd,
    },
    /// Log in with ssh through Sesame using a throwaway key valid for 60 s.
    Ssh {
        /// Target name or id.
        target: String,
        /// Account on the target [default: your local user name].
        #[arg(long, short = 'l')]
        user: Option<String>,
        /// Account the tunnel (the forward session) is authorised as [default: the
        /// agent's default account]; the login account is -l.
        #[arg(long = "as", value_name = "ACCOUNT")]
        run_as: Option<String>,
        /// sshd's port on the target.
        #[arg(long, short = 'p', default_value_t = 22)]
        port: u16,
        /// Extra arguments for ssh (after --), e.g. a command.
        #[arg(last = true)]
        ssh_args: Vec<String>,
    },
    /// Live and past sessions: list them, terminate a live one.
    Sessions {
        #[command(subcommand)]
        cmd: cli::sessions::SessionsCmd,
    },
    /// Watch a live shell session, read-only: its screen now, then as it happens.
    Join(cli::join::Join),
    /// Play a session's recording in the terminal, with its timing.
    Replay(cli::replay::Replay),
    /// Session recordings: search their output.
    Recordings {
        #[command(subcommand)]
        cmd: cli::recordings::RecordingsCmd,
    },
    /// The relay's audit log: the newest rows (-f to follow), or an export as JSON
    /// lines.
    Audit {
        #[command(subcommand)]
        cmd: cli::audit::AuditCmd,
    },
    /// Check the relay's policies.
    Policy {
        #[command(subcommand)]
        cmd: cli::policy::PolicyCmd,
    },
    /// Administer users, API keys, agents, policies and locks.
    Admin {
        #[command(subcommand)]
        cmd: cli::admin::AdminCmd,
    },
}

#[derive(Subcommand)]
enum SshKeyCmd {
    /// Make a public key valid for USER on TARGET for a short time.
    Push {
        /// Target name or id.
        target: String,
        /// Account on the target.
        #[arg(long)]
        user: String,
        /// Public key file (e.g. ~/.ssh/id_ed25519.pub).
        key: PathBuf,
        /// Seconds the key stays valid.
        #[arg(long, default_value_t = 60)]
        ttl: u32,
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
    // Settings given on the command line, for the `sesame proxy` that `sesame ssh`
    // runs: flags, but the API key through the environment (an argv is visible to
    // every local user in `ps`).
    let mut global = Vec::new();
    if let Some(relay) = &cli.relay {
        global.extend(["--relay".to_string(), relay.clone()]);
    }
    if let Some(ca) = &cli.ca {
        global.extend(["--ca".to_string(), ca.display().to_string()]);
    }
    if let Some(bind) = &cli.bind {
        global.extend(["--bind".to_string(), bind.to_string()]);
    }
    let proxy_env: Vec<(&str, String)> = cli
        .api_key
        .iter()
        .map(|k| ("SESAME_API_KEY", k.clone()))
        .collect();
    let config = Config::from_flags(Flags {
        relay: cli.relay,
        api_key: cli.api_key,
        ca: cli.ca,
        bind: cli.bind,
    })?;
    let relay = Relay::new(&config)?;
    match cli.cmd {
        Cmd::Web => {
            let link: serde_json::Value = relay.call("POST", "/v1/web/links", None).await?;
            let code = link["code"].as_str().unwrap_or_default();
            println!("{}/login#{code}", relay.origin());
            eprintln!("(open it within 5 minutes; it works once)");
            Ok(0)
        }
        Cmd::Ls { json } => {
            cli::ls::run(&relay, json).await?;
            Ok(0)
        }
        Cmd::Exec {
            target,
            run_as,
            command,
        } => session::run(&relay, &target, run_as.as_deref(), Request::Exec(command)).await,
        Cmd::Shell {
            target,
            run_as,
            tty,
            no_tty,
        } => {
            let pty = tty || (!no_tty && std::io::IsTerminal::is_terminal(&std::io::stdin()));
            session::run(&relay, &target, run_as.as_deref(), Request::Shell { pty }).await
        }
        Cmd::Forward {
            target,
            run_as,
            specs,
        } => {
            let mode = cli::forward::Mode::Listen(specs);
            cli::forward::run(&relay, &target, run_as.as_deref(), mode).await
        }
        Cmd::Proxy {
            target,
            run_as,
            port,
            host,
        } => {
            let mode = cli::forward::Mode::Stdio { host, port };
            cli::forward::run(&relay, &target, run_as.as_deref(), mode).await
        }
        Cmd::SshKey {
            cmd:
                SshKeyCmd::Push {
                    target,
                    user,
                    key,
                    ttl,
                },
        } => {
            let key = cli::ssh::read_key(&key)?;
            println!(
                "{}",
                session::push_key(&relay, &target, &user, &key, ttl).await?
            );
            Ok(0)
        }
        Cmd::Ssh {
            target,
            user,
            run_as,
            port,
            ssh_args,
        } => {
            let user = user
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "root".into());
            cli::ssh::run(
                &relay,
                &target,
                &user,
                run_as.as_deref(),
                port,
                (&global, &proxy_env),
                &ssh_args,
            )
            .await
        }
        Cmd::Sessions { cmd } => {
            cli::sessions::run(&relay, cmd).await?;
            Ok(0)
        }
        Cmd::Join(j) => cli::join::run(&relay, &j).await,
        Cmd::Replay(r) => {
            cli::replay::run(&relay, &r).await?;
            Ok(0)
        }
        Cmd::Recordings { cmd } => cli::recordings::run(&relay, &cmd).await,
        Cmd::Audit { cmd } => {
            cli::audit::run(&relay, &cmd).await?;
            Ok(0)
        }
        Cmd::Policy {
            cmd: cli::policy::PolicyCmd::Check(check),
        } => cli::policy::check(&relay, &check).await,
        Cmd::Admin { cmd } => cli::admin::run(&relay, cmd).await,
    }
}
