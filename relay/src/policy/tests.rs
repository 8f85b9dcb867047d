use super::*;

const OPS: &str = r#"
// alice's team: shells on the lab, as deploy only.
@id("ops-lab-shell")
permit (principal in Group::"ops", action == Action::"shell", resource)
when { resource.hasTag("site") && resource.getTag("site") == "lab" && context.run_as == "deploy" };

@id("bob-prod-exec")
permit (principal == User::"bob", action == Action::"exec", resource)
when {
  resource.hasTag("site") && resource.getTag("site") == "prod" &&
  (context.command == "uptime" || context.command like "systemctl status *")
};

@id("lab-forward")
permit (principal in Group::"ops", action == Action::"forward", resource)
when { resource.hasTag("site") && resource.getTag("site") == "lab" };

@id("no-ssh-forward")
forbid (principal, action == Action::"forward", resource)
when { context has dest_port && context.dest_port == 22 };

@id("loopback-only")
forbid (principal == User::"carol", action, resource)
unless { context.source_ip == ip("127.0.0.1") };

permit (principal == User::"carol", action == Action::"list", resource);
"#;

fn dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sesame-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    d
}

fn user(name: &str, groups: &[&str]) -> Principal {
    Principal {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attrs: BTreeMap::new(),
    }
}

fn agent(name: &str, site: &str) -> Target {
    Target {
        name: name.into(),
        id: format!("ag-{name}"),
        tags: [("site".to_string(), site.to_string())].into(),
    }
}

fn from(ip: &str) -> Circumstances {
    Circumstances::new(ip.parse().unwrap())
}

fn exec(argv: &[&str]) -> Circumstances {
    let mut c = from("127.0.0.1");
    c.run_as = "sesame-user".into();
    c.command = argv.iter().map(|a| a.to_string()).collect();
    c
}

#[test]
fn policies_decide_with_the_deciding_ids() {
    let d = dir("decide", &[("ops.cedar", OPS)]);
    let p = Policies::load(&d).unwrap();
    let alice = user("alice", &["ops"]);
    let (lab, prod) = (agent("gw-01", "lab"), agent("db-01", "prod"));
    let mut c = from("127.0.0.1");
    c.run_as = "deploy".into();
    let allowed = p.authorize(&alice, Action::Shell, &Resource::Agent(&lab), &c);
    assert!(allowed.allow);
    assert_eq!(allowed.policies, ["ops-lab-shell"]);
    assert_eq!(allowed.version, 1);
    c.run_as = "root".into();
    let denied = p.authorize(&alice, Action::Shell, &Resource::Agent(&lab), &c);
    assert!(!denied.allow);
    assert_eq!(
        refusal("alice", Action::Shell, &Resource::Agent(&lab), &c, &denied),
        "denied: alice may not shell on gw-01 as root (no policy permits it)"
    );
    c.run_as = "deploy".into();
    assert!(
        !p.authorize(&alice, Action::Shell, &Resource::Agent(&prod), &c)
            .allow
    );

    let bob = user("bob", &[]);
    let on = Resource::Agent(&prod);
    assert!(
        p.authorize(&bob, Action::Exec, &on, &exec(&["uptime"]))
            .allow
    );
    assert!(
        p.authorize(
            &bob,
            Action::Exec,
            &on,
            &exec(&["systemctl", "status", "nginx"])
        )
        .allow
    );
    let rm = exec(&["systemctl", "stop", "nginx"]);
    let d2 = p.authorize(&bob, Action::Exec, &on, &rm);
    assert!(!d2.allow);
    assert_eq!(
        refusal("bob", Action::Exec, &on, &rm, &d2),
        "denied: bob may not exec 'systemctl stop nginx' on db-01 as sesame-user (no policy permits it)"
    );
    // An argument with a space is quoted, so it cannot pass for two.
    assert!(
        !p.authorize(&bob, Action::Exec, &on, &exec(&["uptime; reboot"]))
            .allow
    );
    assert!(
        !p.authorize(
            &bob,
            Action::Exec,
            &Resource::Agent(&lab),
            &exec(&["uptime"])
        )
        .allow
    );
    assert!(!p.authorize(&bob, Action::Shell, &on, &c).allow);
}

