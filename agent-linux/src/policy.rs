//! Which destinations a `forward` session may reach from this agent.
//!
//! Rules are networks with optional port lists. A destination is allowed when it
//! matches an allow rule (or there are none) and no deny rule: deny wins. The cloud
//! metadata addresses (169.254.169.254, fd00:ec2::254) are denied unless the operator
//! explicitly opts in, because they hand out the machine's credentials.
//! Host names are resolved first and every resolved address is checked, so a name
//! cannot smuggle a denied address in.

use std::net::IpAddr;
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
        Ok(Rule {
            addr,
            prefix,
            ports: list,
        })
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
    /// of the cloud metadata addresses.
    pub fn new(allow: Vec<Rule>, mut deny: Vec<Rule>, allow_metadata: bool) -> Self {
        if !allow_metadata {
            for m in ["169.254.169.254", "fd00:ec2::254"] {
                deny.push(m.parse().expect("valid built-in rule"));
            }
        }
        DestPolicy { allow, deny }
    }

    /// Whether `ip:port` may be reached.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        // An IPv4-mapped IPv6 address is the IPv4 address for policy purposes.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
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
