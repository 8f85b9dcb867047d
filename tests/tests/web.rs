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
}
