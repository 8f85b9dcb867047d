//! `authz`: what the Cedar policies cost (issue 11). Measures, asserts nothing.
//!
//! - Decisions of `relay::policy::Policies::authorize` with 100 policies (10 files of
//!   permits and forbids on groups, agent tags, user attributes, accounts, commands,
//!   destinations, source addresses and hours) over 1000 agents with varied tags, for a
//!   mix of requests (list, shell, exec, forward sessions and channels): p50, p99, max
//!   and decisions per second on one thread; and a whole listing (`list` for every
//!   agent, what `sesame ls` costs the relay for one user).
//! - The relay's session setup, `POST /v1/sessions` to the agent's `Accept` for an
//!   exec of `true` (a fresh client, its two TLS connections, the session on
//!   agent-core's `Client`), on a relay with only the built-in admins policy for an
//!   admin, and on one with the 100 policies for a user of the group `ops` whom one
//!   of them allows; in turns.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_core::client::{Client, ClientEvent};
use agent_core::wire::{Bytes, Kind};
use futures_util::StreamExt;
use relay::policy::{Action, Circumstances, Policies, Principal, Resource, Target};
use tests::{Env, TempDir};
use tokio_tungstenite::tungstenite::Message;

use crate::compare::pct;
use crate::Row;

const AGENTS: usize = 1000;
const DECISIONS: usize = 100_000;
const LISTINGS: usize = 200;
const SESSIONS: usize = 200;

const SITES: [&str; 4] = ["lab", "prod", "staging", "edge"];
const TEAMS: [&str; 10] = [
    "web", "db", "cache", "net", "iot", "build", "ml", "billing", "search", "auth",
];
const REGIONS: [&str; 5] = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"];
const ROLES: [&str; 5] = ["gateway", "worker", "database", "sensor", "bastion"];
const GROUPS: [&str; 10] = [
    "ops", "dev", "dba", "sre", "net", "sec", "oncall", "ml", "billing", "search",
];
/// Groups held to the office network and office hours.
const OUTSIDE: [&str; 5] = ["contractors", "support", "auditors", "vendors", "interns"];
const ACCOUNTS: [&str; 6] = [
    "deploy",
    "sesame-user",
    "root",
    "postgres",
    "app",
    "readonly",
];

/// 2026-11-30T00:00:00Z: the requests' times fall on that day.
const DAY: i64 = 1_795_996_800;

