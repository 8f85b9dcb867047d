//! Run-as accounts: the account a shell or exec session runs as (named by the relay in
//! `Open`), resolved from `/etc/passwd` and `/etc/group` before anything is forked;
//! the credentials the child takes between fork and exec; its login environment and
//! working directory; the agent's default account, created on first use.
//!
//! The default account ([`default_name`]) is announced to the relay in `Auth`, so that
//! its policies decide on the account a session that names none really runs as; an
//! `Open` may also name it, with the same effect as naming none.
//!
//! There is no silent fallback: an account that does not exist is refused
//! ([`RunAsError::NoSuchAccount`]), and an agent that does not run as root runs
//! everything as itself and refuses any other account ([`RunAsError::CannotSwitch`]).

use std::ffi::CString;
use std::io;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_core::wire::ErrorCode;
use tracing::{info, warn};

use crate::passwd::{self, Account};

/// The default account unless `--default-account` names another.
pub const DEFAULT_ACCOUNT: &str = "sesame-user";
/// `PATH` of root's sessions.
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `PATH` of every other account's sessions (no `sbin`, as `login.defs` does).
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Where `--default-account-sudo` puts its rule.
const SUDOERS_DIR: &str = "/etc/sudoers.d";
/// First line of a sudoers file the agent wrote (so it only ever removes its own).
const SUDOERS_MARK: &str = "# Written by sesame-agent (--default-account-sudo)";
/// Longest wait for `useradd`: one that hangs (a stuck name service, a locked
/// `/etc/passwd`) is killed, and the session waiting for it refused.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// A shell profile (as AWS SSM's): applied by the agent to every shell session it
/// starts, never typed into the terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Environment variables set after the login environment (they may override it).
    pub env: Vec<(String, String)>,
    /// Working directory instead of the home (`%h` the home, `%u` the account name);
    /// the home, then `/`, if it cannot be entered.
    pub dir: Option<String>,
    /// Commands the account's shell runs on the session's terminal before the login
    /// shell starts.
    pub run: Vec<String>,
}

/// How the agent picks and prepares accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// The account of an `Open` without one (created on first use if missing).
    pub default: String,
    /// Whether the default account gets passwordless sudo.
    pub default_sudo: bool,
    /// Applied to shell sessions.
    pub profile: Profile,
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig {
            default: DEFAULT_ACCOUNT.into(),
            default_sudo: false,
            profile: Profile::default(),
        }
    }
}

/// Why a session cannot run as the account it asked for (the `Reject` reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunAsError {
    /// No such account in `/etc/passwd`.
    #[error("no account '{0}' on this machine")]
    NoSuchAccount(String),
    /// The agent is not root and another account was asked for.
    #[error("the agent runs as '{agent}' and cannot switch to '{wanted}'")]
    CannotSwitch {
        /// The agent's own account.
        agent: String,
        /// The account asked for.
        wanted: String,
    },
    /// The default account is missing and could not be created.
    #[error("no account '{name}' on this machine, and it could not be created: {why}")]
    CannotCreate {
        /// The default account.
        name: String,
        /// What failed.
        why: String,
    },
    /// Looking the account up failed unexpectedly (a bug; the agent's log has it).
    #[error("cannot look up account '{0}': internal error (see the agent's log)")]
    Internal(String),
}

impl RunAsError {
    /// The `Reject` code: no such user, or denied.
    pub fn code(&self) -> ErrorCode {
        match self {
            RunAsError::CannotSwitch { .. } => ErrorCode::DENIED,
            RunAsError::Internal(_) => ErrorCode::INTERNAL,
            _ => ErrorCode::NO_SUCH_USER,
        }
    }
}

/// The account a session runs as, resolved before anything is spawned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Every group of the account, the primary one first.
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: String,
    /// Login shell, `/bin/sh` if the account has none or it does not exist.
    pub shell: String,
    /// Whether the child switches to the account (the agent runs as root); otherwise
    /// the agent already runs as it.
    pub switch: bool,
}

impl RunAs {
    fn of(a: Account, groups: Vec<u32>, switch: bool) -> RunAs {
        let usable = !a.shell.is_empty() && Path::new(&a.shell).exists();
        RunAs {
            shell: if usable { a.shell } else { "/bin/sh".into() },
            name: a.name,
            uid: a.uid,
            gid: a.gid,
            groups,
            home: a.home,
            switch,
        }
    }

