//! `sesame-agent`: connect this machine to a Sesame relay.
//!
//! Arguments are parsed with `lexopt` rather than clap: the static agent carries
//! every byte it links, and a full parser is a tenth of its code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use agent_linux::install::{self, InstallOptions};

const USAGE: &str = "\
Sesame agent: dials out to a relay and serves shells and commands, each as the
account the relay names.

Usage:
  sesame-agent --relay wss://HOST:PORT --ca FILE [--state-dir DIR] [--activate CODE]
  sesame-agent install --relay wss://HOST:PORT --ca FILE [--activate CODE]
  sesame-agent uninstall [--purge]
  sesame-agent --version

Options:
  --relay URL       relay to dial (or $SESAME_RELAY)
  --ca FILE         PEM CA certificate that signs the relay's certificate (or $SESAME_CA)
  --state-dir DIR   where the identity key lives [default: /var/lib/sesame-agent]
  --activate CODE   one-time code from `sesame-relay agent add` (first run only)
  --allow-dest RULE forward sessions may reach only these destinations (repeatable);
                    RULE is NET[/PREFIX][:PORTS], e.g. 10.0.0.0/8, 127.0.0.1:22,8000-8999,
                    [fd00::/8]:443 [default: anywhere]
  --deny-dest RULE  never these destinations (repeatable; deny wins over allow)
  --allow-metadata  allow the cloud metadata services and link-local networks
                    (169.254.0.0/16, fe80::/10, fd00:ec2::254, 100.100.100.200,
                    168.63.129.16; denied by default)
  --authorized-keys PATTERN
                    where pushed SSH keys go, as sshd's AuthorizedKeysFile
                    (%h home, %u user) [default: %h/.ssh/authorized_keys]
  --default-account NAME
                    account of the sessions the relay names no account for (told to
                    the relay, whose policies decide on it); created on first use,
                    without a password, if missing [default: sesame-user].
                    An agent not run as root runs every session as itself
  --default-account-sudo
                    give the default account sudo without a password
                    (/etc/sudoers.d/NAME) [default: no sudo]
  --profile-env NAME=VALUE
                    shell sessions get this environment variable (repeatable)
  --profile-dir DIR shell sessions start in DIR (%h home, %u account) [default: home]
  --profile-run COMMAND
                    shell sessions first run COMMAND with the account's shell, on
                    their terminal, then the login shell (repeatable, in order)
  --purge           uninstall: also remove the state directory (the identity)
  -V, --version     print version, target and protocol version
  -h, --help        print this help

Logging: RUST_LOG=info (default), or e.g. RUST_LOG=info,agent_linux=debug";

#[derive(Default)]
struct Args {
    cmd: Option<String>,
    relay: Option<String>,
    ca: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    activate: Option<String>,
    root: Option<PathBuf>,
    purge: bool,
    allow: Vec<agent_linux::policy::Rule>,
    deny: Vec<agent_linux::policy::Rule>,
    allow_metadata: bool,
    authorized_keys: Option<String>,
    accounts: agent_linux::account::AccountConfig,
    /// The options above as given, for the service's command line.
    passthrough: Vec<String>,
}

enum Parsed {
    Run(Box<Args>),
    Print(String),
}

fn string(v: OsString) -> Result<String, String> {
    v.into_string()
        .map_err(|v| format!("argument is not UTF-8: {v:?}"))
}

