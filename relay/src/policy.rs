//! Who may do what: Cedar policies, evaluated at the relay.
//!
//! The policy set is every `*.cedar` file in the policy directory plus one built-in
//! policy (`builtin-admins`: members of the group `admins` may do anything). Nothing
//! is allowed by default and a `forbid` wins over any `permit` (Cedar's semantics).
//! Every set is validated against the schema (`docs/sesame.cedarschema`, strict
//! mode) before it takes effect; a set that fails to parse or validate is refused
//! with file, line and Cedar's message, and the set in force stays. Each loaded set
//! has a version (counting up from 1 in this run) and the SHA-256 of its files.
//!
//! A policy's id is its `@id("...")` annotation, or `FILE:LINE` where it starts.
//!
//! `record_input` is not a permission but a wish: a policy that allows it on a
//! session asks for that session's keystrokes to be recorded. It is decided only by
//! the policies that name it in their action scope (`action == Action::"record_input"`
//! or `action in [.., Action::"record_input"]`), so that a policy written for
//! everything (`permit (principal == User::"bob", action, resource)`, the built-in
//! admins policy) neither turns recording on (passwords are typed) nor, as a
//! `forbid`, turns it off.
//!
//! Entities: `User::"name"` (in its `Group`s, tags = attributes), `Agent::"name"`
//! (tags = the agent's tags), `Session::"s-..."`, `Relay::"relay"`. Only the
//! entities a request names are built, so a decision costs the same with one agent
//! or a thousand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Context, Decision as CedarDecision, Effect,
    Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::store::unix_now;

/// The schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("../../docs/sesame.cedarschema");

/// The built-in group whose members may do anything (today's `--admin`).
pub const ADMINS: &str = "admins";

/// The built-in policy that makes [`ADMINS`] administrators. (It does not name
/// `record_input`, so admins' keystrokes are not recorded unless a policy says so.)
const BUILTIN: &str =
    "@id(\"builtin-admins\")\npermit (principal in Group::\"admins\", action, resource);\n";

/// What a user asks to do. The names are the Cedar actions (`Action::"shell"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See an agent in a listing.
    List,
    /// An interactive shell.
    Shell,
    /// A command.
    Exec,
    /// TCP forwarding (the session, and each channel).
    Forward,
    /// A temporary SSH key.
    SshKeyPush,
    /// See a session in a listing.
    SessionsList,
    /// End a session.
    Terminate,
    /// Watch a live session.
    Observe,
    /// Replay a session's recording.
    Replay,
    /// Manage users and groups.
    AdminUsers,
    /// Manage a user's API keys.
    AdminKeys,
    /// Add or revoke agents.
    AdminAgents,
    /// Change or reload policies.
    AdminPolicies,
    /// Lock or unlock users and agents.
    AdminLocks,
    /// Read the audit log, sign a checkpoint.
    Audit,
    /// Not a permission: a policy that allows it on a session asks for that
    /// session's input to be recorded (keystrokes hold passwords: off by default).
    /// Only the policies that name it in their action scope decide it.
    RecordInput,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 16] = [
        Action::List,
        Action::Shell,
        Action::Exec,
        Action::Forward,
        Action::SshKeyPush,
        Action::SessionsList,
        Action::Terminate,
        Action::Observe,
        Action::Replay,
        Action::AdminUsers,
        Action::AdminKeys,
        Action::AdminAgents,
        Action::AdminPolicies,
        Action::AdminLocks,
        Action::Audit,
        Action::RecordInput,
    ];

    /// The Cedar action's name.
    pub fn name(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::Shell => "shell",
            Action::Exec => "exec",
            Action::Forward => "forward",
            Action::SshKeyPush => "ssh_key_push",
            Action::SessionsList => "sessions_list",
            Action::Terminate => "terminate",
            Action::Observe => "observe",
            Action::Replay => "replay",
            Action::AdminUsers => "admin_users",
            Action::AdminKeys => "admin_keys",
            Action::AdminAgents => "admin_agents",
            Action::AdminPolicies => "admin_policies",
            Action::AdminLocks => "admin_locks",
            Action::Audit => "audit",
            Action::RecordInput => "record_input",
        }
    }

    /// The action of a session kind as the API names it (`ssh-key` is `ssh_key_push`).
    pub fn of_kind(kind: &str) -> Option<Action> {
        match kind {
            "shell" => Some(Action::Shell),
            "exec" => Some(Action::Exec),
            "forward" => Some(Action::Forward),
            "ssh-key" => Some(Action::SshKeyPush),
            _ => None,
        }
    }

    fn uid(self) -> EntityUid {
        uid("Action", self.name())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Action, String> {
        let s = if s == "ssh-key" { "ssh_key_push" } else { s };
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Action::ALL.iter().map(|a| a.name()).collect();
                format!("unknown action '{s}' (one of: {})", names.join(", "))
            })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The user a request is made by.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// User name.
    pub name: String,
    /// Groups the user is in.
    pub groups: Vec<String>,
    /// Attributes (Cedar tags).
    pub attrs: BTreeMap<String, String>,
}

