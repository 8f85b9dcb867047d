//! OpenSSH through Sesame, against a real `sshd` started by the test on a random
//! loopback port with its own host key and `AuthorizedKeysFile` (the agent writes
//! pushed keys to the same place). Needs root (sshd switches to the user) and
//! openssh-server: ignored by a plain `cargo test`, run by `tests/run-all.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tests::{bin, text, Env};

use tests::sshd::{self, keygen, Sshd};

fn start_sshd(dir: &Path) -> Sshd {
    sshd::start(dir)
}

/// An environment whose agent writes keys where this sshd reads them.
fn setup() -> (Env, Sshd, PathBuf) {
    let dir = tests::TempDir::new("sshd");
    let sshd = start_sshd(&dir.0);
    let pattern = format!("{}/%u", sshd.keys.display());
    let env = Env::start_custom(
        &[],
        &[
            bin("sesame-agent"),
            "--authorized-keys".into(),
            pattern.into(),
        ],
    );
    let user_key = env.dir.0.join("id_ed25519");
    keygen(&user_key);
    std::mem::forget(dir); // sshd's files live as long as the test process
    (env, sshd, user_key)
}

fn ssh(env: &Env, sshd: &Sshd, key: &Path, args: &[&str]) -> Output {
    let proxy = format!("{} proxy gw-01 %p", bin("sesame").display());
    env.command("ssh")
        .args(sshd::client_opts(key))
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg("root@gw-01")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `sesame ssh gw-01 --user root -p PORT -- ARGS`.
fn sesame_ssh(env: &Env, sshd: &Sshd, args: &[&str]) -> Output {
    env.sesame()
        .args([
            "ssh",
            "gw-01",
            "--user",
            "root",
            "-p",
            &sshd.port.to_string(),
            "--",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn push(env: &Env, key: &Path, ttl: u32) -> Output {
    env.sesame()
        .args([
            "ssh-key",
            "push",
            "gw-01",
            "--user",
            "root",
            "--ttl",
            &ttl.to_string(),
        ])
        .arg(key.with_extension("pub"))
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root and openssh-server; run by tests/run-all.sh"]
fn pushed_key_logs_in_through_proxy_and_scp_round_trips_5_mb() {
    let (env, sshd, key) = setup();
    let out = push(&env, &key, 60);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out)
            .0
            .starts_with("key valid for 'root' for 60 s (until "),
        "{}",
        text(&out).0
    );
    let keys = std::fs::read_to_string(sshd.keys.join("root")).unwrap();
    assert!(keys.starts_with("expiry-time=\""), "{keys}");

    let out = ssh(
        &env,
        &sshd,
        &key,
        &["echo", "hello-from-sshd", "&&", "id", "-u"],
    );
    assert_eq!(text(&out).0, "hello-from-sshd\n0\n", "{}", text(&out).1);

    // 5 MB of random bytes up and back down with scp, through the same proxy.
    let src = env.dir.0.join("blob");
    let mut data = vec![0u8; 5 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 7;
        x ^= x >> 9;
        *b = x as u8;
    }
    std::fs::write(&src, &data).unwrap();
    let remote = env.dir.0.join("remote-copy");
    let back = env.dir.0.join("back");
    let proxy = format!("ProxyCommand={} proxy gw-01 %p", bin("sesame").display());
    for (from, to) in [
        (
            src.display().to_string(),
            format!("root@gw-01:{}", remote.display()),
        ),
        (
            format!("root@gw-01:{}", remote.display()),
            back.display().to_string(),
        ),
    ] {
        let out = env
            .command("scp")
            .arg("-q")
            .args(sshd::client_opts(&key))
            .args(["-o", &proxy])
            .arg("-P")
            .arg(sshd.port.to_string())
            .args([&from, &to])
            .output()
            .unwrap();
        assert!(out.status.success(), "scp {from} {to}: {}", text(&out).1);
    }
    let digest = |p: &Path| {
        let out = Command::new("sha256sum").arg(p).output().unwrap();
        text(&out).0.split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(digest(&back), digest(&src));
}

#[test]
#[ignore = "needs root and openssh-server; run by tests/run-all.sh"]
fn sesame_ssh_logs_in_with_no_key_set_up() {
    let (env, sshd, _) = setup();
    let out = sesame_ssh(&env, &sshd, &["echo", "via-sesame-ssh"]);
    assert_eq!(text(&out).0, "via-sesame-ssh\n", "{}", text(&out).1);
    assert_eq!(out.status.code(), Some(0));
    let out = sesame_ssh(&env, &sshd, &["exit", "3"]);
    assert_eq!(out.status.code(), Some(3), "ssh's exit code comes back");
}

#[test]
#[ignore = "needs root and openssh-server; run by tests/run-all.sh"]
fn pushed_key_stops_working_after_its_ttl() {
    let (env, sshd, key) = setup();
    // Long enough that the first login fits in it on a busy 2-core CI machine (a
    // 2 s key once expired before ssh got in), short enough to wait out.
    const TTL: u32 = 8;
    let pushed = std::time::Instant::now();
    assert!(push(&env, &key, TTL).status.success());
    let out = ssh(&env, &sshd, &key, &["true", "&&", "echo", "in"]);
    assert_eq!(
        text(&out).0,
        "in\n",
        "first login, {:?} after the push: {}",
        pushed.elapsed(),
        text(&out).1
    );
    let expired = Duration::from_secs(u64::from(TTL)) + Duration::from_millis(1500);
    std::thread::sleep(expired.saturating_sub(pushed.elapsed()));
    let out = ssh(&env, &sshd, &key, &["echo", "in"]);
    assert_ne!(out.status.code(), Some(0), "the expired key still logs in");
    assert!(
        text(&out).1.contains("Permission denied"),
        "{}",
        text(&out).1
    );
    // The agent also removes the line, a second after the expiry.
    let read = || std::fs::read_to_string(sshd.keys.join("root")).unwrap_or_default();
    let mut keys = read();
    for _ in 0..50 {
        if !keys.contains("sesame:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        keys = read();
    }
    assert!(
        !keys.contains("sesame:"),
        "expired line left behind: {keys}"
    );
}

#[test]
#[ignore = "needs root and openssh-server; run by tests/run-all.sh"]
fn pushing_for_a_missing_user_or_a_bad_key_is_refused() {
    let (env, _sshd, key) = setup();
    let out = env
        .sesame()
        .args(["ssh-key", "push", "gw-01", "--user", "no-such-user-here"])
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out).1,
        "error: gw-01: no such user 'no-such-user-here' on this target\n"
    );
    let bogus = env.dir.0.join("bogus.pub");
    std::fs::write(
        &bogus,
        "command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI",
    )
    .unwrap();
    let out = env
        .sesame()
        .args(["ssh-key", "push", "gw-01", "--user", "root"])
        .arg(&bogus)
        .output()
        .unwrap();
    assert_eq!(
        text(&out).1,
        "error: gw-01: unsupported key type 'command=\"sh\"'\n"
    );
}

/// `sesame --api-key KEY ssh` once copied the key into its ProxyCommand's argv, which
/// every local user can read with `ps`. The login still works with the key given only
/// as a flag, and the proxy's arguments do not hold it (the target is this machine,
/// so the remote `ps` sees the local `sesame proxy`).
#[test]
#[ignore = "needs root and openssh-server; run by tests/run-all.sh"]
fn sesame_ssh_keeps_the_api_key_out_of_argv() {
    let (env, sshd, _) = setup();
    let out = env
        .sesame()
        .env_remove("SESAME_API_KEY")
        .args(["--api-key", &env.api_key])
        .args(["ssh", "gw-01", "--user", "root", "-p"])
        .arg(sshd.port.to_string())
        .args(["--", "ps", "-eo", "args"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // (Our own `sesame --api-key` shows the key: that is this test's choice.)
    let proxies: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" proxy gw-01 "))
        .collect();
    assert!(!proxies.is_empty(), "{stdout}");
    for p in proxies {
        assert!(!p.contains(&env.api_key), "the API key is in argv: {p}");
    }
}
