//! `sesame ssh`: log in with the system's `ssh` through `sesame proxy`, using a
//! throwaway key that the agent accepts for 60 seconds. No key to manage, no port to
//! open on the target.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::client::Relay;
use crate::session;

/// Seconds the throwaway key stays valid: long enough to log in.
pub const TTL: u32 = 60;

/// A private directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> anyhow::Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let p = base.join(format!("sesame-ssh-{}-{i}", std::process::id()));
        if std::fs::DirBuilder::new().mode(0o700).create(&p).is_ok() {
            return Ok(TempDir(p));
        }
    }
    bail!("cannot create a private directory in {}", base.display())
}

fn known_hosts() -> Option<PathBuf> {
    let dir = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) => PathBuf::from(d).join("sesame"),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config/sesame"),
    };
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("known_hosts"))
}

/// Quote for the shell that runs ssh's ProxyCommand.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Run `ssh` to `user@target` on `port`, its `sesame proxy` given `global_flags` and
/// `proxy_env` and run as `run_as` (the forward session's account; the key's is
/// `user`); returns ssh's exit code.
pub async fn run(
    relay: &Relay,
    target: &str,
    user: &str,
    run_as: Option<&str>,
    port: u16,
    (global_flags, proxy_env): (&[String], &[(&str, String)]),
    ssh_args: &[String],
) -> anyhow::Result<i32> {
    let dir = temp_dir()?;
    let key = dir.0.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "sesame-ssh", "-f"])
        .arg(&key)
        .status()
        .context("cannot run ssh-keygen (install openssh-client)")?;
    if !status.success() {
        bail!("ssh-keygen failed");
    }
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    session::push_key(relay, target, user, &public, TTL).await?;

    let exe = std::env::current_exe().context("cannot find the sesame executable")?;
    let mut proxy = vec![sh_quote(&exe.display().to_string())];
    proxy.extend(global_flags.iter().map(|f| sh_quote(f)));
    proxy.push("proxy".into());
    if let Some(account) = run_as {
        proxy.push("--as".into());
        proxy.push(sh_quote(account));
    }
    proxy.push(sh_quote(target));
    proxy.push("%p".into());
    let mut cmd = Command::new("ssh");
    // ssh hands its environment to the ProxyCommand.
    cmd.envs(proxy_env.iter().map(|(k, v)| (k, v)));
    cmd.arg("-i")
        .arg(&key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
        ])
        .arg("-o")
        .arg(format!("ProxyCommand={}", proxy.join(" ")))
        .arg("-o")
        .arg(format!("HostKeyAlias=sesame-{target}"))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .arg("-p")
        .arg(port.to_string());
    if let Some(kh) = known_hosts() {
        cmd.arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()));
    }
    cmd.arg(format!("{user}@{target}")).args(ssh_args);
    let status = cmd
        .status()
        .context("cannot run ssh (install openssh-client)")?;
    drop(dir);
    Ok(status.code().unwrap_or(255))
}

/// Read a public key file.
pub fn read_key(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
