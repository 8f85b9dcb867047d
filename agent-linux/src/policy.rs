//! Which destinations a `forward` session may reach from this agent.
//!
//! Rules are networks with optional port lists. A destination is allowed when it
//! matches an allow rule (or there are none) and no deny rule: deny wins. The cloud
//! metadata services and the link-local networks they live on are denied unless the
//! operator explicitly opts in ([`METADATA`]), because they hand out the machine's
//! credentials.
//! Host names are resolved first and every resolved address is checked, so a name
//! cannot smuggle a denied address in. Addresses are checked as what connecting to
//! them reaches ([`canonical`]): `0.0.0.0` is this host, `::ffff:10.0.0.1` is an IPv4
//! address, so neither spelling slips past a rule written for the other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

/// One network and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    addr: IpAddr,
    prefix: u8,
    ports: Vec<RangeInclusive<u16>>,
}

impl Rule {
    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        let in_net = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        };
        in_net && (self.ports.is_empty() || self.ports.iter().any(|r| r.contains(&port)))
    }
}

impl FromStr for Rule {
    type Err = String;
    /// `NET[/PREFIX][:PORTS]`, PORTS a comma list of ports and ranges (`22,8000-8999`);
    /// IPv6 with ports in brackets: `[fd00::/8]:443`.
    fn from_str(s: &str) -> Result<Rule, String> {
        let bad = |why: &str| format!("invalid destination rule '{s}': {why}");
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            (net, after.strip_prefix(':'))
        } else if s.matches(':').count() == 1 {
            let (n, p) = s.split_once(':').unwrap_or((s, ""));
            (n, Some(p))
        } else {
            (s, None)
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (net, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("bad prefix length"))?,
            None => max,
        };
        let mut list = Vec::new();
        for part in ports.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
            let range = match part.split_once('-') {
                Some((a, b)) => a.parse().ok().zip(b.parse().ok()).map(|(a, b)| a..=b),
                None => part.parse().ok().map(|p| p..=p),
            };
            list.push(
                range
                    .filter(|r| r.start() <= r.end())
                    .ok_or_else(|| bad("bad port list"))?,
            );
        }
        // A rule written for IPv4-mapped addresses is the IPv4 rule, as destinations are.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Ok(Rule {
            addr,
            prefix,
            ports: list,
        })
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

/// The address a connection to `ip` reaches, for policy purposes: IPv4-mapped
/// (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) addresses are the IPv4
/// address, and the unspecified addresses (`0.0.0.0`, `::`) are loopback, which is
/// where Linux connects them.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        // ::1 is IPv6 loopback, not the IPv4-compatible 0.0.0.1.
        IpAddr::V6(v6) if v6.is_loopback() => ip,
        IpAddr::V6(v6) => v6.to_ipv4().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    }
}

/// The agent's forwarding policy.
#[derive(Debug, Clone)]
pub struct DestPolicy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Default for DestPolicy {
    fn default() -> Self {
        DestPolicy::new(Vec::new(), Vec::new(), false)
    }
}

impl DestPolicy {
    /// A policy from allow and deny rules; `allow_metadata` lifts the default denial
    /// of the cloud metadata addresses ([`METADATA`]).
    pub fn new(allow: Vec<Rule>, mut deny: Vec<Rule>, allow_metadata: bool) -> Self {
        if !allow_metadata {
            for m in METADATA {
                deny.push(m.parse().expect("valid built-in rule"));
            }
        }
        DestPolicy { allow, deny }
    }

    /// Whether `ip:port` may be reached.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        let allowed = self.allow.is_empty() || self.allow.iter().any(|r| r.matches(ip, port));
        allowed && !self.deny.iter().any(|r| r.matches(ip, port))
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
        assert_eq!(canonical(ip("0.0.0.0")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::")), ip("::1"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("::ffff:127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::ffff:0.0.0.0")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));

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
