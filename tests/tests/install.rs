//! `sesame-agent install` / `uninstall` under a temporary root (no systemd needed):
//! files, modes and unit content; the installed service command line really connects;
//! the pending activation code is spent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{admin, bin, start_relay, text, Proc, TempDir};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(bin("sesame-agent"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn install_writes_binary_state_and_a_supervising_unit_then_uninstall_reverses_it() {
    let tmp = TempDir::new("install");
    let root = tmp.0.join("root");
    let data = tmp.0.join("relay");
    let relay = start_relay(&data, 0, &[]);
    let ca = data.join("tls/ca.pem");
    let code = admin(&data, &["agent", "add", "svc-01"]);
    let url = format!("wss://127.0.0.1:{}", relay.port);

    let out = agent(&[
        "install",
        "--relay",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--activate",
        &code,
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("systemd is not running here"),
        "{}",
        text(&out).0
    );

    let bin_path = root.join("usr/local/bin/sesame-agent");
    let state = root.join("var/lib/sesame-agent");
    let unit_path = root.join("etc/systemd/system/sesame-agent.service");
    assert_eq!(mode(&bin_path), 0o755);
    assert_eq!(
        std::fs::read(&bin_path).unwrap(),
        std::fs::read(bin("sesame-agent")).unwrap()
    );
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("identity.pk8")), 0o600);
    assert_eq!(mode(&state.join("activation")), 0o600);
    assert_eq!(
        std::fs::read_to_string(state.join("activation")).unwrap(),
        code
    );
    assert_eq!(
        std::fs::read(state.join("ca.pem")).unwrap(),
        std::fs::read(&ca).unwrap()
    );

    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "Restart=always",
        "StartLimitIntervalSec=0",
        "OOMScoreAdjust=-900",
        "WantedBy=multi-user.target",
        &format!(
            "ExecStart=/usr/local/bin/sesame-agent --relay {url} --ca /var/lib/sesame-agent/ca.pem --state-dir /var/lib/sesame-agent"
        ),
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks `{line}`:\n{unit}");
    }
    // Shells inherit the unit's sandbox: nothing that would take sudo or /usr away.
    for forbidden in ["NoNewPrivileges=yes", "ProtectSystem=", "PrivateTmp=yes"] {
        assert!(
            !unit.lines().any(|l| l.starts_with(forbidden)),
            "unit has {forbidden}"
        );
    }

    // Run the unit's command line, re-rooted, as systemd would.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let reroot = |w: &str| match w.strip_prefix('/') {
        Some(rel) => root.join(rel).into_os_string(),
        None => w.into(),
    };
    let words: Vec<_> = exec.split_whitespace().map(reroot).collect();
    let log = tmp.0.join("svc.log");
    let child = Command::new(&words[0])
        .args(&words[1..])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut svc = Proc { child, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.join("activation").exists() {
        assert!(
            Instant::now() < deadline,
            "activation never used: {}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        svc.log().contains("connected to the relay"),
        "{}",
        svc.log()
    );
    svc.kill();

    // Uninstall keeps the identity unless asked to purge.
    let out = agent(&["uninstall", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(!bin_path.exists() && !unit_path.exists());
    assert!(state.join("identity.pk8").exists());
    let out = agent(&["uninstall", "--purge", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(!state.exists());
}

#[test]
fn install_refuses_a_bad_ca_before_writing_anything() {
    let tmp = TempDir::new("install-bad");
    let root = tmp.0.join("root");
    let bogus: PathBuf = tmp.0.join("not-a-ca.pem");
    std::fs::write(&bogus, "hello").unwrap();
    let out = agent(&[
        "install",
        "--relay",
        "wss://127.0.0.1:9",
        "--ca",
        bogus.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out).1;
    assert!(
        err.starts_with("error: CA file") && err.contains("no certificate found"),
        "{err}"
    );
    assert!(!root.exists(), "nothing may be written");
    let out = agent(&[
        "install",
        "--relay",
        "http://x",
        "--ca",
        "/dev/null",
        "--root",
        "/tmp/x",
    ]);
    assert!(
        text(&out).1.contains("invalid relay URL"),
        "{:?}",
        text(&out)
    );
}