/// xorshift64: the same requests in every run, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// The 100 policies, as (file name, text): ten files of ten.
fn policy_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut file = |name: &str, policies: Vec<String>| {
        assert_eq!(policies.len(), 10, "{name}");
        files.push((format!("{name}.cedar"), policies.join("\n")));
    };
    let tag = |t: &str, v: &str| {
        format!("resource.hasTag(\"{t}\") && resource.getTag(\"{t}\") == \"{v}\"")
    };

    let mut shell = vec![format!(
        "@id(\"ops-lab-shell\")\npermit (principal in Group::\"ops\", action == Action::\"shell\", resource)\n\
         when {{ {} && context.run_as == \"deploy\" }};\n",
        tag("site", "lab")
    )];
    for i in 1..10 {
        let (g, team, site) = (GROUPS[i], TEAMS[i], SITES[i % 4]);
        shell.push(format!(
            "@id(\"shell-{g}-{team}\")\npermit (principal in Group::\"{g}\", action == Action::\"shell\", resource)\n\
             when {{ {} && {} && [\"{}\", \"sesame-user\"].contains(context.run_as) }};\n",
            tag("team", team),
            tag("site", site),
            ACCOUNTS[i % ACCOUNTS.len()]
        ));
    }
    file("shell", shell);

    let mut exec = vec![
        format!(
            "@id(\"ops-lab-exec\")\npermit (principal in Group::\"ops\", action == Action::\"exec\", resource)\n\
             when {{ {} && context.run_as == \"sesame-user\" }};\n",
            tag("site", "lab")
        ),
        format!(
            "@id(\"bob-prod-exec\")\npermit (principal == User::\"bob\", action == Action::\"exec\", resource)\n\
             when {{ {} && (context.command == \"uptime\" || context.command like \"systemctl status *\") }};\n",
            tag("site", "prod")
        ),
    ];
    for i in 2..10 {
        let (g, team) = (GROUPS[i], TEAMS[i]);
        exec.push(format!(
            "@id(\"exec-{g}-{team}\")\npermit (principal in Group::\"{g}\", action == Action::\"exec\", resource)\n\
             when {{ {} && context.run_as == \"sesame-user\" &&\n  (context.command == \"uptime\" || context.command like \"systemctl status *\" || \
             context.command like \"journalctl -u {team}*\") }};\n",
            tag("team", team)
        ));
    }
    file("exec", exec);

    // Forwarding: the session (no destination) and channels above 1023 or to 443.
    file(
        "forward",
        (0..10)
            .map(|i| {
                let (g, region) = (GROUPS[i], REGIONS[i % 5]);
                format!(
                    "@id(\"forward-{g}-{region}\")\npermit (principal in Group::\"{g}\", action == Action::\"forward\", resource)\n\
                     when {{ {} }}\nunless {{ context has dest_port && context.dest_port < 1024 && context.dest_port != 443 }};\n",
                    tag("region", region)
                )
            })
            .collect(),
    );

    let mut dest: Vec<String> = [22, 23, 25, 3389, 5900]
        .iter()
        .map(|p| {
            format!(
                "@id(\"no-port-{p}\")\nforbid (principal, action == Action::\"forward\", resource)\n\
                 when {{ context has dest_port && context.dest_port == {p} }};\n"
            )
        })
        .collect();
    for (i, host) in [
        "169.254.*",
        "metadata.*",
        "*.corp.example.com",
        "10.99.*",
        "vault.*",
    ]
    .iter()
    .enumerate()
    {
        dest.push(format!(
            "@id(\"no-host-{i}\")\nforbid (principal, action == Action::\"forward\", resource)\n\
             when {{ context has dest_host && context.dest_host like \"{host}\" }}\nunless {{ principal in Group::\"sec\" }};\n"
        ));
    }
    file("destinations", dest);

    let mut network = Vec::new();
    for (i, g) in OUTSIDE.iter().enumerate() {
        network.push(format!(
            "@id(\"office-only-{g}\")\nforbid (principal in Group::\"{g}\", action, resource)\n\
             unless {{ context.source_ip.isInRange(ip(\"10.0.0.0/8\")) }};\n"
        ));
        network.push(format!(
            "@id(\"prod-from-vpn-{g}\")\nforbid (principal in Group::\"{g}\", action in [Action::\"shell\", Action::\"exec\"], resource)\n\
             when {{ {} }}\nunless {{ context.source_ip.isInRange(ip(\"10.{}.0.0/16\")) }};\n",
            tag("site", "prod"),
            20 + i
        ));
    }
    file("network", network);

    let mut hours = Vec::new();
    for i in 0..5 {
        let (g, site, from) = (GROUPS[i + 5], SITES[i % 4], 6 + i);
        hours.push(format!(
            "@id(\"hours-exec-{g}\")\npermit (principal in Group::\"{g}\", action == Action::\"exec\", resource)\n\
             when {{ {} && context.run_as == \"{}\" &&\n  context.now.toTime() >= duration(\"{from}h\") && context.now.toTime() < duration(\"{}h\") }};\n",
            tag("site", site),
            ACCOUNTS[i],
            from + 9
        ));
    }
    for g in &OUTSIDE[..4] {
        hours.push(format!(
            "@id(\"office-hours-{g}\")\nforbid (principal in Group::\"{g}\", action == Action::\"shell\", resource)\n\
             when {{ {} }}\nunless {{ context.now.toTime() >= duration(\"7h\") && context.now.toTime() < duration(\"19h\") }};\n",
            tag("site", "prod")
        ));
    }
    hours.push(format!(
        "@id(\"erin-db-until-24th\")\npermit (principal == User::\"erin\", action == Action::\"shell\", resource)\n\
         when {{ context.now >= datetime(\"2026-11-01\") && context.now < datetime(\"2026-12-24\") && {} }};\n",
        tag("team", "db")
    ));
    file("hours", hours);

    let mut list: Vec<String> = (0..8)
        .map(|i| {
            let (g, team) = (GROUPS[i], TEAMS[i]);
            format!(
                "@id(\"list-{g}-{team}\")\npermit (principal in Group::\"{g}\", action == Action::\"list\", resource)\n\
                 when {{ {} }};\n",
                tag("team", team)
            )
        })
        .collect();
    list.push(
        "@id(\"list-own-team\")\npermit (principal, action == Action::\"list\", resource)\n\
         when { principal.hasTag(\"team\") && resource.hasTag(\"team\") && principal.getTag(\"team\") == resource.getTag(\"team\") };\n"
            .into(),
    );
    list.push(format!(
        "@id(\"hidden\")\nforbid (principal, action == Action::\"list\", resource)\nwhen {{ {} }}\nunless {{ principal in Group::\"sec\" }};\n",
        tag("hidden", "yes")
    ));
    file("list", list);

    let mut commands: Vec<String> = [
        "--force",
        "-rf",
        "--no-preserve-root",
        "--purge",
        "--delete",
    ]
    .iter()
    .enumerate()
    .map(|(i, flag)| {
        format!(
            "@id(\"no-flag-{i}\")\nforbid (principal, action == Action::\"exec\", resource)\n\
                 when {{ context.argv.contains(\"{flag}\") }};\n"
        )
    })
    .collect();
    for prog in ["rm", "dd", "mkfs", "shutdown", "reboot"] {
        commands.push(format!(
            "@id(\"no-{prog}-on-prod\")\nforbid (principal, action == Action::\"exec\", resource)\n\
             when {{ context.program == \"{prog}\" && {} }};\n",
            tag("site", "prod")
        ));
    }
    file("commands", commands);

    let mut users: Vec<String> = [
        ("bob", "gateway", "ip"),
        ("carol", "database", "psql"),
        ("dave", "worker", "docker"),
        ("erin", "bastion", "ss"),
        ("frank", "sensor", "cat"),
        ("grace", "worker", "nvidia-smi"),
        ("heidi", "gateway", "ping"),
        ("alice", "database", "pg_dump"),
    ]
    .iter()
    .map(|(u, role, cmd)| {
        format!(
            "@id(\"{u}-{role}-{cmd}\")\npermit (principal == User::\"{u}\", action == Action::\"exec\", resource)\n\
             when {{ {} && context.command like \"{cmd} *\" }};\n",
            tag("role", role)
        )
    })
    .collect();
    users.push(
        "@id(\"oncall-own-team-shell\")\npermit (principal, action == Action::\"shell\", resource)\n\
         when { principal.hasTag(\"oncall\") && principal.getTag(\"oncall\") == \"yes\" &&\n  \
         principal.hasTag(\"team\") && resource.hasTag(\"team\") && principal.getTag(\"team\") == resource.getTag(\"team\") };\n"
            .into(),
    );
    users.push(
        "@id(\"pci-needs-clearance\")\nforbid (principal, action in [Action::\"shell\", Action::\"exec\", Action::\"forward\"], resource)\n\
         when { resource.hasTag(\"pci\") && resource.getTag(\"pci\") == \"yes\" }\n\
         unless { principal.hasTag(\"clearance\") && principal.getTag(\"clearance\") == \"pci\" };\n"
            .into(),
    );
    file("users", users);

    file(
        "other",
        vec![
            "@id(\"own-sessions\")\npermit (principal, action in [Action::\"sessions_list\", Action::\"terminate\"], resource)\nwhen { resource.owner == principal };\n".into(),
            "@id(\"auditors-watch\")\npermit (principal in Group::\"auditors\", action in [Action::\"sessions_list\", Action::\"observe\", Action::\"replay\"], resource);\n".into(),
            "@id(\"sre-terminate-prod\")\npermit (principal in Group::\"sre\", action == Action::\"terminate\", resource)\nwhen { resource.agent.hasTag(\"site\") && resource.agent.getTag(\"site\") == \"prod\" };\n".into(),
            "@id(\"own-keys\")\npermit (principal, action == Action::\"admin_keys\", resource)\nwhen { resource == principal };\n".into(),
            "@id(\"sec-locks\")\npermit (principal in Group::\"sec\", action == Action::\"admin_locks\", resource);\n".into(),
            "@id(\"sre-revoke-agents\")\npermit (principal in Group::\"sre\", action == Action::\"admin_agents\", resource is Agent);\n".into(),
            format!("@id(\"ops-ssh-lab\")\npermit (principal in Group::\"ops\", action == Action::\"ssh_key_push\", resource)\nwhen {{ {} && context.ssh_user == \"deploy\" && context.ttl <= 300 }};\n", tag("site", "lab")),
            format!("@id(\"dba-ssh-db\")\npermit (principal in Group::\"dba\", action == Action::\"ssh_key_push\", resource)\nwhen {{ {} && context.ssh_user == \"postgres\" && context.ttl <= 60 }};\n", tag("role", "database")),
            "@id(\"no-root-keys\")\nforbid (principal, action == Action::\"ssh_key_push\", resource)\nwhen { context.ssh_user == \"root\" };\n".into(),
            "@id(\"no-admin-from-outside\")\nforbid (principal, action in [Action::\"admin_users\", Action::\"admin_policies\", Action::\"admin_agents\", Action::\"admin_locks\"], resource)\nunless { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) || context.source_ip.isLoopback() };\n".into(),
        ],
    );
    files
}

