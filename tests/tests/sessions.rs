//! Live and past sessions, end to end: `sesame sessions ls` shows what the policies
//! let each user see, with bytes each way and exits; `sesame sessions terminate`
//! ends a live shell within a second and its user reads who ended it and why, ends
//! a session whose stream never opened so that its token opens nothing, and of two
//! terminates at once the second reads that the first ended it.

use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{admin, text, Env, TempDir};

const POLICIES: &str = r#"
// Everyone runs shells and commands on the lab agent.
@id("lab")
permit (principal, action in [Action::"shell", Action::"exec"], resource);

// Everyone sees and ends their own sessions.
@id("own-sessions")
permit (principal, action in [Action::"sessions_list", Action::"terminate"], resource)
when { resource.owner == principal };

// Auditors see everyone's; whoever is on call ends anyone's.
@id("auditors")
permit (principal in Group::"auditors", action == Action::"sessions_list", resource);
@id("oncall")
permit (principal in Group::"oncall", action == Action::"terminate", resource);
"#;

/// A relay with [`POLICIES`] and agent gw-01; alice and bob, carol (auditors),
/// dave (oncall), and the built-in admin.
struct Team {
    env: Env,
    keys: HashMap<&'static str, String>,
    _policies: TempDir,
}

impl Team {
    fn start() -> Team {
        let policies = TempDir::new("session-policies");
        std::fs::write(policies.0.join("team.cedar"), POLICIES).unwrap();
        let env = Env::start_with(&["--policies", policies.0.to_str().unwrap()]);
        let data = env.data();
        let mut keys = HashMap::new();
        keys.insert("admin", env.api_key.clone());
        keys.insert("alice", admin(&data, &["user", "add", "alice"]));
        keys.insert("bob", admin(&data, &["user", "add", "bob"]));
        let carol = admin(&data, &["user", "add", "carol", "--group", "auditors"]);
        keys.insert("carol", carol);
        let dave = admin(&data, &["user", "add", "dave", "--group", "oncall"]);
        keys.insert("dave", dave);
        Team {
            env,
            keys,
            _policies: policies,
        }
    }

    /// `sesame` as `user`.
    fn sesame(&self, user: &str) -> Command {
        let mut c = self.env.sesame();
        c.env("SESAME_API_KEY", &self.keys[user]);
        c
    }

    /// The client library as `user` (raw API calls and streams).
    fn client(&self, user: &str) -> cli::client::Relay {
        let config = cli::config::Config::load(
            Some(format!("https://127.0.0.1:{}", self.env.relay.port)),
            Some(self.keys[user].clone()),
            Some(self.env.data().join("tls/ca.pem")),
        )
        .unwrap();
        cli::client::Relay::new(&config).unwrap()
    }

    fn run(&self, user: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut sesame = self.sesame(user);
        sesame.args(args);
        tests::run_with(sesame, stdin)
    }

    /// What `user` prints on stdout, having succeeded.
    fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.run(user, args, b"");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "sesame {args:?} as {user}: {stderr}");
        stdout
    }

    /// The one `error: ...` line of `user`'s failed command.
    fn refused(&self, user: &str, args: &[&str]) -> String {
        let out = self.run(user, args, b"");
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success(),
            "sesame {args:?} as {user} succeeded: {stdout}"
        );
        stderr.trim_end().to_string()
    }

    /// `sesame sessions ls --json ARGS` as `user`.
    fn sessions(&self, user: &str, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["sessions", "ls", "--json"];
        all.extend(args);
        serde_json::from_str(&self.ok(user, &all)).unwrap()
    }

    /// A shell of `user` on gw-01 that has run `sleep SECS` (SECS unique to the
    /// caller): the child, its stdin kept open, and the session's id.
    fn live_shell(&self, user: &str, secs: &str) -> (Child, std::process::ChildStdin, String) {
        let mut sesame = self.sesame(user);
        sesame.args(["shell", "gw-01"]);
        let (shell, stdin) = tests::live_shell(sesame, &format!("echo ready; sleep {secs}"));
        tests::wait_for_process(format!("sleep\0{secs}\0").as_bytes());
        let live: Vec<Value> = self
            .sessions(user, &[])
            .into_iter()
            .filter(|s| s["live"] == true)
            .collect();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0]["ended_at"], Value::Null);
        let id = live[0]["id"].as_str().unwrap().to_string();
        (shell, stdin, id)
    }
}

