//! Starting the agent: its options, identity and default account checked once, then
//! one relay connection after another ([`crate::driver`]), with the reconnect
//! backoff of every agent. The sessions ([`crate::state`]) live across connections:
//! while the agent connects again, the ones the engine holds keep running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_core::backoff::Backoff;
use agent_core::wire;
use ring::rand::SecureRandom;
use tracing::{info, warn};

use crate::account::{self, AccountConfig};
use crate::connect::RelayTarget;
use crate::driver::{engine_config, serve};
use crate::identity::Identity;
use crate::policy::DestPolicy;
use crate::sshkey::{self, KeyConfig};
use crate::state::AgentState;

/// What sessions need from the agent's configuration.
pub(crate) struct Context {
    pub(crate) policy: Arc<DestPolicy>,
    pub(crate) keys: KeyConfig,
    pub(crate) accounts: Arc<AccountConfig>,
    /// The account of a session that names none, announced in `Auth`.
    pub(crate) default_account: String,
}

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `wss://host:port` of the relay.
    pub relay: String,
    /// CA certificate(s) that sign the relay's certificate.
    pub ca: PathBuf,
    /// Where the identity key lives.
    pub state_dir: PathBuf,
    /// One-time activation code (first run).
    pub activate: Option<String>,
    /// Destinations forward sessions may reach.
    pub policy: crate::policy::DestPolicy,
    /// Where pushed SSH keys go (`%h/.ssh/authorized_keys` by default).
    pub authorized_keys: String,
    /// The default account, its sudo, and the shell profile.
    pub accounts: AccountConfig,
}

/// Why the agent cannot start at all (a reconnect would not help).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity key could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The relay URL or CA is unusable.
    #[error(transparent)]
    Target(#[from] crate::connect::ConnectError),
    /// First run without an activation code.
    #[error("no identity in {0}: run once with --activate CODE (from `sesame-relay agent add`)")]
    NotActivated(String),
    /// The default account cannot be named to the relay.
    #[error("the default account '{0}' is not an account name the relay accepts (at most 64 bytes of letters, digits, . _ - @ $, not starting with -)")]
    DefaultAccount(String),
}

/// Run forever: connect, serve, and reconnect with jittered exponential backoff.
pub async fn run(opts: AgentOptions) -> Result<(), StartError> {
    let target = RelayTarget::new(&opts.relay, &opts.ca)?;
    // A code given at install time waits in the state directory until it is used.
    let code_file = opts.state_dir.join(crate::install::ACTIVATION_FILE);
    let mut activation = match &opts.activate {
        Some(code) => code.trim().to_string(),
        None => std::fs::read_to_string(&code_file)
            .map(|c| c.trim().to_string())
            .unwrap_or_default(),
    };
    let identity_exists = opts.state_dir.join("identity.pk8").exists();
    if activation.is_empty() && !identity_exists {
        return Err(StartError::NotActivated(
            opts.state_dir.display().to_string(),
        ));
    }
    // The relay's policies decide on this account for sessions that name none, so it
    // must be the one they really run as, and it goes to the relay whole.
    let default_account = account::default_name(&opts.accounts);
    if !wire::account_valid(&default_account) || default_account.is_empty() {
        return Err(StartError::DefaultAccount(default_account));
    }
    let identity = Identity::load_or_create(&opts.state_dir)?;
    let ctx = Context {
        policy: Arc::new(opts.policy.clone()),
        keys: KeyConfig {
            pattern: opts.authorized_keys.clone(),
            state_dir: opts.state_dir.clone(),
        },
        accounts: Arc::new(opts.accounts.clone()),
        default_account,
    };
    if rustix::process::geteuid().is_root() {
        let accounts = ctx.accounts.clone();
        tokio::task::spawn_blocking(move || account::sync_sudo(&accounts));
    } else {
        let me = &ctx.default_account;
        info!("not running as root: every session runs as '{me}', other accounts are refused");
        if opts.accounts.default_sudo {
            warn!("--default-account-sudo ignored: the agent does not run as root");
        }
    }
    // Off the runtime thread: the files belong to local users (see `sshkey`).
    let keys = ctx.keys.clone();
    tokio::task::spawn_blocking(move || sshkey::sweep_registered(&keys));
    let mut backoff = Backoff::new();
    let random = || {
        let mut r = [0u8; 4];
        let _ = ring::rand::SystemRandom::new().fill(&mut r);
        u32::from_le_bytes(r)
    };
    let mut state = AgentState::new(&ctx, engine_config());
    loop {
        // Sessions held through a lost link go on while the agent is away.
        match state.idle(target.connect()).await {
            Ok(ws) => {
                let outcome = serve(ws, &mut state, &identity, &activation, &code_file).await;
                if outcome.authenticated {
                    backoff.reset();
                    // The key is registered now; the code is spent.
                    activation.clear();
                }
                warn!("disconnected from {}: {}", target.addr(), outcome.reason);
            }
            Err(e) => warn!("{e}"),
        }
        let wait = Duration::from_millis(backoff.next(random()).as_millis());
        info!("reconnecting in {:.1} s", wait.as_secs_f64());
        state.idle(tokio::time::sleep(wait)).await;
    }
}
