//! Which destinations a `forward` session may reach from this agent.
//!
//! Rules are networks with optional port lists. A destination is allowed when it
//! matches an allow rule (or there are none) and no deny rule: deny wins. The cloud
//! metadata services and the link-local networks they live on are denied unless the
//! operator explicitly opts in ([`METADATA`]), because they hand out the machine's
//! credentials.
//! Host names are resolved first and every resolved address is checked, so a name
//! cannot smuggle a denied address in. Addresses are checked as what connecting to
//! them reaches ([`agent_core::dest::canonical`]): `0.0.0.0` is this host, `::ffff:10.0.0.1` is an IPv4
//! address, so neither spelling slips past a rule written for the other.
//! The matching is agent-core's ([`agent_core::dest`]), shared with the device; what
//! is here is the Linux agent's lists: from its command line, every address allowed
//! without an allow rule, the metadata addresses denied.

use std::net::IpAddr;
use std::str::FromStr;

use agent_core::dest::{Addresses, Rules};

/// One network and its ports (agent-core's [`agent_core::dest`] syntax, IPv4 and
/// IPv6, no host names), as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(String);

impl FromStr for Rule {
    type Err = String;
    /// `NET[/PREFIX][:PORTS]`, PORTS a comma list of ports and ranges (`22,8000-8999`);
    /// IPv6 with ports in brackets: `[fd00::/8]:443`.
    fn from_str(s: &str) -> Result<Rule, String> {
        match agent_core::dest::Rule::parse::<Addresses>(s) {
            Ok(_) => Ok(Rule(s.to_string())),
            Err(e) => Err(format!("invalid destination rule '{s}': {e}")),
        }
    }
}

/// Denied unless `--allow-metadata`: the link-local networks (AWS's instance metadata
/// at 169.254.169.254 and ECS task credentials at 169.254.170.2, GCP's and
/// OpenStack's metadata), AWS's IPv6 metadata, Alibaba Cloud's metadata and Azure's
/// WireServer.
pub const METADATA: &[&str] = &[
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254",
    "100.100.100.200",
    "168.63.129.16",
];

/// The agent's forwarding policy: its lists, as agent-core's [`Rules`] read them.
#[derive(Debug, Clone)]
pub struct DestPolicy {
    allow: String,
    deny: String,
}

impl Default for DestPolicy {
    fn default() -> Self {
        DestPolicy::new(Vec::new(), Vec::new(), false)
    }
}

impl DestPolicy {
    /// A policy from allow and deny rules (no allow rule: every address is allowed);
    /// `allow_metadata` lifts the default denial of the cloud metadata addresses
    /// ([`METADATA`]).
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>, allow_metadata: bool) -> Self {
        let join = |rules: Vec<Rule>| rules.into_iter().map(|r| r.0).collect::<Vec<_>>();
        let mut allow = join(allow);
        if allow.is_empty() {
            allow = vec!["0.0.0.0/0".into(), "::/0".into()];
        }
        let mut deny = join(deny);
        if !allow_metadata {
            deny.extend(METADATA.iter().map(|m| m.to_string()));
        }
        DestPolicy {
            allow: allow.join(" "),
            deny: deny.join(" "),
        }
    }

    /// Whether `ip:port` may be reached.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        Rules::<Addresses>::new(&self.allow, &self.deny).allows(ip, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_is_denied_by_default_and_deny_wins() {
        let p = DestPolicy::default();
        assert!(!p.allows(ip("169.254.169.254"), 80));
        assert!(!p.allows(ip("::ffff:169.254.169.254"), 80));
        assert!(!p.allows(ip("fd00:ec2::254"), 80));
        assert!(p.allows(ip("127.0.0.1"), 22));
        let p = DestPolicy::new(
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1:22,8000-8999".parse().unwrap(),
            ],
            vec!["10.1.0.0/16:5432".parse().unwrap()],
            false,
        );
        assert!(p.allows(ip("10.2.3.4"), 5432));
        assert!(!p.allows(ip("10.1.3.4"), 5432));
        assert!(p.allows(ip("10.1.3.4"), 22));
        assert!(p.allows(ip("127.0.0.1"), 8080));
        assert!(!p.allows(ip("127.0.0.1"), 80));
        assert!(!p.allows(ip("192.168.1.1"), 22));
        assert!(DestPolicy::new(vec![], vec![], true).allows(ip("169.254.169.254"), 80));
    }

    #[test]
    fn link_local_and_other_clouds_metadata_are_denied_by_default() {
        let p = DestPolicy::default();
        for denied in [
            "169.254.170.2",   // AWS ECS task credentials
            "169.254.0.1",     // the rest of IPv4 link-local
            "fe80::1",         // IPv6 link-local
            "febf::1",         // the top of fe80::/10
            "100.100.100.200", // Alibaba Cloud
            "168.63.129.16",   // Azure WireServer
            "::ffff:100.100.100.200",
            "::169.254.170.2",
        ] {
            assert!(!p.allows(ip(denied), 80), "{denied} is allowed");
        }
        for allowed in ["169.255.0.1", "fec0::1", "100.100.100.201", "10.0.0.1"] {
            assert!(p.allows(ip(allowed), 80), "{allowed} is denied");
        }
        let opted_in = DestPolicy::new(vec![], vec![], true);
        assert!(opted_in.allows(ip("169.254.170.2"), 80));
        assert!(opted_in.allows(ip("fe80::1"), 80));
        assert!(opted_in.allows(ip("168.63.129.16"), 80));
    }

    #[test]
    fn other_spellings_of_an_address_meet_its_rules() {
        // How each spelling is read is agent-core's (`dest::canonical`, tested there).
        let deny = |rules: &[&str]| {
            let rules = rules.iter().map(|r| r.parse().unwrap()).collect();
            DestPolicy::new(vec![], rules, false)
        };
        let p = deny(&["127.0.0.0/8", "::1"]);
        for spelling in [
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(!p.allows(ip(spelling), 8080), "{spelling} is allowed");
        }
        assert!(p.allows(ip("10.0.0.1"), 8080));
        // A rule written in the mapped form is the IPv4 rule.
        let p = deny(&["::ffff:10.0.0.0/104"]);
        assert!(!p.allows(ip("10.9.9.9"), 22));
        assert!(!p.allows(ip("::ffff:10.9.9.9"), 22));
        assert!(p.allows(ip("11.0.0.1"), 22));
        // An allow list is met the same way.
        let p = DestPolicy::new(vec!["127.0.0.1:22".parse().unwrap()], vec![], false);
        assert!(p.allows(ip("0.0.0.0"), 22));
        assert!(!p.allows(ip("0.0.0.0"), 23));
    }

    #[test]
    fn rules_parse_with_clear_errors() {
        assert!("[fd00::/8]:443".parse::<Rule>().is_ok());
        assert!("::1".parse::<Rule>().is_ok());
        assert_eq!(
            "10.0.0.0/33".parse::<Rule>().unwrap_err(),
            "invalid destination rule '10.0.0.0/33': bad prefix length"
        );
        assert!("host.example:22".parse::<Rule>().is_err());
        assert!("1.2.3.4:9-1".parse::<Rule>().is_err());
    }
}