fn parse() -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_env();
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Print(USAGE.into())),
            Short('V') | Long("version") => return Ok(Parsed::Print(agent_linux::version())),
            Long("relay") => a.relay = Some(string(p.value().map_err(err)?)?),
            Long("ca") => a.ca = Some(p.value().map_err(err)?.into()),
            Long("state-dir") => a.state_dir = Some(p.value().map_err(err)?.into()),
            Long("activate") => {
                let code = string(p.value().map_err(err)?)?;
                let max = agent_core::session::ACTIVATION_MAX;
                if code.len() > max || !code.is_ascii() {
                    return Err(format!(
                        "--activate: not an activation code (codes are ASCII, at most {max} bytes; copy it from `sesame-relay agent add`)"
                    ));
                }
                a.activate = Some(code);
            }
            Long("root") => a.root = Some(p.value().map_err(err)?.into()),
            Long("purge") => a.purge = true,
            Long("allow-dest") | Long("deny-dest") => {
                let deny = arg == Long("deny-dest");
                let flag = if deny { "--deny-dest" } else { "--allow-dest" };
                let v = string(p.value().map_err(err)?)?;
                let rule = v.parse()?;
                if deny {
                    a.deny.push(rule)
                } else {
                    a.allow.push(rule)
                }
                a.passthrough.extend([flag.to_string(), v]);
            }
            Long("allow-metadata") => {
                a.allow_metadata = true;
                a.passthrough.push("--allow-metadata".into());
            }
            Long("default-account") => {
                let v = string(p.value().map_err(err)?)?;
                if v.is_empty() || !agent_core::wire::account_valid(&v) {
                    return Err(format!(
                        "--default-account: '{v}' is not an account name (at most {} bytes of letters, digits, . _ - @ $)",
                        agent_core::wire::ACCOUNT_MAX
                    ));
                }
                a.passthrough
                    .extend(["--default-account".to_string(), v.clone()]);
                a.accounts.default = v;
            }
            Long("default-account-sudo") => {
                a.accounts.default_sudo = true;
                a.passthrough.push("--default-account-sudo".into());
            }
            Long("profile-env") => {
                let v = string(p.value().map_err(err)?)?;
                let (name, value) = v.split_once('=').unwrap_or((&v, ""));
                let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && v.contains('=');
                if !ok {
                    return Err(format!(
                        "--profile-env: '{v}' is not NAME=VALUE (a name of letters, digits and _)"
                    ));
                }
                let var = (name.to_string(), value.to_string());
                a.accounts.profile.env.push(var);
                a.passthrough.extend(["--profile-env".to_string(), v]);
            }
            Long("profile-dir") => {
                let v = string(p.value().map_err(err)?)?;
                if !v.starts_with('/') && !v.starts_with("%h") {
                    return Err(format!(
                        "--profile-dir: '{v}' is not an absolute path (or one under %h, the home)"
                    ));
                }
                a.passthrough
                    .extend(["--profile-dir".to_string(), v.clone()]);
                a.accounts.profile.dir = Some(v);
            }
            Long("profile-run") => {
                let v = string(p.value().map_err(err)?)?;
                if v.trim().is_empty() {
                    return Err("--profile-run: empty command".into());
                }
                a.passthrough
                    .extend(["--profile-run".to_string(), v.clone()]);
                a.accounts.profile.run.push(v);
            }
            Long("authorized-keys") => {
                let v = string(p.value().map_err(err)?)?;
                a.passthrough
                    .extend(["--authorized-keys".to_string(), v.clone()]);
                a.authorized_keys = Some(v);
            }
            Value(v) if a.cmd.is_none() => {
                let v = string(v)?;
                if v != "install" && v != "uninstall" {
                    return Err(format!("unknown command '{v}' (see --help)"));
                }
                a.cmd = Some(v);
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    Ok(Parsed::Run(Box::new(a)))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Print(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n(see sesame-agent --help)");
            return ExitCode::from(2);
        }
    };
    let relay = args
        .relay
        .clone()
        .or_else(|| std::env::var("SESAME_RELAY").ok());
    let ca = args
        .ca
        .clone()
        .or_else(|| std::env::var_os("SESAME_CA").map(PathBuf::from));
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let said = match args.cmd.as_deref() {
        Some("uninstall") => install::uninstall(&root, args.purge),
        cmd => {
            let (Some(relay), Some(ca)) = (relay, ca) else {
                eprintln!("error: --relay and --ca are required (see sesame-agent --help)");
                return ExitCode::from(2);
            };
            if cmd == Some("install") {
                install::install(&InstallOptions {
                    relay,
                    ca,
                    activate: args.activate,
                    root,
                    extra_args: args.passthrough,
                })
            } else {
                return run(agent_linux::AgentOptions {
                    relay,
                    ca,
                    state_dir: args
                        .state_dir
                        .unwrap_or_else(|| PathBuf::from("/var/lib/sesame-agent")),
                    activate: args.activate,
                    policy: agent_linux::policy::DestPolicy::new(
                        args.allow,
                        args.deny,
                        args.allow_metadata,
                    ),
                    authorized_keys: args
                        .authorized_keys
                        .unwrap_or_else(|| "%h/.ssh/authorized_keys".into()),
                    accounts: args.accounts,
                });
            }
        }
    };
    match said {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: agent_linux::AgentOptions) -> ExitCode {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // `Targets` understands `info,agent_linux=debug` without pulling in regex.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    keep_freed_memory();
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
    match rt.block_on(agent_linux::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Let glibc keep up to 8 MiB of freed heap instead of trimming it (its default
/// is 128 KiB, raised only by freed mmap chunks): every forwarded frame is a fresh
/// 32 KiB buffer, so each drained queue gave pages back and the next burst faulted
/// them in again: 290 000 page faults in one throughput bench, 350 with this.
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}