/// An agent as policies see it.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Name.
    pub name: String,
    /// Stable id.
    pub id: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// What a request is about.
#[derive(Debug, Clone)]
pub enum Resource<'a> {
    /// An agent.
    Agent(&'a Target),
    /// A session.
    Session {
        /// Session id.
        id: &'a str,
        /// Its owner.
        owner: &'a Principal,
        /// Its agent.
        agent: &'a Target,
        /// `shell`, `exec`, `forward` or `ssh-key`.
        kind: &'a str,
        /// The account it runs as.
        run_as: &'a str,
    },
    /// A user (key and lock administration).
    User(&'a Principal),
    /// A group (adding users to it, removing them).
    Group(&'a str),
    /// The relay.
    Relay,
}

impl Resource<'_> {
    /// What the resource is, by name (an agent, a session id, a user, a group, or
    /// `relay`), as the audit log's target.
    pub fn name(&self) -> String {
        match self {
            Resource::Agent(a) => a.name.clone(),
            Resource::Session { id, .. } => id.to_string(),
            Resource::User(u) => u.name.clone(),
            Resource::Group(g) => format!("group:{g}"),
            Resource::Relay => "relay".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Resource::Agent(a) => a.name.clone(),
            Resource::Session { id, .. } => format!("session {id}"),
            Resource::User(u) => format!("user {}", u.name),
            Resource::Group(g) => format!("group {g}"),
            Resource::Relay => "the relay".into(),
        }
    }
}

/// The request's circumstances (Cedar's `context`). Fields an action does not use
/// are ignored for it.
#[derive(Debug, Clone)]
pub struct Circumstances {
    /// The client's address as the relay sees it.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
    /// The account (shell, exec, forward; the SSH user for key pushes).
    pub run_as: String,
    /// Exec: the argv.
    pub command: Vec<String>,
    /// Forward channel: destination host and port.
    pub dest: Option<(String, u16)>,
    /// SSH key push: the key's lifetime in seconds.
    pub ttl: u32,
}

impl Circumstances {
    /// Circumstances of a request from `source_ip`, now.
    pub fn new(source_ip: IpAddr) -> Circumstances {
        Circumstances {
            source_ip,
            now: unix_now(),
            run_as: String::new(),
            command: Vec::new(),
            dest: None,
            ttl: 0,
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed.
    pub allow: bool,
    /// The policies that decided it: the permits that allowed it, or the forbids
    /// that denied it (empty: nothing permits it).
    pub policies: Vec<String>,
    /// Policies skipped because they failed to evaluate, with Cedar's message.
    pub errors: Vec<String>,
    /// Version of the policy set that decided.
    pub version: u64,
}

impl Decision {
    /// Why it was denied, as the end of a refusal line.
    pub fn why(&self) -> String {
        match self.policies.as_slice() {
            [] => "no policy permits it".into(),
            [one] => format!("forbidden by policy '{one}'"),
            many => format!("forbidden by policies '{}'", many.join("', '")),
        }
    }
}

/// A user's refusal line, naming the action and the target:
/// `denied: alice may not shell on gw-01 as root (no policy permits it)`.
pub fn refusal(
    user: &str,
    action: Action,
    resource: &Resource,
    c: &Circumstances,
    d: &Decision,
) -> String {
    let what = match action {
        Action::Exec => {
            // Quoted as a whole unless the shell quoting of an argument already shows
            // where it starts and ends.
            let cmd = quote_argv(&c.command);
            if cmd.contains('\'') {
                format!("exec {cmd} on")
            } else {
                format!("exec '{cmd}' on")
            }
        }
        Action::Forward => match &c.dest {
            Some((h, p)) => format!("forward to {} through", host_port(h, *p)),
            None => "forward through".into(),
        },
        Action::SshKeyPush => "push an SSH key to".into(),
        a => format!("{a} on"),
    };
    let account = match action {
        Action::Shell | Action::Exec | Action::Forward => format!(" as {}", c.run_as),
        Action::SshKeyPush => format!(" for {}", c.run_as),
        _ => String::new(),
    };
    format!(
        "denied: {user} may not {what} {}{account} ({})",
        resource.describe(),
        d.why()
    )
}

/// A forward destination's host as policies see it and the agent gets it:
/// lowercase, without a trailing dot or IPv6 brackets, an address in its standard
/// form (an IPv4-mapped IPv6 address as IPv4). Numeric spellings a resolver would
/// also take as an IPv4 address (`10.1`, `0x0a000001`, `012.0.0.1`) are refused, so
/// that no policy on an address can be passed by writing it differently.
pub fn canonical_host(host: &str) -> Result<String, String> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => v6.to_string(),
            },
            v4 => v4.to_string(),
        });
    }
    let number = |l: &str| match l.strip_prefix("0x") {
        Some(hex) => hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()),
    };
    let labels: Vec<&str> = h.split('.').collect();
    if labels.len() <= 4 && labels.iter().all(|l| number(l)) {
        return Err(format!(
            "'{host}' is not a standard IP address (write IPv4 as four decimal numbers)"
        ));
    }
    if h.is_empty() {
        return Err("empty destination host".into());
    }
    Ok(h)
}

