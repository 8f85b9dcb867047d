//! Who may do what, end to end: Cedar policies at the relay, run-as accounts on the
//! agent, keys, locks and revocation, through the real relay, agents and CLI.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tests::{admin, start_agent, text, Env, TempDir};

/// The tests take turns: one deletes the default account, which the others' sessions
/// run as.
static ACCOUNTS: Mutex<()> = Mutex::new(());

const POLICIES: &str = r#"
// alice's team: shells on the lab, as deploy only.
@id("ops-lab-shell")
permit (principal in Group::"ops", action == Action::"shell", resource)
when { resource.hasTag("site") && resource.getTag("site") == "lab" && context.run_as == "deploy" };

@id("ops-lab-forward")
permit (principal in Group::"ops", action == Action::"forward", resource)
when { resource.hasTag("site") && resource.getTag("site") == "lab" };

@id("bob-prod-exec")
permit (principal == User::"bob", action == Action::"exec", resource)
when {
  resource.hasTag("site") && resource.getTag("site") == "prod" &&
  (context.command == "uptime" || context.command like "systemctl status *")
};

// Everyone sees the agents of the site they work on.
@id("see-lab")
permit (principal in Group::"ops", action == Action::"list", resource)
when { resource.hasTag("site") && resource.getTag("site") == "lab" };
@id("see-prod")
permit (principal == User::"bob", action == Action::"list", resource)
when { resource.hasTag("site") && resource.getTag("site") == "prod" };

// Everyone manages their own keys.
@id("own-keys")
permit (principal, action == Action::"admin_keys", resource) when { resource == principal };

// The help desk adds users, and puts them in ops, but cannot make admins.
@id("helpdesk-users")
permit (principal in Group::"helpdesk", action == Action::"admin_users", resource)
when { resource == Relay::"relay" || resource == Group::"ops" };

// carol: commands on the lab, from this machine's first loopback address only.
@id("carol-exec")
permit (principal == User::"carol", action in [Action::"exec", Action::"list"], resource);
@id("carol-loopback-only")
forbid (principal == User::"carol", action, resource)
unless { context.source_ip == ip("127.0.0.1") };
"#;

/// The forward destination no one may reach (its port is filled in).
fn forbid_port(port: u16) -> String {
    format!(
        "@id(\"no-port-{port}\")\nforbid (principal, action == Action::\"forward\", resource)\n\
         when {{ context has dest_port && context.dest_port == {port} }};\n"
    )
}

/// A relay with `policies`, the account deploy, agent gw-01 (site=lab) and db-01 (site=prod), users
/// alice (ops), bob and carol, and their keys.
struct Fleet {
    _turn: std::sync::MutexGuard<'static, ()>,
    env: Env,
    _prod: tests::Proc,
    keys: std::collections::HashMap<&'static str, String>,
    policies_dir: TempDir,
}

impl Fleet {
    fn start(extra_policy: &str) -> Fleet {
        let turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        ensure_account("deploy");
        let policies = TempDir::new("policies");
        std::fs::write(
            policies.0.join("team.cedar"),
            format!("{POLICIES}\n{extra_policy}"),
        )
        .unwrap();
        let env = Env::start_with(&["--policies", policies.0.to_str().unwrap()]);
        let data = env.data();
        let code = admin(&data, &["agent", "add", "db-01", "--tag", "site=prod"]);
        let prod = start_agent(&env.dir.0, "prod", env.relay.port, Some(&code));
        let mut keys = std::collections::HashMap::new();
        keys.insert(
            "alice",
            admin(&data, &["user", "add", "alice", "--group", "ops"]),
        );
        keys.insert("bob", admin(&data, &["user", "add", "bob"]));
        keys.insert("carol", admin(&data, &["user", "add", "carol"]));
        keys.insert(
            "dave",
            admin(&data, &["user", "add", "dave", "--group", "helpdesk"]),
        );
        env.wait_online("db-01", true);
        Fleet {
            _turn: turn,
            env,
            _prod: prod,
            keys,
            policies_dir: policies,
        }
    }

    /// `sesame` as `user`.
    fn as_user(&self, user: &str) -> Command {
        let mut c = self.env.sesame();
        c.env("SESAME_API_KEY", &self.keys[user]);
        c
    }