#[test]
fn forward_channels_are_decided_by_destination_and_forbid_wins() {
    let d = dir("forward", &[("ops.cedar", OPS)]);
    let p = Policies::load(&d).unwrap();
    let alice = user("alice", &["ops"]);
    let lab = agent("gw-01", "lab");
    let on = Resource::Agent(&lab);
    let mut c = from("127.0.0.1");
    c.run_as = "sesame-user".into();
    // The session, before any destination.
    assert!(p.authorize(&alice, Action::Forward, &on, &c).allow);
    c.dest = Some(("127.0.0.1".into(), 8080));
    assert!(p.authorize(&alice, Action::Forward, &on, &c).allow);
    c.dest = Some(("::1".into(), 22));
    let d = p.authorize(&alice, Action::Forward, &on, &c);
    assert!(!d.allow);
    assert_eq!(d.policies, ["no-ssh-forward"]);
    assert_eq!(
        refusal("alice", Action::Forward, &on, &c, &d),
        "denied: alice may not forward to [::1]:22 through gw-01 as sesame-user \
         (forbidden by policy 'no-ssh-forward')"
    );
    // Admins are forbidden too: deny wins over the built-in permit.
    let root = user("root", &[ADMINS]);
    assert!(!p.authorize(&root, Action::Forward, &on, &c).allow);
    c.dest = None;
    assert!(p.authorize(&root, Action::Forward, &on, &c).allow);
}

#[test]
fn source_ip_and_admins() {
    let d = dir("ip", &[("ops.cedar", OPS)]);
    let p = Policies::load(&d).unwrap();
    let carol = user("carol", &[]);
    let lab = agent("gw-01", "lab");
    let on = Resource::Agent(&lab);
    assert!(
        p.authorize(&carol, Action::List, &on, &from("127.0.0.1"))
            .allow
    );
    let d = p.authorize(&carol, Action::List, &on, &from("127.0.0.2"));
    assert!(!d.allow);
    assert_eq!(d.policies, ["loopback-only"]);
    // The built-in admins policy, with no file at all.
    let empty = Policies::load(&dir("empty", &[])).unwrap();
    let admin = user("root", &[ADMINS]);
    for a in Action::ALL {
        let r = match a {
            Action::AdminUsers | Action::AdminPolicies | Action::Audit => Resource::Relay,
            _ => Resource::Agent(&lab),
        };
        if matches!(
            a,
            Action::SessionsList
                | Action::Terminate
                | Action::Observe
                | Action::Replay
                | Action::AdminKeys
                | Action::RecordInput
        ) {
            continue;
        }
        let d = empty.authorize(&admin, a, &r, &from("10.0.0.7"));
        assert!(d.allow, "{a}: {d:?}");
        assert_eq!(d.policies, ["builtin-admins"]);
        assert!(!empty.authorize(&carol, a, &r, &from("10.0.0.7")).allow);
    }
}

#[test]
fn sessions_of_others() {
    let text = r#"
@id("own-sessions")
permit (principal, action in [Action::"sessions_list", Action::"terminate"], resource)
when { resource.owner == principal };
@id("auditors")
permit (principal in Group::"auditors", action in [Action::"sessions_list", Action::"observe", Action::"replay"], resource);
"#;
    let p = Policies::load(&dir("sessions", &[("s.cedar", text)])).unwrap();
    let (alice, bob, eve) = (
        user("alice", &[]),
        user("bob", &[]),
        user("eve", &["auditors"]),
    );
    let lab = agent("gw-01", "lab");
    let s = Resource::Session {
        id: "s-1",
        owner: &alice,
        agent: &lab,
        kind: "shell",
        run_as: "deploy",
    };
    let c = from("127.0.0.1");
    assert!(p.authorize(&alice, Action::Terminate, &s, &c).allow);
    assert!(!p.authorize(&bob, Action::Terminate, &s, &c).allow);
    assert!(!p.authorize(&bob, Action::SessionsList, &s, &c).allow);
    assert!(p.authorize(&eve, Action::Observe, &s, &c).allow);
    assert!(!p.authorize(&eve, Action::Terminate, &s, &c).allow);
    assert!(!p.authorize(&alice, Action::Observe, &s, &c).allow);
    // Nobody's input is recorded unless a policy asks, admins' included.
    let root = user("root", &["admins"]);
    let of_root = Resource::Session {
        id: "s-2",
        owner: &root,
        agent: &lab,
        kind: "shell",
        run_as: "root",
    };
    assert!(!p.authorize(&root, Action::RecordInput, &of_root, &c).allow);
    let asks = "permit (principal, action == Action::\"record_input\", resource)\nwhen { resource.agent.hasTag(\"site\") };\n";
    let p = Policies::load(&dir("input", &[("keys.cedar", asks)])).unwrap();
    assert!(p.authorize(&root, Action::RecordInput, &of_root, &c).allow);
}