fn host_port(h: &str, p: u16) -> String {
    if h.contains(':') {
        format!("[{h}]:{p}")
    } else {
        format!("{h}:{p}")
    }
}

/// The argv as one string, each argument single-quoted when it holds anything but
/// letters, digits and `-_./=:,+@%`, as a POSIX shell would read it back.
pub fn quote_argv(argv: &[String]) -> String {
    let quote = |a: &String| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// A loaded, validated policy set.
#[derive(Debug)]
pub struct Loaded {
    set: PolicySet,
    /// The policies that name `record_input` in their action scope: the only ones
    /// that decide it.
    wishes: PolicySet,
    /// Counts up from 1 with each set that took effect in this run.
    pub version: u64,
    /// SHA-256 (hex) of the files, in name order, each as name, NUL, text, NUL.
    pub hash: String,
    /// Unix seconds.
    pub loaded_at: i64,
    /// The files, by name, with their text.
    pub files: BTreeMap<String, String>,
    /// Policy ids, in file order.
    pub ids: Vec<String>,
    /// The resume window a permit asks for with `@resume_window("30m")` (`"none"`:
    /// its sessions are not resumable), by policy id.
    resume_windows: HashMap<String, Option<Duration>>,
}

impl Loaded {
    /// The resume window of a session that `policies` (the permits that allowed
    /// it) decided: the shortest any of them asks for with `@resume_window`, or
    /// `None` when none says (the relay's own setting stands).
    pub fn resume_window(&self, policies: &[String]) -> Option<Option<Duration>> {
        policies
            .iter()
            .filter_map(|id| self.resume_windows.get(id))
            .copied()
            .min_by_key(|w| w.unwrap_or(Duration::ZERO))
    }
}

/// The policies in force, and how to reload them.
pub struct Policies {
    dir: PathBuf,
    schema: Schema,
    validator: Validator,
    authorizer: Authorizer,
    current: RwLock<Arc<Loaded>>,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies").field("dir", &self.dir).finish()
    }
}

/// Why a policy set was refused: `FILE:LINE: message` per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy set refused: {}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