/// The session `id` in a listing.
fn row<'a>(sessions: &'a [Value], id: &str) -> &'a Value {
    sessions
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {sessions:?}"))
}

fn ids(sessions: &[Value]) -> Vec<&str> {
    sessions.iter().map(|s| s["id"].as_str().unwrap()).collect()
}

/// A process with exactly this command line runs on this machine.
fn running(cmdline: &[u8]) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == cmdline))
}

/// Wait until `child` exits (panics after 10 s); its status and how long it took.
fn exits(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the shell did not end within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn users_list_their_own_sessions_and_auditors_everyones_with_bytes_and_exits() {
    let t = Team::start();
    let out = t.run(
        "alice",
        &["exec", "gw-01", "--", "head", "-c", "100000", "/dev/zero"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(out.stdout.len(), 100_000);
    let out = t.run("alice", &["exec", "gw-01", "--", "wc", "-c"], &[b'x'; 5000]);
    assert_eq!(text(&out).0, "5000\n");
    let out = t.run("bob", &["exec", "gw-01", "--", "sh", "-c", "exit 3"], b"");
    assert_eq!(out.status.code(), Some(3));

    // alice sees her two, newest first, each ended, with its exit and its bytes
    // (payload only, exact) on record by the time her command returned.
    let hers = t.sessions("alice", &[]);
    assert_eq!(hers.len(), 2, "{hers:?}");
    let (wc, head) = (&hers[0], &hers[1]);
    for s in &hers {
        assert_eq!(
            (&s["user"], &s["target"], &s["kind"], &s["run_as"]),
            (
                &Value::from("alice"),
                &Value::from("gw-01"),
                &Value::from("exec"),
                &Value::from("sesame-user")
            ),
            "{s}"
        );
        // Recorded by the relay (strict by default).
        assert_eq!((&s["live"], &s["recorded"]), (&false.into(), &true.into()));
        assert_eq!(s["exit"], "exit 0");
        let (created, started, ended) = (
            s["created_at"].as_i64().unwrap(),
            s["started_at"].as_i64().unwrap(),
            s["ended_at"].as_i64().unwrap(),
        );
        assert!(created <= started && started <= ended, "{s}");
    }
    assert_eq!(
        (&wc["bytes_in"], &wc["bytes_out"]),
        (&5000.into(), &5.into())
    );
    assert_eq!(
        (&head["bytes_in"], &head["bytes_out"]),
        (&0.into(), &100_000.into())
    );
    // Asking for everyone's shows her no more: only her own are permitted.
    assert_eq!(ids(&t.sessions("alice", &["--all"])), ids(&hers));
    // bob sees his one.
    let his = t.sessions("bob", &[]);
    assert_eq!(his.len(), 1, "{his:?}");
    assert_eq!(
        (&his[0]["user"], &his[0]["exit"]),
        (&"bob".into(), &"exit 3".into())
    );
    assert_eq!(ids(&t.sessions("bob", &["--all"])), ids(&his));

    // carol, an auditor, has none of her own, and sees everyone's with --all.
    assert_eq!(t.sessions("carol", &[]), Vec::<Value>::new());
    let everyone = t.sessions("carol", &["--all"]);
    let bobs = his[0]["id"].as_str().unwrap();
    let wc_id = wc["id"].as_str().unwrap();
    let head_id = head["id"].as_str().unwrap();
    assert_eq!(ids(&everyone), [bobs, wc_id, head_id]);
    assert_eq!(
        ids(&t.sessions("carol", &["--all", "--limit", "1"])),
        [bobs]
    );
    assert_eq!(
        ids(&t.sessions("admin", &["--all"])),
        [bobs, wc_id, head_id]
    );
    // dave may end anyone's sessions but not see them.
    assert_eq!(t.sessions("dave", &["--all"]), Vec::<Value>::new());

    // The table: a header, then a row per session, bytes human-readable.
    let table = t.ok("carol", &["sessions", "ls", "--all"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["ID", "USER", "TARGET", "KIND", "ACCOUNT", "STARTED", "ENDED", "EXIT", "IN", "OUT"]
    );
    assert_eq!(lines.len(), 4, "{table}");
    let (head_row, wc_row) = (&lines[3], &lines[2]);
    assert_eq!(
        head_row[..5],
        [head_id, "alice", "gw-01", "exec", "sesame-user"],
        "{table}"
    );
    assert_eq!(
        head_row[head_row.len() - 6..],
        ["exit", "0", "0", "B", "100", "kB"]
    );
    assert_eq!(
        wc_row[wc_row.len() - 6..],
        ["exit", "0", "5.0", "kB", "5", "B"]
    );
    assert!(lines[1][0] == bobs && lines[1].ends_with(&["exit", "3", "0", "B", "0", "B"]));
}

#[test]
fn terminate_ends_a_live_shell_within_a_second_and_its_user_reads_who_and_why() {
    let t = Team::start();
    let secs = format!("61.{}", std::process::id());
    let (mut shell, stdin, id) = t.live_shell("alice", &secs);
    let table = t.ok("alice", &["sessions", "ls"]);
    let line = table.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(line.contains(" running "), "{table}");

    // bob may end only his own, and does not see hers.
    assert_eq!(
        t.refused(
            "bob",
            &["sessions", "terminate", &id, "--reason", "mine now"]
        ),
        format!("error: denied: bob may not terminate on session {id} (no policy permits it)")
    );
    assert_eq!(t.sessions("bob", &["--all"]), Vec::<Value>::new());

    // dave is on call: her shell ends within a second, and she reads who and why.
    let out = t.ok(
        "dave",
        &["sessions", "terminate", &id, "--reason", "incident 7"],
    );
    assert_eq!(
        out,
        format!("session {id} ended: terminated by dave: incident 7\n")
    );
    let (status, took) = exits(&mut shell);
    let err = tests::stderr_of(&mut shell);
    assert!(took < Duration::from_secs(1), "ended after {took:?}: {err}");
    assert_eq!(status.code(), Some(255), "{err}");
    assert_eq!(
        err,
        "error: session ended: terminated by dave: incident 7\n"
    );
    drop(stdin);
    // Its processes are gone too.
    let deadline = Instant::now() + Duration::from_secs(2);
    while running(format!("sleep\0{secs}\0").as_bytes()) {
        assert!(Instant::now() < deadline, "sleep {secs} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    // On record: who and why as its exit, and what it carried.
    let hers = t.sessions("alice", &[]);
    let s = row(&hers, &id);
    assert_eq!(s["live"], false);
    assert_eq!(s["exit"], "terminated by dave: incident 7");
    assert!(s["ended_at"].is_i64(), "{s}");
    let typed = format!("echo ready; sleep {secs}\n").len();
    assert_eq!(
        (&s["bytes_in"], &s["bytes_out"]),
        (&typed.into(), &6.into())
    );
    // Once ended, it stays as it ended; an unknown one is unknown.
    assert_eq!(
        t.refused("dave", &["sessions", "terminate", &id, "--reason", "again"]),
        format!("error: session {id} already ended (terminated by dave: incident 7)")
    );
    assert_eq!(
        t.refused("dave", &["sessions", "terminate", "s-nope"]),
        "error: unknown session 's-nope'"
    );

    // alice ends her own, giving no reason, as dave ends it too: one of them ends
    // it, the other reads who did, and so does she.
    let secs = format!("62.{}", std::process::id());
    let (mut shell, _stdin, id) = t.live_shell("alice", &secs);
    let at_once = |user: &str, args: &[&str]| {
        let mut c = t.sesame(user);
        c.args(["sessions", "terminate", &id]).args(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let hers = at_once("alice", &[]);
    let his = at_once("dave", &["--reason", "incident 9"]);
    let (hers, his) = (
        hers.wait_with_output().unwrap(),
        his.wait_with_output().unwrap(),
    );
    let (winner, loser) = match (hers.status.success(), his.status.success()) {
        (true, false) => ((hers, "terminated by alice"), his),
        (false, true) => ((his, "terminated by dave: incident 9"), hers),
        _ => panic!("not one success: {:?} {:?}", text(&hers), text(&his)),
    };
    let (won, exit) = winner;
    assert_eq!(text(&won).0, format!("session {id} ended: {exit}\n"));
    assert_eq!(
        text(&loser).1,
        format!("error: session {id} already ended ({exit})\n")
    );
    let (_, took) = exits(&mut shell);
    let err = tests::stderr_of(&mut shell);
    assert!(took < Duration::from_secs(1), "ended after {took:?}: {err}");
    assert_eq!(err, format!("error: session ended: {exit}\n"));
    assert_eq!(row(&t.sessions("alice", &[]), &id)["exit"], exit);
}

#[test]
fn terminate_ends_a_session_whose_stream_never_opened_and_its_token_opens_nothing() {
    let t = Team::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let alice = t.client("alice");
    let body = serde_json::json!({"target": "gw-01", "kind": "exec", "command": ["true"]});
    let created: Value = rt
        .block_on(alice.call("POST", "/v1/sessions", Some(body)))
        .unwrap();
    let id = created["session_id"].as_str().unwrap();
    let s = row(&t.sessions("alice", &[]), id).clone();
    assert_eq!(
        (&s["live"], &s["started_at"], &s["ended_at"]),
        (&false.into(), &Value::Null, &Value::Null)
    );

    // dave ends it: at once, with who and why as its exit, though it never ran.
    assert_eq!(
        t.ok(
            "dave",
            &["sessions", "terminate", id, "--reason", "incident 8"]
        ),
        format!("session {id} ended: terminated by dave: incident 8\n")
    );
    let s = row(&t.sessions("alice", &[]), id).clone();
    assert_eq!(s["exit"], "terminated by dave: incident 8");
    assert_eq!(
        (&s["live"], &s["started_at"]),
        (&false.into(), &Value::Null)
    );
    assert!(s["ended_at"].is_i64(), "{s}");

    // alice's token, never used, opens nothing now.
    let (url, token) = (
        created["stream_url"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let Err(refused) = rt.block_on(alice.open_stream(url, token)) else {
        panic!("the stream of an ended session opened");
    };
    assert_eq!(
        refused.to_string(),
        "the session was ended before its stream opened (terminated by dave: incident 8); create a new session"
    );
    assert_eq!(
        row(&t.sessions("alice", &[]), id)["started_at"],
        Value::Null
    );

    // A second terminate reads how it ended.
    assert_eq!(
        t.refused("alice", &["sessions", "terminate", id]),
        format!("error: session {id} already ended (terminated by dave: incident 8)")
    );
    // The terminate is on record with who asked and why.
    let log: Vec<Value> = t
        .ok("admin", &["audit", "tail", "--json", "-n", "100"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let asked: Vec<&Value> = log
        .iter()
        .filter(|r| r["event"] == "session.terminate" && r["target"] == id)
        .collect();
    assert_eq!(asked.len(), 1, "{log:#?}");
    assert_eq!(
        (&asked[0]["actor"], &asked[0]["detail"]["reason"]),
        (&"dave".into(), &"incident 8".into())
    );
}