/// Whether `who`'s shell on gw-01 has its input recorded under `text`, and the
/// policies that decided it.
fn records_input(tag: &str, text: &str, who: &Principal) -> (bool, Vec<String>) {
    let p = Policies::load(&dir(tag, &[("p.cedar", text)])).unwrap();
    let lab = agent("gw-01", "lab");
    let s = Resource::Session {
        id: "s-1",
        owner: who,
        agent: &lab,
        kind: "shell",
        run_as: "deploy",
    };
    let d = p.authorize(who, Action::RecordInput, &s, &from("127.0.0.1"));
    (d.allow, d.policies)
}

#[test]
fn record_input_is_decided_only_by_the_policies_that_name_it() {
    let bob = user("bob", &["contractors"]);
    // A policy written for everything bob does is no wish for his keystrokes.
    let everything = "@id(\"bob-all\")\npermit (principal == User::\"bob\", action, resource);\n";
    assert_eq!(records_input("in-any", everything, &bob), (false, vec![]));
    // Still, it allows him everything else.
    let p = Policies::load(&dir("in-any-shell", &[("p.cedar", everything)])).unwrap();
    let lab = agent("gw-01", "lab");
    let mut c = from("127.0.0.1");
    c.run_as = "deploy".into();
    assert!(
        p.authorize(&bob, Action::Shell, &Resource::Agent(&lab), &c)
            .allow
    );

    // Named alone, or in a list.
    let named = "@id(\"keys\")\npermit (principal in Group::\"contractors\", action == Action::\"record_input\", resource);\n";
    assert_eq!(
        records_input("in-eq", named, &bob),
        (true, vec!["keys".to_string()])
    );
    let listed = "@id(\"keys\")\npermit (principal, action in [Action::\"observe\", Action::\"record_input\"], resource)\nwhen { resource.kind == \"shell\" };\n";
    assert_eq!(
        records_input("in-list", listed, &bob),
        (true, vec!["keys".to_string()])
    );
    // A list without it is not a wish.
    let other =
        "permit (principal, action in [Action::\"observe\", Action::\"replay\"], resource);\n";
    assert_eq!(records_input("in-other", other, &bob), (false, vec![]));

    // A forbid for everything does not turn a named permit off...
    let no_bob = "@id(\"no-bob\")\nforbid (principal == User::\"bob\", action, resource);\n";
    assert_eq!(
        records_input("in-forbid-any", &format!("{named}{no_bob}"), &bob),
        (true, vec!["keys".to_string()])
    );
    // ...a forbid that names record_input does.
    let no_keys = "@id(\"no-keys\")\nforbid (principal == User::\"bob\", action in [Action::\"record_input\"], resource);\n";
    assert_eq!(
        records_input("in-forbid-named", &format!("{named}{no_keys}"), &bob),
        (false, vec!["no-keys".to_string()])
    );

    // The built-in admins policy allows admins everything but asks for nothing.
    let root = user("root", &[ADMINS]);
    assert_eq!(records_input("in-admins", "", &root), (false, vec![]));
    let p = Policies::load(&dir("in-admins-shell", &[])).unwrap();
    let d = p.authorize(&root, Action::Shell, &Resource::Agent(&lab), &c);
    assert_eq!(
        (d.allow, d.policies),
        (true, vec!["builtin-admins".to_string()])
    );
}