impl Policies {
    /// Load the policies of `dir` (a missing directory is an empty set: only the
    /// built-in policy).
    pub fn load(dir: &Path) -> Result<Policies, Refused> {
        let schema = Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| Refused(vec![format!("docs/sesame.cedarschema: {e}")]))?
            .0;
        let validator = Validator::new(schema.clone());
        let files = read_dir(dir)?;
        let loaded = compile(&validator, files, 1)?;
        Ok(Policies {
            dir: dir.to_path_buf(),
            schema,
            validator,
            authorizer: Authorizer::new(),
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    /// The directory the policy files are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The set in force.
    pub fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read the directory again. On success the new set is in force (its version is
    /// the next one, unless nothing changed); on failure the old one stays.
    pub fn reload(&self) -> Result<Arc<Loaded>, Refused> {
        let files = read_dir(&self.dir)?;
        self.install(files)
    }

    /// The policy files as they are on disk now (name -> text).
    pub fn on_disk(&self) -> Result<BTreeMap<String, String>, Refused> {
        read_dir(&self.dir)
    }

    /// Check a prospective set of files (name -> text) without installing it.
    pub fn check(&self, files: BTreeMap<String, String>) -> Result<(), Refused> {
        compile(&self.validator, files, 0).map(|_| ())
    }

    fn install(&self, files: BTreeMap<String, String>) -> Result<Arc<Loaded>, Refused> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = compile(&self.validator, files, current.version + 1)?;
        if next.hash == current.hash {
            return Ok(current.clone());
        }
        *current = Arc::new(next);
        Ok(current.clone())
    }

    /// Decide one request.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        c: &Circumstances,
    ) -> Decision {
        let loaded = self.current();
        let denied = |why: String| Decision {
            allow: false,
            policies: Vec::new(),
            errors: vec![why],
            version: loaded.version,
        };
        let (request, entities) = match build(principal, action, resource, c) {
            Ok(r) => r,
            Err(e) => return denied(e),
        };
        let set = if action == Action::RecordInput {
            &loaded.wishes
        } else {
            &loaded.set
        };
        let response = self.authorizer.is_authorized(&request, set, &entities);
        let d = response.diagnostics();
        let errors: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        // A forbid that fails to evaluate is skipped by Cedar, which could let the
        // request through: deny instead (fail closed).
        let mut broken_forbids: Vec<String> = d
            .errors()
            .map(|AuthorizationError::PolicyEvaluationError(e)| e.policy_id())
            .filter(|id| set.policy(id).is_some_and(|p| p.effect() == Effect::Forbid))
            .map(|id| id.to_string())
            .collect();
        broken_forbids.sort_unstable();
        if !broken_forbids.is_empty() {
            return Decision {
                allow: false,
                policies: broken_forbids,
                errors,
                version: loaded.version,
            };
        }
        // In a stable order: Cedar's is a hash set's.
        let mut policies: Vec<String> = d.reason().map(|id| id.to_string()).collect();
        policies.sort_unstable();
        Decision {
            allow: response.decision() == CedarDecision::Allow,
            policies,
            errors,
            version: loaded.version,
        }
    }

    /// The schema (for tests and tools).
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

/// The `*.cedar` files of `dir`, by name.
fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>, Refused> {
    let mut files = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(Refused(vec![format!("{}: {e}", dir.display())])),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Refused(vec![format!("{}: {e}", dir.display())]))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".cedar") || name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Refused(vec![format!("{}: {e}", path.display())]))?;
        files.insert(name.to_string(), text);
    }
    Ok(files)
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The first line a diagnostic points at, if it has a label.
fn diagnostic_line(text: &str, d: &dyn Diagnostic) -> Option<usize> {
    d.labels()?.next().map(|l| line_of(text, l.offset()))
}