    /// The login environment: `HOME`, `USER`, `LOGNAME`, `SHELL`, `PATH` (with `sbin`
    /// for root only), `TERM` when there is a terminal (`xterm-256color` if the client
    /// named none), and the agent's `LANG`.
    pub fn login_env(&self, term: Option<&str>, lang: Option<&str>) -> Vec<(String, String)> {
        let path = if self.uid == 0 { ROOT_PATH } else { USER_PATH };
        let mut env: Vec<(String, String)> = [
            ("HOME", self.home.as_str()),
            ("USER", &self.name),
            ("LOGNAME", &self.name),
            ("SHELL", &self.shell),
            ("PATH", path),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(term) = term {
            let term = if term.is_empty() {
                "xterm-256color"
            } else {
                term
            };
            env.push(("TERM".into(), term.into()));
        }
        if let Some(lang) = lang {
            env.push(("LANG".into(), lang.into()));
        }
        env
    }

    /// The environment of a shell session: the login environment, then the profile's
    /// variables (which replace login variables of the same name).
    pub fn shell_env(
        &self,
        term: Option<&str>,
        lang: Option<&str>,
        profile: &Profile,
    ) -> Vec<(String, String)> {
        let mut env = self.login_env(term, lang);
        for (k, v) in &profile.env {
            env.retain(|(old, _)| old != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Directories to try, in order, as the session's working directory: `dir` (with
    /// `%h` and `%u` expanded) if given, the home, then `/`.
    pub fn workdirs(&self, dir: Option<&str>) -> Vec<String> {
        let mut dirs: Vec<String> = dir
            .map(|d| d.replace("%h", &self.home).replace("%u", &self.name))
            .into_iter()
            .collect();
        for d in [self.home.as_str(), "/"] {
            if !d.is_empty() && !dirs.iter().any(|x| x == d) {
                dirs.push(d.to_string());
            }
        }
        dirs
    }

    /// What the child does between fork and exec to become this account and enter
    /// its working directory (the first of `dirs` it can).
    pub fn credentials(&self, dirs: &[String]) -> Credentials {
        Credentials {
            switch: self.switch.then(|| Switch {
                uid: self.uid,
                gid: self.gid,
                groups: self.groups.clone(),
            }),
            dirs: dirs
                .iter()
                .filter_map(|d| CString::new(d.as_bytes()).ok())
                .collect(),
        }
    }
}

/// The account switch of a child.
#[derive(Debug, Clone)]
struct Switch {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Everything a child needs to become its account, prepared before fork so that the
/// child only makes system calls.
#[derive(Debug, Clone)]
pub struct Credentials {
    switch: Option<Switch>,
    dirs: Vec<CString>,
}

impl Credentials {
    /// In the child, before exec: `setgroups`, `setgid`, `setuid` in that order (the
    /// groups can only be set while still root), then enter the working directory as
    /// the account (a home on NFS may refuse root). Any failure fails the spawn: the
    /// child never goes on as root when an account was asked for. Only
    /// async-signal-safe system calls, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        if let Some(s) = &self.switch {
            // SAFETY: plain system calls on values owned by `self`, which outlives
            // them; `groups` is a valid array of `groups.len()` ids.
            unsafe {
                if libc::setgroups(s.groups.len() as _, s.groups.as_ptr()) != 0
                    || libc::setgid(s.gid) != 0
                    || libc::setuid(s.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // setuid as root sets the real, effective and saved ids; check it did.
                if libc::getuid() != s.uid || libc::geteuid() != s.uid {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
        }
        let mut last = io::Error::from_raw_os_error(libc::ENOENT);
        for d in &self.dirs {
            // SAFETY: `d` is a valid NUL-terminated string owned by `self`.
            if unsafe { libc::chdir(d.as_ptr()) } == 0 {
                return Ok(());
            }
            last = io::Error::last_os_error();
        }
        Err(last)
    }
}

/// The agent's default account, which it announces to the relay: the account of a
/// session that names none. A root agent's is `cfg.default`; an agent that is not root
/// runs everything as itself, so its default is its own account (its user id if the
/// account has no name).
pub fn default_name(cfg: &AccountConfig) -> String {
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 {
        return cfg.default.clone();
    }
    passwd::by_uid(euid).map_or_else(|| euid.to_string(), |a| a.name)
}

/// The account a session asked for as `requested` (empty, or the default account's
/// name: the default) runs as. Blocks on the file system and, the first time, on
/// creating the default account (at most a minute): call it off the async runtime.
pub fn resolve(cfg: &AccountConfig, requested: &str) -> Result<RunAs, RunAsError> {
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        // Not root: everything runs as the agent's own account.
        let me = passwd::by_uid(euid);
        let my_name = me
            .as_ref()
            .map_or_else(|| euid.to_string(), |a| a.name.clone());
        if !requested.is_empty() && requested != my_name {
            return Err(RunAsError::CannotSwitch {
                agent: my_name,
                wanted: requested.to_string(),
            });
        }
        return Ok(match me {
            Some(a) => RunAs::of(a, Vec::new(), false),
            None => RunAs {
                name: my_name,
                uid: euid,
                gid: rustix::process::getegid().as_raw(),
                groups: Vec::new(),
                home: "/".into(),
                shell: "/bin/sh".into(),
                switch: false,
            },
        });
    }
    let name = if requested.is_empty() {
        cfg.default.as_str()
    } else {
        requested
    };
    let account = match passwd::by_name(name) {
        Some(a) => a,
        None if name == cfg.default => {
            create_default(cfg)?;
            passwd::by_name(name).ok_or_else(|| RunAsError::NoSuchAccount(name.into()))?
        }
        None => return Err(RunAsError::NoSuchAccount(name.into())),
    };
    let groups = passwd::groups_of(&account.name, account.gid);
    Ok(RunAs::of(account, groups, true))
}

/// Held while the default account is created, so that two sessions opening at once
/// do not both run `useradd`.
static CREATING: Mutex<()> = Mutex::new(());

/// A program in root's `PATH`.
fn which(program: &str) -> Option<String> {
    ROOT_PATH
        .split(':')
        .map(|d| format!("{d}/{program}"))
        .find(|p| Path::new(p).is_file())
}

/// Create the default account: a system account with a home, its own group, a login
/// shell and no password, with `useradd`, or busybox's `adduser` where there is no
/// `useradd` (Alpine, small images).
fn create_default(cfg: &AccountConfig) -> Result<(), RunAsError> {
    let _creating = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    let name = cfg.default.as_str();
    if passwd::by_name(name).is_some() {
        return Ok(()); // another session created it meanwhile
    }
    let fail = |why: String| RunAsError::CannotCreate {
        name: name.to_string(),
        why,
    };
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let command: Vec<String> = if let Some(useradd) = which("useradd") {
        let args = ["--system", "--create-home", "--user-group", "--shell"];
        [useradd.as_str()]
            .into_iter()
            .chain(args)
            .chain([shell, name])
            .map(String::from)
            .collect()
    } else if let Some(adduser) = which("adduser") {
        [adduser.as_str(), "-D", "-s", "/bin/sh", name]
            .map(String::from)
            .to_vec()
    } else if let Some(busybox) = which("busybox") {
        [busybox.as_str(), "adduser", "-D", "-s", "/bin/sh", name]
            .map(String::from)
            .to_vec()
    } else {
        return Err(fail("neither useradd nor adduser is installed".into()));
    };
    let shown = command.join(" ");
    let (status, said) = run_bounded(&command, CREATE_TIMEOUT).map_err(|e| {
        warn!("could not create the default account: `{shown}`: {e}");
        fail(format!("`{shown}`: {e}"))
    })?;
    if !status.success() {
        let said = said.lines().next().unwrap_or("").trim();
        warn!("could not create the default account: `{shown}` failed ({status}): {said}");
        return Err(fail(format!("`{shown}` failed: {said}")));
    }
    info!(
        "created the default account '{name}' with `{shown}` (no password{})",
        if cfg.default_sudo {
            ", passwordless sudo"
        } else {
            ", no sudo"
        }
    );
    Ok(())
}

/// Run `command` (a clean environment, no input) for at most `timeout`: its exit
/// status and what it wrote to standard error. One still running then is killed.
fn run_bounded(
    command: &[String],
    timeout: Duration,
) -> io::Result<(std::process::ExitStatus, String)> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env_clear()
        .env("PATH", ROOT_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read on a thread of its own: a full pipe must not stall the child, nor a
    // descendant that keeps the pipe open stall us.
    let stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut said = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut said);
        }
        let _ = tx.send(said);
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("did not finish in {timeout:?}, killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    Ok((status, said))
}

/// The sudoers file of `account` (sudo skips names with a `.` in `/etc/sudoers.d`).
fn sudoers_file(account: &str) -> std::path::PathBuf {
    Path::new(SUDOERS_DIR).join(account.replace('.', "_"))
}

/// The sudoers rule `--default-account-sudo` writes.
fn sudoers_text(account: &str) -> String {
    format!("{SUDOERS_MARK}; removed when the agent runs without it.\n{account} ALL=(ALL) NOPASSWD:ALL\n")
}

/// Make the default account's sudo match the configuration: with
/// `--default-account-sudo`, `/etc/sudoers.d/ACCOUNT` (mode 0440) gives it
/// passwordless sudo; without, such a file the agent wrote earlier is removed. Run at
/// start-up by a root agent; each change is logged.
pub fn sync_sudo(cfg: &AccountConfig) {
    let path = sudoers_file(&cfg.default);
    let current = std::fs::read_to_string(&path).ok();
    let ours = current
        .as_deref()
        .is_some_and(|t| t.starts_with(SUDOERS_MARK));
    if !cfg.default_sudo {
        if ours {
            match std::fs::remove_file(&path) {
                Ok(()) => info!(
                    "removed {} (the agent runs without --default-account-sudo)",
                    path.display()
                ),
                Err(e) => warn!("cannot remove {}: {e}", path.display()),
            }
        }
        return;
    }
    let text = sudoers_text(&cfg.default);
    if current.as_deref() == Some(text.as_str()) {
        return;
    }
    if current.is_some() && !ours {
        warn!(
            "--default-account-sudo: {} exists and was not written by the agent; left as it is",
            path.display()
        );
        return;
    }
    if !Path::new(SUDOERS_DIR).is_dir() {
        warn!(
            "--default-account-sudo: {SUDOERS_DIR} does not exist (is sudo installed?); '{}' gets no sudo",
            cfg.default
        );
        return;
    }
    match write_sudoers(&path, &text) {
        Ok(()) => info!(
            "wrote {}: '{}' may use sudo without a password",
            path.display(),
            cfg.default
        ),
        Err(e) => warn!("cannot write {}: {e}", path.display()),
    }
}

/// Write a sudoers file whole: a temporary name sudo ignores (it has a `.`), mode
/// 0440 from the start, then renamed into place.
fn write_sudoers(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("sesame-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o440)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy() -> RunAs {
        RunAs {
            name: "deploy".into(),
            uid: 1001,
            gid: 1002,
            groups: vec![1002, 27],
            home: "/home/deploy".into(),
            shell: "/bin/bash".into(),
            switch: true,
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn login_environment_of_an_account() {
        let env = deploy().login_env(None, None);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["HOME", "USER", "LOGNAME", "SHELL", "PATH"]);
        assert_eq!(get(&env, "HOME"), Some("/home/deploy"));
        assert_eq!(get(&env, "USER"), Some("deploy"));
        assert_eq!(get(&env, "LOGNAME"), Some("deploy"));
        assert_eq!(get(&env, "SHELL"), Some("/bin/bash"));
        assert_eq!(get(&env, "PATH"), Some(USER_PATH));
        assert!(!USER_PATH.contains("sbin"));

        let root = RunAs {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            ..deploy()
        };
        let env = root.login_env(Some(""), Some("C.UTF-8"));
        assert_eq!(get(&env, "PATH"), Some(ROOT_PATH));
        assert_eq!(get(&env, "TERM"), Some("xterm-256color"));
        assert_eq!(get(&env, "LANG"), Some("C.UTF-8"));
        let env = root.login_env(Some("vt100"), None);
        assert_eq!(get(&env, "TERM"), Some("vt100"));
    }

    #[test]
    fn profile_variables_come_last_and_replace_login_ones() {
        let profile = Profile {
            env: vec![
                ("APP_ENV".into(), "prod".into()),
                ("PATH".into(), "/opt/app/bin:/usr/bin:/bin".into()),
            ],
            ..Profile::default()
        };
        let env = deploy().shell_env(Some("xterm"), None, &profile);
        assert_eq!(get(&env, "APP_ENV"), Some("prod"));
        assert_eq!(get(&env, "PATH"), Some("/opt/app/bin:/usr/bin:/bin"));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
        assert_eq!(get(&env, "TERM"), Some("xterm"));
    }

    #[test]
    fn working_directory_is_the_profile_dir_then_the_home_then_root() {
        let a = deploy();
        assert_eq!(a.workdirs(None), ["/home/deploy", "/"]);
        assert_eq!(
            a.workdirs(Some("%h/app/%u")),
            ["/home/deploy/app/deploy", "/home/deploy", "/"]
        );
        assert_eq!(a.workdirs(Some("/")), ["/", "/home/deploy"]);
        let homeless = RunAs {
            home: String::new(),
            ..deploy()
        };
        assert_eq!(homeless.workdirs(None), ["/"]);
    }

    #[test]
    fn refusals_name_the_account_and_carry_their_code() {
        let e = RunAsError::NoSuchAccount("deploy".into());
        assert_eq!(e.to_string(), "no account 'deploy' on this machine");
        assert_eq!(e.code(), ErrorCode::NO_SUCH_USER);
        let e = RunAsError::CannotSwitch {
            agent: "x".into(),
            wanted: "deploy".into(),
        };
        assert_eq!(
            e.to_string(),
            "the agent runs as 'x' and cannot switch to 'deploy'"
        );
        assert_eq!(e.code(), ErrorCode::DENIED);
    }

    #[test]
    fn sudoers_rule_and_file_name() {
        assert_eq!(
            sudoers_text("sesame-user").lines().nth(1),
            Some("sesame-user ALL=(ALL) NOPASSWD:ALL")
        );
        assert!(sudoers_text("x").starts_with(SUDOERS_MARK));
        assert_eq!(sudoers_file("svc.ops"), Path::new("/etc/sudoers.d/svc_ops"));
    }

    #[test]
    fn an_account_that_does_not_exist_is_refused() {
        let cfg = AccountConfig::default();
        let e = resolve(&cfg, "no-such-account-here").unwrap_err();
        if rustix::process::geteuid().is_root() {
            assert_eq!(e, RunAsError::NoSuchAccount("no-such-account-here".into()));
        } else {
            assert!(matches!(e, RunAsError::CannotSwitch { .. }), "{e}");
        }
    }

    #[test]
    fn naming_the_default_account_is_asking_for_the_default() {
        // `root` as the default, so that nothing is created on the machine.
        let cfg = AccountConfig {
            default: "root".into(),
            ..AccountConfig::default()
        };
        let name = default_name(&cfg);
        if rustix::process::geteuid().is_root() {
            assert_eq!(name, "root");
            assert_eq!(default_name(&AccountConfig::default()), DEFAULT_ACCOUNT);
        } else {
            // Not root: the agent's own account, whatever the configuration says.
            assert_eq!(name, default_name(&AccountConfig::default()));
        }
        assert!(agent_core::wire::account_valid(&name), "{name}");
        assert_eq!(resolve(&cfg, &name).unwrap(), resolve(&cfg, "").unwrap());
        assert_eq!(resolve(&cfg, "").unwrap().name, name);
    }

    #[test]
    fn account_creation_is_bounded_in_time_and_says_why_it_failed() {
        let sh = |script: &str| ["/bin/sh", "-c", script].map(String::from);
        let started = Instant::now();
        let e = run_bounded(&sh("sleep 5"), Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.to_string(), "did not finish in 200ms, killed");
        assert!(started.elapsed() < Duration::from_secs(3));
        let (status, said) =
            run_bounded(&sh("echo 'useradd: nope' >&2; exit 3"), CREATE_TIMEOUT).unwrap();
        assert_eq!((status.code(), said.as_str()), (Some(3), "useradd: nope\n"));
    }

    #[test]
    fn root_resolves_with_its_groups_and_a_usable_shell() {
        if !rustix::process::geteuid().is_root() {
            return; // only root can switch; tested as the agent's own account below
        }
        let root = resolve(&AccountConfig::default(), "root").unwrap();
        assert_eq!((root.uid, root.gid, root.switch), (0, 0, true));
        assert_eq!(root.groups.first(), Some(&0));
        assert!(Path::new(&root.shell).exists(), "{}", root.shell);
    }
}