#[test]
fn a_bad_set_is_refused_with_file_and_line_and_the_old_one_stays() {
    let d = dir("bad", &[("ops.cedar", OPS)]);
    let p = Policies::load(&d).unwrap();
    let v1 = p.current();
    // A typo the parser catches.
    std::fs::write(
        d.join("typo.cedar"),
        "\n\npermit (principal, action, resource) when { 1 + };\n",
    )
    .unwrap();
    let e = p.reload().unwrap_err().to_string();
    assert!(e.starts_with("policy set refused: typo.cedar:3: "), "{e}");
    // An attribute the schema does not have: the validator catches it.
    std::fs::write(
        d.join("typo.cedar"),
        "// hi\n@id(\"x\")\npermit (principal, action == Action::\"shell\", resource)\n  when { context.runas == \"x\" };\n",
    )
    .unwrap();
    let e = p.reload().unwrap_err().to_string();
    assert!(
        e.starts_with("policy set refused: typo.cedar:4: policy 'x': "),
        "{e}"
    );
    assert!(e.contains("runas"), "{e}");
    // A tag read without checking it is there.
    std::fs::write(
        d.join("typo.cedar"),
        "permit (principal, action == Action::\"shell\", resource)\n  when { resource.getTag(\"site\") == \"lab\" };\n",
    )
    .unwrap();
    assert!(p.reload().is_err());
    // The same id twice.
    std::fs::write(
        d.join("typo.cedar"),
        "@id(\"ops-lab-shell\")\nforbid (principal, action, resource);\n",
    )
    .unwrap();
    let e = p.reload().unwrap_err().to_string();
    assert!(
        e.contains("typo.cedar:1: policy id 'ops-lab-shell' is used twice"),
        "{e}"
    );
    // Still version 1, still deciding as before.
    assert_eq!(p.current().version, 1);
    assert_eq!(p.current().hash, v1.hash);
    let mut c = from("127.0.0.1");
    c.run_as = "deploy".into();
    let lab = agent("gw-01", "lab");
    assert!(
        p.authorize(
            &user("alice", &["ops"]),
            Action::Shell,
            &Resource::Agent(&lab),
            &c
        )
        .allow
    );
    // A good change takes effect as version 2; reloading it again changes nothing.
    std::fs::write(
        d.join("typo.cedar"),
        "@id(\"no-alice\")\nforbid (principal == User::\"alice\", action, resource);\n",
    )
    .unwrap();
    let v2 = p.reload().unwrap();
    assert_eq!(v2.version, 2);
    assert_ne!(v2.hash, v1.hash);
    assert_eq!(p.reload().unwrap().version, 2);
    let d2 = p.authorize(
        &user("alice", &["ops"]),
        Action::Shell,
        &Resource::Agent(&lab),
        &c,
    );
    assert!(!d2.allow);
    assert_eq!(d2.policies, ["no-alice"]);
    assert_eq!(d2.version, 2);
    // Ids without @id name the file and line.
    std::fs::write(
        d.join("typo.cedar"),
        "\n\nforbid (principal == User::\"alice\", action, resource);\n",
    )
    .unwrap();
    let v3 = p.reload().unwrap();
    assert!(v3.ids.contains(&"typo.cedar:3".to_string()), "{:?}", v3.ids);
}

#[test]
fn every_action_builds_a_request_the_schema_accepts() {
    let p = Policies::load(&dir("schema", &[])).unwrap();
    let alice = user("alice", &["ops"]);
    let lab = agent("gw-01", "lab");
    for a in Action::ALL {
        let session = Resource::Session {
            id: "s-1",
            owner: &alice,
            agent: &lab,
            kind: "shell",
            run_as: "deploy",
        };
        let resources = match a {
            Action::SessionsList
            | Action::Terminate
            | Action::Observe
            | Action::Replay
            | Action::RecordInput => vec![session],
            Action::AdminUsers => vec![Resource::Relay, Resource::Group("ops")],
            Action::AdminPolicies | Action::Audit => vec![Resource::Relay],
            Action::AdminKeys => vec![Resource::User(&alice)],
            Action::AdminAgents => vec![Resource::Relay, Resource::Agent(&lab)],
            Action::AdminLocks => vec![Resource::User(&alice), Resource::Agent(&lab)],
            _ => vec![Resource::Agent(&lab)],
        };
        for r in resources {
            let mut c = exec(&["ls", "-l"]);
            c.dest = Some(("db".into(), 5432));
            c.ttl = 60;
            let (request, entities) = build(&alice, a, &r, &c).unwrap();
            // Re-make the request with the schema: it checks the context's shape.
            Request::new(
                request.principal().unwrap().clone(),
                request.action().unwrap().clone(),
                request.resource().unwrap().clone(),
                request.context().unwrap().clone(),
                Some(p.schema()),
            )
            .unwrap_or_else(|e| panic!("{a}: {e}"));
            let _ = entities;
        }
    }
}

#[test]
fn dates_and_quoting() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_795_990_000), "2026-11-29T22:06:40Z");
    assert_eq!(
        quote_argv(&["sh".into(), "-c".into(), "echo 'hi'".into(), String::new()]),
        r#"sh -c 'echo '\''hi'\''' ''"#
    );
    assert_eq!("ssh-key".parse::<Action>(), Ok(Action::SshKeyPush));
    assert!("sudo"
        .parse::<Action>()
        .unwrap_err()
        .contains("unknown action 'sudo'"));
}