/// Parse, name and validate a set of files.
fn compile(
    validator: &Validator,
    files: BTreeMap<String, String>,
    version: u64,
) -> Result<Loaded, Refused> {
    let mut set = PolicySet::new();
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    // Which file and text each policy came from, for the validator's messages.
    let mut origin: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut resume_windows = HashMap::new();
    let builtin = Policy::parse(Some(PolicyId::new("builtin-admins")), BUILTIN)
        .expect("the built-in policy parses");
    let sources: Vec<(&str, &str)> = std::iter::once(("(built-in)", BUILTIN))
        .chain(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        .collect();
    for (file, text) in &sources {
        let parsed = if *file == "(built-in)" {
            let mut s = PolicySet::new();
            s.add(builtin.clone()).expect("one policy");
            s
        } else {
            match PolicySet::from_str(text) {
                Ok(s) => s,
                Err(errs) => {
                    for e in errs.iter() {
                        let line = diagnostic_line(text, e).unwrap_or(1);
                        problems.push(format!("{file}:{line}: {e}"));
                    }
                    continue;
                }
            }
        };
        if parsed.num_of_templates() > 0 {
            problems.push(format!(
                "{file}: templates (?principal, ?resource) are not supported; write static policies"
            ));
        }
        // Policies in the order they appear: PolicySet keeps no order, their text
        // does. Each policy's text is a verbatim slice of the file.
        let mut in_file: Vec<(usize, &Policy)> = parsed
            .policies()
            .map(|p| {
                let t = p.to_string();
                (text.find(t.as_str()).unwrap_or(usize::MAX), p)
            })
            .collect();
        in_file.sort_by_key(|(at, p)| (*at, p.id().to_string()));
        for (at, p) in in_file {
            let line = if at == usize::MAX {
                0
            } else {
                line_of(text, at)
            };
            let id = match p.annotation("id") {
                Some(id) => id.to_string(),
                None => format!("{file}:{line}"),
            };
            if !seen.insert(id.clone()) {
                problems.push(format!("{file}:{line}: policy id '{id}' is used twice"));
                continue;
            }
            if let Some(w) = p.annotation("resume_window") {
                match crate::config::parse_duration(w) {
                    Ok(window) => {
                        resume_windows.insert(id.clone(), window);
                    }
                    Err(e) => problems.push(format!(
                        "{file}:{line}: policy '{id}': @resume_window(\"{w}\"): {e}"
                    )),
                }
            }
            origin.insert(id.clone(), (file.to_string(), ids.len()));
            let _ = set.add(p.new_id(PolicyId::new(&id)));
            ids.push(id);
        }
    }
    if problems.is_empty() {
        let result = validator.validate(&set, ValidationMode::Strict);
        for e in result.validation_errors() {
            let id = e.policy_id().to_string();
            let (file, text) = origin
                .get(&id)
                .map(|(f, _)| {
                    let text = sources
                        .iter()
                        .find(|(n, _)| n == f)
                        .map(|(_, t)| *t)
                        .unwrap_or("");
                    (f.clone(), text)
                })
                .unwrap_or_default();
            let line = diagnostic_line(text, e).unwrap_or(1);
            let help = e.help().map(|h| format!(" ({h})")).unwrap_or_default();
            problems.push(format!("{file}:{line}: policy '{id}': {e}{help}"));
        }
    }
    if !problems.is_empty() {
        return Err(Refused(problems));
    }
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, text) in &files {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(text.as_bytes());
        h.update(b"\0");
    }
    let hash = h
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let wishes = names_record_input(&set);
    Ok(Loaded {
        set,
        wishes,
        version,
        hash,
        loaded_at: unix_now(),
        files,
        ids,
        resume_windows,
    })
}

/// The policies of `set` that name `record_input` in their action scope
/// (`action == Action::"record_input"`, `action in [.., Action::"record_input"]`).
/// A policy whose action is unconstrained is left out: it was not written to ask
/// for keystrokes.
fn names_record_input(set: &PolicySet) -> PolicySet {
    let wish = Action::RecordInput.uid();
    let mut wishes = PolicySet::new();
    for p in set.policies() {
        let named = match p.action_constraint() {
            ActionConstraint::Any => false,
            ActionConstraint::Eq(a) => a == wish,
            ActionConstraint::In(actions) => actions.contains(&wish),
        };
        if named {
            wishes
                .add(p.clone())
                .expect("ids are unique in the set they come from");
        }
    }
    wishes
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(ty).expect("a valid type name"),
        EntityId::new(id),
    )
}

fn tags(
    map: &BTreeMap<String, String>,
) -> impl Iterator<Item = (String, RestrictedExpression)> + '_ {
    map.iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
}

fn user_entity(p: &Principal) -> Result<Entity, String> {
    let parents: Vec<EntityUid> = p.groups.iter().map(|g| uid("Group", g)).collect();
    let attrs = [(
        "name".to_string(),
        RestrictedExpression::new_string(p.name.clone()),
    )];
    Entity::new_with_tags(uid("User", &p.name), attrs, parents, tags(&p.attrs))
        .map_err(|e| e.to_string())
}