    fn run(&self, user: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut sesame = self.as_user(user);
        sesame.args(args);
        tests::run_with(sesame, stdin)
    }
}

/// The one `error: ...` line of a failed command.
fn refused(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "expected a refusal, got success: {stdout}{stderr}"
    );
    stderr.trim().to_string()
}

fn succeeded(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "failed: {stdout}{stderr}");
    stdout
}

/// Make a local account if it is missing (the tests run as root).
fn ensure_account(name: &str) {
    let exists = Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        let ok = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "useradd {name}");
    }
}

#[test]
fn alice_may_shell_on_the_lab_as_deploy_only() {
    let f = Fleet::start("");
    let out = f.run(
        "alice",
        &["shell", "gw-01", "--as", "deploy"],
        b"id -un; pwd\n",
    );
    let home = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("deploy:"))
        .and_then(|l| l.split(':').nth(5))
        .unwrap()
        .to_string();
    assert_eq!(succeeded(&out), format!("deploy\n{home}\n"));
    // No silent fallback to another account, and no other target.
    assert_eq!(
        refused(&f.run("alice", &["shell", "gw-01"], b"id -un\n")),
        "error: denied: alice may not shell on gw-01 as sesame-user (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run("alice", &["shell", "gw-01", "--as", "root"], b"id\n")),
        "error: denied: alice may not shell on gw-01 as root (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run("alice", &["shell", "db-01", "--as", "deploy"], b"id\n")),
        "error: denied: alice may not shell on db-01 as deploy (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run(
            "alice",
            &["exec", "gw-01", "--as", "deploy", "--", "id"],
            b""
        )),
        "error: denied: alice may not exec 'id' on gw-01 as deploy (no policy permits it)"
    );
    // She sees the lab only.
    let ls = succeeded(&f.run("alice", &["ls", "--json"], b""));
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&ls)
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["gw-01"]);
    // The admin (built-in admins group) may still do anything, as root too.
    let out = f
        .env
        .run(&["exec", "gw-01", "--as", "root", "--", "id", "-un"], b"");
    assert_eq!(succeeded(&out), "root\n");
}

#[test]
fn bob_may_exec_only_uptime_and_systemctl_status_on_prod() {
    let f = Fleet::start("");
    let out = f.run("bob", &["exec", "db-01", "--", "uptime"], b"");
    assert!(succeeded(&out).contains("load average"), "{out:?}");
    assert_eq!(
        refused(&f.run("bob", &["exec", "db-01", "--", "uptime", "-p"], b"")),
        "error: denied: bob may not exec 'uptime -p' on db-01 as sesame-user (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run("bob", &["exec", "db-01", "--", "systemctl", "stop", "nginx"], b"")),
        "error: denied: bob may not exec 'systemctl stop nginx' on db-01 as sesame-user (no policy permits it)"
    );
    // One argument holding a space and a semicolon cannot pass for "uptime".
    assert_eq!(
        refused(&f.run("bob", &["exec", "db-01", "--", "uptime; reboot"], b"")),
        "error: denied: bob may not exec 'uptime; reboot' on db-01 as sesame-user (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run("bob", &["exec", "gw-01", "--", "uptime"], b"")),
        "error: denied: bob may not exec 'uptime' on gw-01 as sesame-user (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run("bob", &["shell", "db-01"], b"")),
        "error: denied: bob may not shell on db-01 as sesame-user (no policy permits it)"
    );
    // The policy check says the same, with the deciding policy's id.
    let check = |args: &[&str]| {
        let mut a = vec!["policy", "check"];
        a.extend_from_slice(args);
        f.env.run(&a, b"")
    };
    let out = check(&[
        "--user",
        "bob",
        "--action",
        "exec",
        "--target",
        "db-01",
        "--",
        "systemctl",
        "status",
        "nginx",
    ]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("allow (policy bob-prod-exec; policy set version 1)"),
        "{stdout}"
    );
    let out = check(&[
        "--user", "alice", "--action", "shell", "--target", "gw-01", "--run-as", "root",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out)
            .0
            .starts_with("deny: alice may not shell on gw-01 as root (no policy permits it)"),
        "{out:?}"
    );
}