#[test]
fn destinations_are_canonical_and_addresses_are_ips() {
    for (given, canonical) in [
        ("127.0.0.1", "127.0.0.1"),
        ("DB.Internal.", "db.internal"),
        ("[::1]", "::1"),
        ("::FFFF:10.0.0.5", "10.0.0.5"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("10.0.0.5.", "10.0.0.5"),
        ("cafe.face", "cafe.face"),
        ("1e100.net", "1e100.net"),
    ] {
        assert_eq!(canonical_host(given).as_deref(), Ok(canonical), "{given}");
    }
    for numeric in [
        "10.1",
        "0x0a000005",
        "2130706433",
        "012.0.0.1",
        "10.0.0.0x5",
    ] {
        assert!(canonical_host(numeric).is_err(), "{numeric}");
    }
    // dest_ip: a range check on the address.
    let text = r#"
@id("lab")
permit (principal, action == Action::"forward", resource);
@id("no-ten")
forbid (principal, action == Action::"forward", resource)
when { context has dest_ip && context.dest_ip.isInRange(ip("10.0.0.0/8")) };
"#;
    let p = Policies::load(&dir("dest-ip", &[("d.cedar", text)])).unwrap();
    let lab = agent("gw-01", "lab");
    let mut c = from("127.0.0.1");
    c.run_as = "sesame-user".into();
    c.dest = Some((canonical_host("::ffff:10.1.2.3").unwrap(), 80));
    let d = p.authorize(
        &user("alice", &[]),
        Action::Forward,
        &Resource::Agent(&lab),
        &c,
    );
    assert_eq!((d.allow, d.policies), (false, vec!["no-ten".to_string()]));
    c.dest = Some(("db.internal".into(), 80));
    assert!(
        p.authorize(
            &user("alice", &[]),
            Action::Forward,
            &Resource::Agent(&lab),
            &c
        )
        .allow
    );
}

#[test]
fn a_forbid_that_fails_to_evaluate_denies() {
    // Overflow at run time: the validator cannot see it coming.
    let text = r#"
@id("all")
permit (principal, action == Action::"forward", resource);
@id("broken")
forbid (principal, action == Action::"forward", resource)
when { context has dest_port && context.dest_port * 9223372036854775807 > 0 };
"#;
    let p = Policies::load(&dir("broken", &[("b.cedar", text)])).unwrap();
    let lab = agent("gw-01", "lab");
    let mut c = from("127.0.0.1");
    c.dest = Some(("db".into(), 80));
    let d = p.authorize(
        &user("alice", &[]),
        Action::Forward,
        &Resource::Agent(&lab),
        &c,
    );
    assert!(!d.allow);
    assert_eq!(d.policies, ["broken"]);
    assert_eq!(d.errors.len(), 1, "{d:?}");
    c.dest = None;
    assert!(
        p.authorize(
            &user("alice", &[]),
            Action::Forward,
            &Resource::Agent(&lab),
            &c
        )
        .allow
    );
}

#[test]
fn a_permit_may_set_its_sessions_resume_window_and_the_shortest_wins() {
    let text = r#"
@id("long")
@resume_window("30m")
permit (principal in Group::"ops", action == Action::"shell", resource);

@id("never")
@resume_window("none")
permit (principal == User::"carol", action == Action::"shell", resource);

@id("plain")
permit (principal, action == Action::"exec", resource);
"#;
    let d = dir("resume-window", &[("w.cedar", text)]);
    let p = Policies::load(&d).unwrap();
    let l = p.current();
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        l.resume_window(&ids(&["long"])),
        Some(Some(Duration::from_secs(1800)))
    );
    assert_eq!(l.resume_window(&ids(&["long", "never"])), Some(None));
    assert_eq!(
        l.resume_window(&ids(&["plain"])),
        None,
        "the relay's setting"
    );
    assert_eq!(l.resume_window(&[]), None);
    // A window that does not parse refuses the set, naming the policy.
    std::fs::write(
        d.join("w.cedar"),
        "@id(\"bad\")\n@resume_window(\"soon\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    let e = p.reload().unwrap_err().to_string();
    assert!(
        e.starts_with("policy set refused: w.cedar:1: policy 'bad': @resume_window(\"soon\"): "),
        "{e}"
    );
}