fn agent_entity(a: &Target) -> Result<Entity, String> {
    let attrs = [
        (
            "name".to_string(),
            RestrictedExpression::new_string(a.name.clone()),
        ),
        (
            "id".to_string(),
            RestrictedExpression::new_string(a.id.clone()),
        ),
    ];
    Entity::new_with_tags(uid("Agent", &a.name), attrs, HashSet::new(), tags(&a.tags))
        .map_err(|e| e.to_string())
}

/// RFC 3339 UTC of unix seconds, as Cedar's `datetime` reads it.
pub fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    let (y, m, d) = agent_core::time::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The Cedar request and the entities it needs.
fn build(
    principal: &Principal,
    action: Action,
    resource: &Resource,
    c: &Circumstances,
) -> Result<(Request, Entities), String> {
    let mut entities = vec![user_entity(principal)?];
    let resource_uid = match resource {
        Resource::Agent(a) => {
            entities.push(agent_entity(a)?);
            uid("Agent", &a.name)
        }
        Resource::Session {
            id,
            owner,
            agent,
            kind,
            run_as,
        } => {
            if owner.name != principal.name {
                entities.push(user_entity(owner)?);
            }
            entities.push(agent_entity(agent)?);
            let attrs = [
                (
                    "owner".to_string(),
                    RestrictedExpression::new_entity_uid(uid("User", &owner.name)),
                ),
                (
                    "agent".to_string(),
                    RestrictedExpression::new_entity_uid(uid("Agent", &agent.name)),
                ),
                (
                    "kind".to_string(),
                    RestrictedExpression::new_string(kind.to_string()),
                ),
                (
                    "run_as".to_string(),
                    RestrictedExpression::new_string(run_as.to_string()),
                ),
            ];
            let s = Entity::new_with_tags(uid("Session", id), attrs, [], [])
                .map_err(|e| e.to_string())?;
            entities.push(s);
            uid("Session", id)
        }
        Resource::User(u) => {
            if u.name != principal.name {
                entities.push(user_entity(u)?);
            }
            uid("User", &u.name)
        }
        Resource::Group(g) => uid("Group", g),
        Resource::Relay => uid("Relay", "relay"),
    };
    let mut pairs = vec![
        (
            "source_ip".to_string(),
            RestrictedExpression::new_ip(c.source_ip.to_string()),
        ),
        (
            "now".to_string(),
            RestrictedExpression::new_datetime(rfc3339(c.now)),
        ),
    ];
    let run_as = || {
        (
            "run_as".to_string(),
            RestrictedExpression::new_string(c.run_as.clone()),
        )
    };
    match action {
        Action::Shell => pairs.push(run_as()),
        Action::Exec => {
            pairs.push(run_as());
            pairs.push((
                "command".into(),
                RestrictedExpression::new_string(quote_argv(&c.command)),
            ));
            pairs.push((
                "program".into(),
                RestrictedExpression::new_string(c.command.first().cloned().unwrap_or_default()),
            ));
            pairs.push((
                "argv".into(),
                RestrictedExpression::new_set(
                    c.command
                        .iter()
                        .map(|a| RestrictedExpression::new_string(a.clone())),
                ),
            ));
        }
        Action::Forward => {
            pairs.push(run_as());
            if let Some((host, port)) = &c.dest {
                pairs.push((
                    "dest_host".into(),
                    RestrictedExpression::new_string(host.clone()),
                ));
                pairs.push((
                    "dest_port".into(),
                    RestrictedExpression::new_long(i64::from(*port)),
                ));
                if let Ok(ip) = host.parse::<IpAddr>() {
                    pairs.push((
                        "dest_ip".into(),
                        RestrictedExpression::new_ip(ip.to_string()),
                    ));
                }
            }
        }
        Action::SshKeyPush => {
            pairs.push(run_as());
            pairs.push((
                "ssh_user".into(),
                RestrictedExpression::new_string(c.run_as.clone()),
            ));
            pairs.push((
                "ttl".into(),
                RestrictedExpression::new_long(i64::from(c.ttl)),
            ));
        }
        _ => {}
    }
    let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
    let request = Request::new(
        uid("User", &principal.name),
        action.uid(),
        resource_uid,
        context,
        None,
    )
    .map_err(|e| e.to_string())?;
    let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
    Ok((request, entities))
}

#[cfg(test)]
mod tests;
