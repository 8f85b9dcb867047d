//! A real OpenSSH server on a random loopback port, with its own host key and an
//! `AuthorizedKeysFile` in a directory of ours (for the ssh tests and the bench).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Proc;

/// A running sshd.
pub struct Sshd {
    /// The process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Directory of `authorized_keys` files, one per user name.
    pub keys: PathBuf,
}

/// `ssh-keygen -t ed25519` without a passphrase.
pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(st.success());
}

/// Start sshd in `dir` (needs root and openssh-server).
pub fn start(dir: &Path) -> Sshd {
    assert!(rustix::process::geteuid().is_root(), "sshd needs root");
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "install openssh-server (tests/run-all.sh does)"
    );
    std::fs::create_dir_all("/run/sshd").unwrap(); // privilege separation directory
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&dir.join("host_key"));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
             AuthorizedKeysFile {}/%u\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\nLogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\nMaxStartups 100\n",
            dir.join("host_key").display(),
            dir.join("sshd.pid").display(),
            keys.display()
        ),
    )
    .unwrap();
    let log = dir.join("sshd.log");
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc { child, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not start: {}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { proc, port, keys }
}

/// Options for a non-interactive `ssh` with `key` that trusts any host key.
pub fn client_opts(key: &Path) -> Vec<String> {
    let mut v = vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        key.display().to_string(),
    ];
    for o in [
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
    ] {
        v.push("-o".into());
        v.push(o.into());
    }
    v
}
