//! The browser console in a real browser: Debian's Chromium, headless, driven by
//! playwright-core (`tests/web/console.mjs`) against a real relay and agent. The
//! user logs in with a `sesame web` link and may use the lab (gw-01) only: the
//! prod target db-01 must not be listed. Screenshots of the targets page and a
//! shell, a watch and the player are kept in `target/web-artifacts/`.

use std::process::Command;

use tests::{admin, bin_dir, Env, TempDir};

const POLICY: &str = r#"
@id("ops-lab")
permit (principal in Group::"ops", action in [Action::"shell", Action::"list"], resource)
when { resource.hasTag("site") && resource.getTag("site") == "lab" };

// Any account on the lab but daemon.
@id("not-daemon")
forbid (principal in Group::"ops", action == Action::"shell", resource)
when { context.run_as == "daemon" };

@id("own-sessions")
permit (principal, action in [Action::"sessions_list", Action::"terminate", Action::"observe", Action::"replay"], resource)
when { resource.owner == principal };
"#;

#[test]
fn the_console_in_chromium() {
    let policies = TempDir::new("web-policies");
    std::fs::write(policies.0.join("web.cedar"), POLICY).unwrap();
    let env = Env::start_with(&["--policies", policies.0.to_str().unwrap()]);
    admin(
        &env.data(),
        &["agent", "add", "db-01", "--tag", "site=prod"],
    );
    let key = admin(&env.data(), &["user", "add", "erin", "--group", "ops"]);
    // Sessions as root and as daemon have run on gw-01 (the admin's): the console
    // offers erin root, which she may use, and not daemon, which she may not.
    for account in ["root", "daemon"] {
        let out = env.run(&["exec", &env.target, "--as", account, "--", "true"], b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env
        .sesame()
        .env("SESAME_API_KEY", &key)
        .arg("web")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(link.contains("/login#wl_"), "{link}");

    let artifacts = bin_dir().parent().unwrap().join("web-artifacts");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/console.mjs");
    let run = Command::new("node")
        .arg(&script)
        .env("SESAME_LOGIN", &link)
        .env("SESAME_TARGET", &env.target)
        .env("SESAME_HIDDEN", "db-01")
        .env("SESAME_KEY", &key)
        .env("SESAME_ARTIFACTS", &artifacts)
        .output()
        .expect("node runs (tests/run-all.sh installs it)");
    let said = String::from_utf8_lossy(&run.stdout);
    eprintln!("{said}{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        run.status.success() && said.contains("all browser checks passed"),
        "the browser checks failed (screenshots in {}); relay log:\n{}",
        artifacts.display(),
        env.relay.proc.log()
    );
    // The link, both logins (the link, then the pasted key), a refused nothing,
    // and the logout are on record, by erin.
    let out = env.run(&["audit", "tail", "--json", "-n", "400"], b"");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["event"].as_str().is_some_and(|e| e.starts_with("web.")))
        .collect();
    let seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            let how = r["detail"]["how"].as_str().unwrap_or("").to_string();
            (r["event"].as_str().unwrap().to_string(), how)
        })
        .collect();
    for (event, how) in [
        ("web.link", ""),
        ("web.login", "link"),
        ("web.logout", ""),
        ("web.login", "key"),
    ] {
        assert!(
            seen.contains(&(event.to_string(), how.to_string())),
            "{event} {how} is not on record: {seen:?}"
        );
    }
    assert!(rows.iter().all(|r| r["actor"] == "erin"), "{rows:?}");
}