/// 1000 agents: site, team, region and role on each, `pci` on some, `hidden` on few.
fn agents(rng: &mut Rng) -> Vec<Target> {
    (0..AGENTS)
        .map(|i| {
            let role = rng.pick(&ROLES);
            let mut tags: BTreeMap<String, String> = [
                ("site", rng.pick(&SITES)),
                ("team", rng.pick(&TEAMS)),
                ("region", rng.pick(&REGIONS)),
                ("role", role),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            if rng.below(10) == 0 {
                tags.insert("pci".into(), "yes".into());
            }
            if rng.below(50) == 0 {
                tags.insert("hidden".into(), "yes".into());
            }
            Target {
                name: format!("{role}-{i:04}"),
                id: format!("ag-{i:08x}"),
                tags,
            }
        })
        .collect()
}

fn user(name: &str, groups: &[&str], attrs: &[(&str, &str)]) -> Principal {
    Principal {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn users() -> Vec<Principal> {
    vec![
        user("alice", &["ops"], &[("team", "web")]),
        user("bob", &[], &[]),
        user("carol", &["dba"], &[("team", "db"), ("oncall", "yes")]),
        user("dave", &["contractors", "dev"], &[("team", "web")]),
        user(
            "erin",
            &["sre", "oncall"],
            &[("team", "net"), ("oncall", "yes"), ("clearance", "pci")],
        ),
        user("frank", &["auditors"], &[]),
        user("grace", &["dev", "ml"], &[("team", "ml")]),
        user("heidi", &["support"], &[]),
        user("root", &["admins"], &[]),
    ]
}

/// One request of the mix: 40% list, 25% exec, 15% shell, 5% forward sessions,
/// 15% forward channels.
fn request(rng: &mut Rng) -> (Action, Circumstances) {
    const IPS: [&str; 5] = [
        "10.1.2.3",
        "10.20.0.5",
        "192.168.1.10",
        "203.0.113.7",
        "127.0.0.1",
    ];
    const COMMANDS: [&[&str]; 8] = [
        &["uptime"],
        &["systemctl", "status", "nginx"],
        &["journalctl", "-u", "web", "-n", "50"],
        &["rm", "-rf", "/tmp/cache"],
        &["df", "-h"],
        &["sh", "-c", "echo 'hi there'"],
        &["psql", "-c", "select 1"],
        &["apt-get", "install", "--force", "curl"],
    ];
    const DESTS: [(&str, u16); 8] = [
        ("127.0.0.1", 8080),
        ("db.internal", 5432),
        ("10.1.2.3", 443),
        ("localhost", 22),
        ("169.254.169.254", 80),
        ("cache", 6379),
        ("::1", 9200),
        ("vault.internal", 8200),
    ];
    let mut c = Circumstances::new(rng.pick(&IPS).parse().unwrap());
    c.now = DAY + rng.below(86_400) as i64;
    c.run_as = rng.pick(&ACCOUNTS).to_string();
    let action = match rng.below(100) {
        0..40 => Action::List,
        40..65 => {
            let argv = COMMANDS[rng.below(COMMANDS.len())];
            c.command = argv.iter().map(|a| a.to_string()).collect();
            Action::Exec
        }
        65..80 => Action::Shell,
        80..85 => Action::Forward,
        _ => {
            let (host, port) = DESTS[rng.below(DESTS.len())];
            c.dest = Some((host.to_string(), port));
            Action::Forward
        }
    };
    (action, c)
}

fn write_policies(dir: &Path) {
    for (name, text) in policy_files() {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Each request decided once, timed: the sorted times, the whole loop's time and
/// how many were allowed.
fn time_decisions(
    policies: &Policies,
    users: &[Principal],
    agents: &[Target],
    requests: &[(usize, usize, Action, Circumstances)],
) -> (Vec<Duration>, Duration, usize) {
    // Warm up: caches, the allocator, the CPU's clock.
    for (u, a, action, c) in requests.iter().take(5_000) {
        black_box(policies.authorize(&users[*u], *action, &Resource::Agent(&agents[*a]), c));
    }
    let mut times = Vec::with_capacity(requests.len());
    let (mut allowed, mut errors) = (0, 0);
    let all = Instant::now();
    for (u, a, action, c) in requests {
        let t = Instant::now();
        let d = policies.authorize(&users[*u], *action, &Resource::Agent(&agents[*a]), c);
        times.push(t.elapsed());
        allowed += usize::from(d.allow);
        errors += d.errors.len();
        black_box(d);
    }
    let total = all.elapsed();
    times.sort();
    if errors > 0 {
        eprintln!("  warning: {errors} policy evaluation errors in the mix");
    }
    (times, total, allowed)
}

fn decisions(rows: &mut Vec<Row>) {
    let dir = TempDir::new("bench-authz");
    write_policies(&dir.0);
    let t = Instant::now();
    let policies = Policies::load(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    let load = t.elapsed();
    let loaded = policies.current();
    eprintln!(
        "  {} policies (and the built-in one) in {} files, version {}",
        loaded.ids.len() - 1,
        loaded.files.len(),
        loaded.version
    );

    let mut rng = Rng(0x5e5a_3e11);
    let agents = agents(&mut rng);
    let users = users();
    let requests: Vec<(usize, usize, Action, Circumstances)> = (0..DECISIONS)
        .map(|_| {
            let (a, c) = request(&mut rng);
            (rng.below(users.len()), rng.below(agents.len()), a, c)
        })
        .collect();
    let (times, total, allowed) = time_decisions(&policies, &users, &agents, &requests);
    // The same requests with only the built-in policy: what building the request and
    // its entities costs, whatever the policies.
    let empty = TempDir::new("bench-authz-empty");
    let builtin = Policies::load(&empty.0).unwrap_or_else(|e| panic!("{e}"));
    let (base, _, _) = time_decisions(&builtin, &users, &agents, &requests);

    // `sesame ls` for alice: `list` decided for every agent, as the relay's listing does.
    let alice = &users[0];
    let mut seen = 0;
    let mut listings: Vec<Duration> = (0..LISTINGS)
        .map(|_| {
            let t = Instant::now();
            let c = Circumstances::new("10.1.2.3".parse().unwrap());
            seen = agents
                .iter()
                .filter(|a| {
                    policies
                        .authorize(alice, Action::List, &Resource::Agent(a), &c)
                        .allow
                })
                .count();
            t.elapsed()
        })
        .collect();
    listings.sort();

    let us = |p: f64| pct(&times, p) * 1e3;
    rows.extend([
        Row::new(
            "authz",
            "load and validate 100 policies, 10 files (ms)",
            load.as_secs_f64() * 1e3,
        ),
        Row::new("authz", "decision p50, 100 policies (µs)", us(0.5)),
        Row::new("authz", "decision p99 (µs)", us(0.99)),
        Row::new(
            "authz",
            "decision max (µs)",
            times[times.len() - 1].as_secs_f64() * 1e6,
        ),
        Row::new(
            "authz",
            "decision p50, built-in policy only (µs)",
            pct(&base, 0.5) * 1e3,
        ),
        Row::new(
            "authz",
            "decision p99, built-in policy only (µs)",
            pct(&base, 0.99) * 1e3,
        ),
        Row::new(
            "authz",
            "decisions per second, one thread",
            DECISIONS as f64 / total.as_secs_f64(),
        ),
        Row::new(
            "authz",
            "decisions allowed in the mix (%)",
            allowed as f64 * 100.0 / DECISIONS as f64,
        ),
        Row::new(
            "authz",
            "`list` of 1000 agents for alice, p50 (ms)",
            pct(&listings, 0.5),
        ),
        Row::new(
            "authz",
            "`list` of 1000 agents for alice, p99 (ms)",
            pct(&listings, 0.99),
        ),
        Row::new("authz", "agents alice sees", seen as f64),
    ]);
}

/// `POST /v1/sessions` to the agent's `Accept`, for an exec of `true`; the session
/// is then read to its end, so that none piles up on the agent.
async fn setup_once(env: &Env) -> Duration {
    let t = Instant::now();
    let relay = env.client();
    let kind = Kind::Exec {
        argv: Bytes(b"true\0"),
    };
    let mut session: Client<1, [u8; 16]> = Client::new(cli::session::SID, 65536);
    let mut ws = cli::session::open(&relay, (&env.target, None), kind, &mut session)
        .await
        .unwrap();
    let took = t.elapsed();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Binary(b) = m {
            if let Ok(Some(ClientEvent::Closed { .. })) = session.handle_frame(&b) {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    took
}

/// Sessions on `before` and `after` in turns, so that both see the same load from
/// whatever else runs on the machine: the sorted times of each.
fn setup_times(before: &Env, after: &Env) -> (Vec<Duration>, Vec<Duration>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..5 {
            setup_once(before).await;
            setup_once(after).await;
        }
        let (mut b, mut a) = (Vec::with_capacity(SESSIONS), Vec::with_capacity(SESSIONS));
        for _ in 0..SESSIONS {
            b.push(setup_once(before).await);
            a.push(setup_once(after).await);
        }
        b.sort();
        a.sort();
        (b, a)
    })
}

fn setup(rows: &mut Vec<Row>) {
    let plain = Env::start();
    let dir = TempDir::new("bench-authz-relay");
    write_policies(&dir.0);
    let mut env = Env::start_with(&["--policies", &dir.0.display().to_string()]);
    // A user the built-in policy does not cover, allowed by `ops-lab-exec`.
    env.api_key = tests::admin(&env.data(), &["user", "add", "oscar", "--group", "ops"]);
    let (before, after) = setup_times(&plain, &env);
    rows.extend([
        Row::new(
            "authz",
            "setup, POST to Accept, built-in policy only, admin: p50 (ms)",
            pct(&before, 0.5),
        ),
        Row::new("authz", "same, p99 (ms)", pct(&before, 0.99)),
        Row::new(
            "authz",
            "setup, 100 policies, a user of ops: p50 (ms)",
            pct(&after, 0.5),
        ),
        Row::new("authz", "same, p99 (ms)", pct(&after, 0.99)),
    ]);
}

/// The `authz` scenario.
pub fn run() -> Vec<Row> {
    let mut rows = Vec::new();
    decisions(&mut rows);
    setup(&mut rows);
    rows
}
