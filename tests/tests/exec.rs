//! `sesame exec` end to end: output streams, exit codes, signals, stdin, errors.

use tests::{admin, text, Env};

#[test]
fn exec_keeps_stdout_and_stderr_apart_and_returns_exit_code() {
    let env = Env::start();
    let out = env.run(
        &[
            "exec",
            "gw-01",
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 7",
        ],
        b"",
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "to-out\n");
    assert_eq!(stderr, "to-err\n");
    assert_eq!(out.status.code(), Some(7));

    let out = env.run(&["exec", "gw-01", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn exec_reports_death_by_signal_as_128_plus_n() {
    let env = Env::start();
    let out = env.run(&["exec", "gw-01", "--", "sh", "-c", "kill -TERM $$"], b"");
    assert_eq!(out.status.code(), Some(128 + 15), "{:?}", text(&out));
}

#[test]
fn exec_forwards_stdin_and_large_output_intact() {
    let env = Env::start();
    // 3 MB through stdin and back: far more than any window, so credit must flow.
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = env.run(&["exec", "gw-01", "--", "cat"], &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "bytes differ after the round trip");
}

#[test]
fn exec_arguments_reach_the_command_unchanged() {
    let env = Env::start();
    let out = env.run(
        &[
            "exec", "gw-01", "--", "printf", "[%s]", "a b", "", "ünï", "$HOME",
        ],
        b"",
    );
    assert_eq!(text(&out).0, "[a b][][ünï][$HOME]");
}

#[test]
fn missing_command_is_one_clear_error() {
    let env = Env::start();
    let out = env.run(&["exec", "gw-01", "--", "/no/such/program"], b"");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: gw-01: cannot run '/no/such/program'"),
        "{stderr}"
    );
}

#[test]
fn unknown_and_offline_targets_are_refused_clearly() {
    let env = Env::start();
    let out = env.run(&["exec", "nope", "--", "true"], b"");
    assert_eq!(text(&out).1, "error: unknown target 'nope'\n");
    assert_eq!(out.status.code(), Some(255));

    admin(&env.data(), &["agent", "add", "cold-01"]);
    let out = env.run(&["exec", "cold-01", "--", "true"], b"");
    assert_eq!(
        text(&out).1,
        "error: target 'cold-01' is offline (never connected)\n"
    );
}

#[test]
fn wrong_api_key_is_rejected() {
    let env = Env::start();
    let out = env
        .sesame()
        .env("SESAME_API_KEY", "sk_wrong")
        .args(["exec", "gw-01", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let (_, stderr) = text(&out);
    assert!(stderr.starts_with("error: invalid API key"), "{stderr}");
    // Listing is refused as well.
    let out = env
        .sesame()
        .env("SESAME_API_KEY", "")
        .args(["ls"])
        .output()
        .unwrap();
    assert!(
        text(&out).1.contains("no API key configured"),
        "{}",
        text(&out).1
    );
}

#[test]
fn ls_shows_targets_with_online_state_and_tags() {
    let env = Env::start();
    admin(&env.data(), &["agent", "add", "cold-01"]);
    let targets = env.targets();
    let gw = targets.iter().find(|t| t["name"] == "gw-01").unwrap();
    assert_eq!(gw["online"], true);
    assert_eq!(gw["tags"]["site"], "lab");
    let cold = targets.iter().find(|t| t["name"] == "cold-01").unwrap();
    assert_eq!(cold["online"], false);
    let out = env.run(&["ls"], b"");
    let table = text(&out).0;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("gw-01") && l.contains("online")),
        "{table}"
    );
}

#[test]
fn a_reader_that_quits_early_frees_the_session() {
    // `| head` closes the CLI's stdout while the remote output is backed up waiting
    // for credit; the session must still end on the agent and free its slot.
    let env = Env::start();
    for _ in 0..3 {
        let out = env
            .command("sh")
            .arg("-c")
            .arg(format!(
                "{} exec gw-01 -- head -c 50000000 /dev/zero | head -c 10 | wc -c",
                tests::bin("sesame").display()
            ))
            .output()
            .unwrap();
        assert_eq!(text(&out).0.trim(), "10");
    }
    env.wait_sessions(0, 20);
}

#[test]
fn output_that_alternates_between_stdout_and_stderr_never_stalls_a_resumable_exec() {
    // Each switch of stream takes a run of the agent's replay buffer, which only an
    // Ack frees (sessions are resumable by default): the agent asks for one when its
    // runs are all taken, or the program would wait for ever.
    let env = Env::start();
    let script = "i=0; while [ $i -lt 300 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done";
    let mut child = env
        .sesame()
        .args(["exec", "gw-01", "--", "sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (_, out) = tests::read_counting(child.stdout.take().unwrap());
    let (_, err) = tests::read_counting(child.stderr.take().unwrap());
    let status = tests::wait_child(&mut child, std::time::Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
    }
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.is_some_and(|s| s.success()),
        "the exec stalled or failed: {status:?}, {} bytes out, {} err",
        out.len(),
        err.len()
    );
    let lines = |b: &[u8], p: &str| -> Vec<String> {
        let all = String::from_utf8_lossy(b);
        assert!(all.lines().all(|l| l.starts_with(p)), "{all}");
        all.lines().map(str::to_string).collect()
    };
    let expected = |p: &str| -> Vec<String> { (0..300).map(|i| format!("{p}{i}")).collect() };
    assert_eq!(lines(&out, "o"), expected("o"));
    assert_eq!(lines(&err, "e"), expected("e"));
}
