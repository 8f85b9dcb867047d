//! `sesame-agent install` / `uninstall`: a supervised system service.
//!
//! The agent is built with `panic = "abort"`, so a bug kills the whole process; systemd
//! restarts it. `install` copies the running binary to `/usr/local/bin`, prepares the
//! state directory (`/var/lib/sesame-agent`: identity key, CA, pending activation code)
//! and installs a unit that keeps the agent alive and out of the OOM killer's way.
//! Every path is taken relative to `root`, so it can be tested in a temporary folder.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::connect::RelayTarget;
use crate::identity::Identity;

/// Where things go, relative to the root.
pub const BIN: &str = "usr/local/bin/sesame-agent";
/// The state directory.
pub const STATE: &str = "var/lib/sesame-agent";
/// The unit file.
pub const UNIT: &str = "etc/systemd/system/sesame-agent.service";
/// File holding an activation code until the first successful connection.
pub const ACTIVATION_FILE: &str = "activation";

/// Why installing failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Not root.
    #[error("install needs root (run it with sudo)")]
    NotRoot,
    /// The relay URL or CA is unusable.
    #[error(transparent)]
    Target(#[from] crate::connect::ConnectError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The identity could not be made.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// systemctl failed.
    #[error("systemctl {0} failed; see `journalctl -u sesame-agent`")]
    Systemctl(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `install` needs.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// `wss://host:port` of the relay.
    pub relay: String,
    /// CA file to trust for the relay.
    pub ca: PathBuf,
    /// One-time activation code.
    pub activate: Option<String>,
    /// Install under this root (`/` for real).
    pub root: PathBuf,
    /// More agent options for the service's command line (forwarding policy...).
    pub extra_args: Vec<String>,
}

/// The systemd unit for an agent of `relay`, with more agent options `extra`.
pub fn unit_file(relay: &str, extra: &[String]) -> String {
    let extra: String = extra.iter().map(|a| format!(" {}", quote(a))).collect();
    format!(
        "# Installed by `sesame-agent install`; removed by `sesame-agent uninstall`.
[Unit]
Description=Sesame agent (outbound connection to {relay})
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart=/{BIN} --relay {relay} --ca /{STATE}/ca.pem --state-dir /{STATE}{extra}
# The agent aborts on a bug (panic = \"abort\"): come back, always, without giving up.
Restart=always
RestartSec=2s
StartLimitIntervalSec=0
# Stay reachable when the machine is in trouble: the OOM killer picks others first
# (the agent resets its children to a neutral score), and the agent gets CPU first.
OOMScoreAdjust=-900
CPUWeight=1000
IOWeight=1000
LimitNOFILE=65536
# No NoNewPrivileges, ProtectSystem or PrivateTmp: session shells inherit them, and an
# operator's shell must be able to use sudo, write /usr and see the real /tmp.
KillMode=control-group
Environment=RUST_LOG=info

[Install]
WantedBy=multi-user.target
"
    )
}

/// Quote an argument for a systemd command line when it needs it.
fn quote(a: &str) -> String {
    if a.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:,=[]@".contains(c))
    {
        a.to_string()
    } else {
        // systemd unquotes "..." with C-style escapes; `%` is a specifier and `$` a
        // variable (both double); a line break would end the line.
        format!(
            "\"{}\"",
            a.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('%', "%%")
                .replace('$', "$$")
                .replace('\n', "\\n")
        )
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), InstallError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), InstallError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io(path))
}

fn systemd_running(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").exists()
}

fn systemctl(args: &[&str]) -> Result<(), InstallError> {
    let ok = Command::new("systemctl")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(InstallError::Systemctl(args.join(" ")))
    }
}

/// Install the binary, state and unit; start the service when systemd runs.
/// Returns the lines to show the operator.
pub fn install(opts: &InstallOptions) -> Result<Vec<String>, InstallError> {
    if opts.root == Path::new("/") && !rustix::process::geteuid().is_root() {
        return Err(InstallError::NotRoot);
    }
    RelayTarget::new(&opts.relay, &opts.ca)?; // refuse a bad URL or CA before touching anything
    let root = &opts.root;
    let bin = root.join(BIN);
    let state = root.join(STATE);
    let unit = root.join(UNIT);
    let mut said = Vec::new();

    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    mkdir(bin.parent().unwrap_or(root), 0o755)?;
    if exe.canonicalize().ok() != bin.canonicalize().ok() {
        let data = std::fs::read(&exe).map_err(io(&exe))?;
        write_file(&bin, &data, 0o755)?;
    }
    said.push(format!("installed {}", bin.display()));

    mkdir(&state, 0o700)?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).map_err(io(&state))?;
    let ca = std::fs::read(&opts.ca).map_err(io(&opts.ca))?;
    write_file(&state.join("ca.pem"), &ca, 0o644)?;
    let identity = Identity::load_or_create(&state)?;
    if let Some(code) = &opts.activate {
        write_file(&state.join(ACTIVATION_FILE), code.trim().as_bytes(), 0o600)?;
    }
    said.push(format!(
        "state in {} ({} identity key)",
        state.display(),
        if identity.created { "new" } else { "existing" }
    ));

    mkdir(unit.parent().unwrap_or(root), 0o755)?;
    write_file(
        &unit,
        unit_file(&opts.relay, &opts.extra_args).as_bytes(),
        0o644,
    )?;
    said.push(format!("installed {}", unit.display()));

    if systemd_running(root) {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", "sesame-agent.service"])?;
        said.push("sesame-agent.service enabled and started".into());
    } else {
        said.push(
            "systemd is not running here: start it with `systemctl enable --now sesame-agent`"
                .into(),
        );
    }
    Ok(said)
}

/// Stop and remove the service and the binary; with `purge`, the state as well.
pub fn uninstall(root: &Path, purge: bool) -> Result<Vec<String>, InstallError> {
    if root == Path::new("/") && !rustix::process::geteuid().is_root() {
        return Err(InstallError::NotRoot);
    }
    let mut said = Vec::new();
    if systemd_running(root) {
        // Stopping may fail when it is not running; that is fine.
        let _ = systemctl(&["disable", "--now", "sesame-agent.service"]);
    }
    for rel in [UNIT, BIN] {
        let p = root.join(rel);
        match std::fs::remove_file(&p) {
            Ok(()) => said.push(format!("removed {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
    }
    if systemd_running(root) {
        systemctl(&["daemon-reload"])?;
    }
    let state = root.join(STATE);
    if purge {
        match std::fs::remove_dir_all(&state) {
            Ok(()) => said.push(format!("removed {}", state.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&state)(e)),
        }
    } else if state.exists() {
        said.push(format!(
            "kept {} (the agent's identity); --purge removes it",
            state.display()
        ));
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_arguments_reach_the_agent_unchanged() {
        assert_eq!(quote("--profile-env"), "--profile-env");
        assert_eq!(quote("APP_ENV=prod"), "APP_ENV=prod");
        // A profile command: systemd would expand $HOME and %h, and split on spaces.
        assert_eq!(
            quote("cd %h/app && echo \"$HOME\"\nls"),
            "\"cd %%h/app && echo \\\"$$HOME\\\"\\nls\""
        );
        let unit = unit_file(
            "wss://r:443",
            &["--profile-run".into(), "echo $USER".into()],
        );
        assert!(unit.contains(" --profile-run \"echo $$USER\"\n"), "{unit}");
    }
}