/// A TCP server on loopback that answers each connection with `tag` then echoes.
fn echo_server(tag: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(tag.as_bytes());
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Connect to a forwarded local port and read what comes first (empty: closed).
fn greet(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_forbidden_forward_destination_is_refused_and_other_channels_go_on() {
    let (open, closed) = (echo_server("open\n"), echo_server("secret\n"));
    let f = Fleet::start(&forbid_port(closed));
    let log = f.env.dir.0.join("forward-alice.log");
    let mut child = f
        .as_user("alice")
        .args(["forward", "gw-01"])
        .arg(format!("0:127.0.0.1:{open}"))
        .arg(format!("0:127.0.0.1:{closed}"))
        // The same address spelled another way does not get past the forbid.
        .arg(format!("0:127.1:{closed}"))
        .arg(format!("0:[::ffff:127.0.0.1]:{closed}"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ports = Vec::new();
    for _ in 0..4 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let port: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("forward said {line:?}"));
        ports.push(port);
    }
    assert_eq!(greet(ports[0]), "open\n");
    assert_eq!(greet(ports[1]), "", "the forbidden destination answered");
    assert_eq!(greet(ports[2]), "", "127.1 passed for another address");
    assert_eq!(greet(ports[3]), "", "an IPv4-mapped address passed");
    // The session and its other channels are unharmed.
    assert_eq!(greet(ports[0]), "open\n");
    assert_eq!(greet(ports[0]), "open\n");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    let why = format!(
        "denied: alice may not forward to 127.0.0.1:{closed} through gw-01 as sesame-user \
         (forbidden by policy 'no-port-{closed}')"
    );
    assert!(log.contains(&why), "{log}");
    assert!(
        log.contains("'127.1' is not a standard IP address"),
        "{log}"
    );
    assert_eq!(log.matches(&why).count(), 2, "{log}");
    // The agent never heard of it.
    let agent = f.env.agent.log();
    assert!(!agent.contains(&closed.to_string()), "{agent}");
}

#[test]
fn the_same_key_is_allowed_from_one_address_and_refused_from_another() {
    let f = Fleet::start("");
    let out = f.run(
        "carol",
        &["--bind", "127.0.0.1", "exec", "gw-01", "--", "true"],
        b"",
    );
    succeeded(&out);
    assert_eq!(
        refused(&f.run(
            "carol",
            &["--bind", "127.0.0.2", "exec", "gw-01", "--", "true"],
            b""
        )),
        "error: denied: carol may not exec 'true' on gw-01 as sesame-user \
         (forbidden by policy 'carol-loopback-only')"
    );
    // Listing is filtered by the same policies: from .2 she sees nothing.
    let ls = succeeded(&f.run("carol", &["--bind", "127.0.0.2", "ls", "--json"], b""));
    assert_eq!(ls.trim(), "[]");
}

#[test]
fn sessions_run_as_the_default_account_which_the_agent_creates() {
    let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    // Start from a machine without it.
    let _ = Command::new("userdel").args(["-r", "sesame-user"]).output();
    assert!(!Command::new("id")
        .arg("sesame-user")
        .output()
        .unwrap()
        .status
        .success());
    let env = Env::start();
    let out = env.run(
        &[
            "exec",
            "gw-01",
            "--",
            "sh",
            "-c",
            "id -un; echo $HOME; id -u",
        ],
        b"",
    );
    let stdout = succeeded(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "sesame-user");
    assert_eq!(lines[1], "/home/sesame-user");
    assert_ne!(lines[2], "0");
    // Not root, and no sudo unless the agent is told so.
    assert!(!std::path::Path::new("/etc/sudoers.d/sesame-user").exists());
    // An account that does not exist is refused, with no fallback.
    assert_eq!(
        refused(&env.run(&["exec", "gw-01", "--as", "nobody-here", "--", "id"], b"")),
        "error: gw-01: no account 'nobody-here' on this machine"
    );
}

#[test]
fn revoked_and_expired_keys_are_refused_and_a_lock_ends_a_live_session() {
    let f = Fleet::start("");
    // alice makes herself a second key, then a short-lived one.
    let laptop = succeeded(&f.run("alice", &["admin", "keys", "add", "laptop"], b""));
    let laptop = laptop.trim().to_string();
    let brief = succeeded(&f.run(
        "alice",
        &["admin", "keys", "add", "brief", "--expires", "1s"],
        b"",
    ));
    let with_key = |key: &str, args: &[&str]| {
        f.env
            .sesame()
            .env("SESAME_API_KEY", key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    succeeded(&with_key(&laptop, &["ls"]));
    // A live shell on the laptop key ends when the key is revoked.
    let mut shell = f.as_user("alice");
    shell.env("SESAME_API_KEY", &laptop);
    let ended = ends_within_a_second(shell, || {
        succeeded(&f.run("alice", &["admin", "keys", "revoke", "laptop"], b""));
    });
    assert!(
        ended.contains("API key 'laptop' of alice was revoked"),
        "{ended}"
    );
    assert_eq!(
        refused(&with_key(&laptop, &["ls"])),
        "error: API key 'laptop' of alice was revoked"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let expired = refused(&with_key(brief.trim(), &["ls"]));
    assert!(
        expired.starts_with("error: API key 'brief' of alice expired "),
        "{expired}"
    );
    // Her first key still works.
    succeeded(&f.run("alice", &["ls"], b""));

    // A lock on alice ends her live session within a second and refuses new ones.
    let ended = ends_within_a_second(f.as_user("alice"), || {
        let lock = [
            "admin",
            "locks",
            "add",
            "--user",
            "alice",
            "--reason",
            "incident 42",
        ];
        succeeded(&f.env.run(&lock, b""));
    });
    assert!(
        ended.contains("user alice is locked: incident 42"),
        "{ended}"
    );
    assert_eq!(
        refused(&f.run("alice", &["shell", "gw-01", "--as", "deploy"], b"id\n")),
        "error: user alice is locked: incident 42"
    );
    // Nor can she lift it herself, or do anything else.
    assert_eq!(
        refused(&f.run("alice", &["admin", "locks", "rm", "alice"], b"")),
        "error: user alice is locked: incident 42"
    );
    succeeded(&f.env.run(&["admin", "locks", "rm", "alice"], b""));
    succeeded(&f.run("alice", &["shell", "gw-01", "--as", "deploy"], b"true\n"));
}

/// Start `sesame shell gw-01 --as deploy` with `sesame` (a user's command), wait
/// until it runs, do `end`, and check that the shell ends within a second and
/// fails; returns what it printed on standard error.
fn ends_within_a_second(mut sesame: Command, end: impl FnOnce()) -> String {
    sesame.args(["shell", "gw-01", "--as", "deploy"]);
    let (mut shell, stdin) = tests::live_shell(sesame, "echo ready; sleep 60");
    end();
    let asked = Instant::now();
    let status = wait_exit(&mut shell, Duration::from_secs(10));
    let ended_in = asked.elapsed();
    let err = tests::stderr_of(&mut shell);
    assert!(!status.success(), "{err}");
    assert!(
        ended_in < Duration::from_secs(1),
        "ended after {ended_in:?}: {err}"
    );
    drop(stdin);
    err
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the session did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_revoked_agent_is_disconnected_and_refused() {
    let f = Fleet::start("");
    let out = f.env.run(&["admin", "agents", "revoke", "db-01"], b"");
    succeeded(&out);
    f.env.wait_online("db-01", false);
    assert_eq!(
        refused(&f.run("bob", &["exec", "db-01", "--", "uptime"], b"")),
        "error: target 'db-01' was revoked"
    );
    // It dials again and is refused: it stays offline.
    std::thread::sleep(Duration::from_secs(3));
    let targets = f.env.targets();
    let db = targets.iter().find(|t| t["name"] == "db-01").unwrap();
    assert_eq!(db["online"], false);
    let relay_log = f.env.relay.proc.log();
    assert!(
        relay_log.contains("agent refused: agent 'db-01' was revoked"),
        "{relay_log}"
    );
}

#[test]
fn a_policy_set_that_fails_validation_is_refused_and_the_old_one_stays() {
    let f = Fleet::start("");
    let bad = f.env.dir.0.join("bad.cedar");
    std::fs::write(
        &bad,
        "@id(\"typo\")\npermit (principal, action == Action::\"shell\", resource)\n  when { context.runas == \"root\" };\n",
    )
    .unwrap();
    let out = f
        .env
        .run(&["admin", "policies", "put", bad.to_str().unwrap()], b"");
    let err = refused(&out);
    assert!(
        err.starts_with("error: policy set refused: bad.cedar:3: policy 'typo': "),
        "{err}"
    );
    // Still version 1, still deciding as before.
    let out = f.env.run(
        &[
            "policy", "check", "--user", "alice", "--action", "shell", "--target", "gw-01",
            "--run-as", "deploy",
        ],
        b"",
    );
    assert!(
        text(&out)
            .0
            .starts_with("allow (policy ops-lab-shell; policy set version 1)"),
        "{out:?}"
    );
    // A bad file dropped into the directory and a SIGHUP: refused too, logged.
    std::fs::copy(&bad, f.policies_dir.0.join("bad.cedar")).unwrap();
    let pid = f.env.relay.proc.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f
        .env
        .relay
        .proc
        .log()
        .contains("the policies in force stay")
    {
        assert!(Instant::now() < deadline, "{}", f.env.relay.proc.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    succeeded(&f.run("alice", &["shell", "gw-01", "--as", "deploy"], b"true\n"));
    // A good change takes effect as version 2.
    std::fs::remove_file(f.policies_dir.0.join("bad.cedar")).unwrap();
    let good = f.env.dir.0.join("lock-down.cedar");
    std::fs::write(
        &good,
        "@id(\"no-alice\")\nforbid (principal == User::\"alice\", action, resource);\n",
    )
    .unwrap();
    succeeded(
        &f.env
            .run(&["admin", "policies", "put", good.to_str().unwrap()], b""),
    );
    assert_eq!(
        refused(&f.run("alice", &["shell", "gw-01", "--as", "deploy"], b"true\n")),
        "error: denied: alice may not shell on gw-01 as deploy (forbidden by policy 'no-alice')"
    );
}

#[test]
fn managing_users_does_not_make_admins() {
    let f = Fleet::start("");
    let out = f.run(
        "dave",
        &["admin", "users", "add", "erin", "--group", "ops"],
        b"",
    );
    assert!(succeeded(&out).starts_with("sk_"), "{out:?}");
    assert_eq!(
        refused(&f.run(
            "dave",
            &["admin", "users", "add", "mallory", "--group", "admins"],
            b""
        )),
        "error: denied: dave may not admin_users on group admins (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run(
            "dave",
            &["admin", "users", "groups", "dave", "--add", "admins"],
            b""
        )),
        "error: denied: dave may not admin_users on group admins (no policy permits it)"
    );
    assert_eq!(
        refused(&f.run("dave", &["admin", "policies", "show"], b"")),
        "error: denied: dave may not admin_policies on the relay (no policy permits it)"
    );
    // Names that look like ids are refused (lookups take either).
    let out = f.env.run(&["admin", "users", "add", "us-abcdefghij"], b"");
    assert!(refused(&out).contains("reserved for ids"), "{out:?}");
}

/// Policies are asked about the account the session really runs as: an agent whose
/// default account is root gets no default session from a user who may not be root.
#[test]
fn a_session_without_an_account_is_decided_as_the_agent_s_default() {
    let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let policies = TempDir::new("policies");
    std::fs::write(
        policies.0.join("p.cedar"),
        "@id(\"not-root\")\npermit (principal == User::\"erin\", action == Action::\"exec\", resource)\n\
         when { context.run_as != \"root\" };\n",
    )
    .unwrap();
    let agent = [
        tests::bin("sesame-agent"),
        "--default-account".into(),
        "root".into(),
    ];
    let env = Env::start_custom(&["--policies", policies.0.to_str().unwrap()], &agent);
    let key = admin(&env.data(), &["user", "add", "erin"]);
    let run = |args: &[&str]| {
        env.sesame()
            .env("SESAME_API_KEY", &key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert_eq!(
        refused(&run(&["exec", "gw-01", "--", "id", "-un"])),
        "error: denied: erin may not exec 'id -un' on gw-01 as root (no policy permits it)"
    );
    let out = run(&["exec", "gw-01", "--as", "sesame-user", "--", "id", "-un"]);
    assert_eq!(succeeded(&out), "sesame-user\n");
    // The admin, allowed anything, gets the agent's default: root.
    assert_eq!(
        succeeded(&env.run(&["exec", "gw-01", "--", "id", "-un"], b"")),
        "root\n"
    );
}
