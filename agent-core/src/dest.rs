//! Where `forward` sessions may connect: the destination rules of every agent.
//!
//! A rule is `NET[/PREFIX][:PORTS]` (an IPv4 network; IPv6 bare, or in brackets
//! when it has ports: `[fd00::/8]:443`) or `NAME[:PORTS]` (a host name as the
//! client asks for it, compared without regard to case), PORTS a comma list of
//! ports and ranges (`22,8000-8999`); without PORTS every port. Which of these an
//! agent takes is its [`Grammar`]: a device's provisioning image holds IPv4
//! networks and names ([`Device`]), the Linux agent's command line IPv4 and
//! IPv6 networks ([`Addresses`]), as it checks every address a name
//! resolves to.
//!
//! [`Rules`] decides on a destination: it is allowed when it matches an `allow` rule
//! and no `deny` rule (deny wins). A name rule matches the name asked for; the
//! address it resolves to meets the address rules too, so a name cannot bring a
//! denied address in. Addresses are checked as what connecting to them reaches
//! ([`canonical`]): `0.0.0.0` is this host, `::ffff:10.0.0.1` is an IPv4 address,
//! so neither spelling slips past a rule written for the other.
//!
//! Lists are rules separated by spaces, kept as the text they came in (a device's
//! image carries two strings) and read again at each decision: nothing is
//! allocated, and a decision is rare (one a connection).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which rules a list may hold. A type, so that a grammar without IPv6 leaves the
/// IPv6 parser out of a device's firmware (1.6 KiB of flash).
pub trait Grammar {
    /// Host name rules (else every rule is a network).
    const NAMES: bool;
    /// IPv6 networks (else an IPv6 rule is [`RuleError::Ipv6`]).
    const IPV6: bool;
}

/// A device's grammar: IPv4 networks and host names (a device speaks IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device;

impl Grammar for Device {
    const NAMES: bool = true;
    const IPV6: bool = false;
}

/// IPv4 and IPv6 networks, no names: the grammar of an agent that resolves every
/// name and checks each address (the Linux agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses;

impl Grammar for Addresses {
    const NAMES: bool = false;
    const IPV6: bool = true;
}

/// One destination rule (see the [module](self) for its syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule<'a> {
    target: Target<'a>,
    /// Checked by [`Rule::parse`]; empty: every port.
    ports: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target<'a> {
    Net { addr: IpAddr, prefix: u8 },
    Name(&'a str),
}

/// Why a destination rule does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleError {
    /// Looks like an address or network but is not one (`ipv4_only`: of a grammar
    /// without IPv6).
    Address {
        /// The grammar takes IPv4 only.
        ipv4_only: bool,
    },
    /// The prefix length is not 0 to 32 (IPv4) or 0 to 128 (IPv6).
    Prefix,
    /// Not a host name (letters, digits, `-` and `.`, at most 253 bytes).
    Name,
    /// The port list is not ports and ranges separated by commas.
    Ports,
    /// An IPv6 rule where IPv4 only is spoken: a device.
    Ipv6,
    /// An IPv6 network opened with `[` and not closed.
    Bracket,
}

impl core::fmt::Display for RuleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RuleError::Address { ipv4_only: true } => "not an IPv4 address or network",
            RuleError::Address { ipv4_only: false } => "not an IP address or network",
            RuleError::Prefix => "bad prefix length",
            RuleError::Name => "not a host name",
            RuleError::Ports => "bad port list",
            RuleError::Ipv6 => "devices speak IPv4 only",
            RuleError::Bracket => "missing ']'",
        })
    }
}

impl<'a> Rule<'a> {
    /// Parse one rule of grammar `G`.
    pub fn parse<G: Grammar>(s: &'a str) -> Result<Rule<'a>, RuleError> {
        let ipv6 = s.starts_with('[') || s.matches(':').count() > 1;
        if ipv6 && !G::IPV6 {
            return Err(RuleError::Ipv6);
        }
        let (target, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or(RuleError::Bracket)?;
            match after {
                "" => (net, None),
                _ => (net, Some(after.strip_prefix(':').ok_or(RuleError::Ports)?)),
            }
        } else if ipv6 {
            (s, None)
        } else {
            match s.split_once(':') {
                Some((t, p)) => (t, Some(p)),
                None => (s, None),
            }
        };
        if let Some(ports) = ports {
            if ports.is_empty() || ports.split(',').any(|p| port_range(p).is_none()) {
                return Err(RuleError::Ports);
            }
        }
        let address = ipv6
            || !G::NAMES
            || target
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/');
        let target = if address {
            net::<G>(target)?
        } else {
            let name = target.strip_suffix('.').unwrap_or(target);
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(RuleError::Name);
            }
            Target::Name(name)
        };
        Ok(Rule {
            target,
            ports: ports.unwrap_or(""),
        })
    }

    /// Whether the rule covers `port`.
    fn covers(&self, port: u16) -> bool {
        self.ports.is_empty()
            || self
                .ports
                .split(',')
                .filter_map(port_range)
                .any(|(lo, hi)| (lo..=hi).contains(&port))
    }

    /// Whether the rule matches a destination asked for as `host`, at `addr` (already
    /// [`canonical`]) if known.
    fn matches(&self, host: &str, addr: Option<IpAddr>, port: u16) -> bool {
        let target = match self.target {
            Target::Net { addr: net, prefix } => addr.is_some_and(|a| in_net(net, prefix, a)),
            Target::Name(name) => host
                .strip_suffix('.')
                .unwrap_or(host)
                .eq_ignore_ascii_case(name),
        };
        target && self.covers(port)
    }
}

/// `ADDR[/PREFIX]`; a rule written for IPv4-mapped addresses is the IPv4 rule, as
/// destinations are ([`canonical`]).
fn net<G: Grammar>(s: &str) -> Result<Target<'static>, RuleError> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr = address::<G>(addr).ok_or(RuleError::Address {
        ipv4_only: !G::IPV6,
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or(RuleError::Prefix)?,
        None => max,
    };
    let (addr, prefix) = match addr {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (addr, prefix),
        },
        _ => (addr, prefix),
    };
    Ok(Target::Net { addr, prefix })
}

/// An address literal of `grammar` (a device's firmware then carries no IPv6 parser).
fn address<G: Grammar>(s: &str) -> Option<IpAddr> {
    if G::IPV6 {
        s.parse().ok()
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

fn in_net(net: IpAddr, prefix: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            n.to_bits() & mask == a.to_bits() & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            n.to_bits() & mask == a.to_bits() & mask
        }
        _ => false,
    }
}

/// `P` or `A-B` with `A <= B`.
fn port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
    (lo <= hi).then_some((lo, hi))
}

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

/// What an agent does with a destination ([`Rules::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Connect.
    Allow,
    /// Refuse (`DENIED`).
    Deny,
    /// A host name that may be allowed: resolve it, then check again with its address.
    Resolve,
}

/// An allow list and a deny list of grammar `G`, each rules separated by spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules<'a, G> {
    allow: &'a str,
    deny: &'a str,
    grammar: core::marker::PhantomData<G>,
}

impl<'a, G: Grammar> Rules<'a, G> {
    /// The lists; nothing is allowed without an allow rule.
    pub fn new(allow: &'a str, deny: &'a str) -> Self {
        Rules {
            allow,
            deny,
            grammar: core::marker::PhantomData,
        }
    }

    /// The rules of a list, skipping any that does not parse (see [`Rules::valid`]).
    fn rules(&self, list: &'a str) -> impl Iterator<Item = Rule<'a>> {
        list.split(' ')
            .filter(|r| !r.is_empty())
            .filter_map(|r| Rule::parse::<G>(r).ok())
    }

    /// The first rule of either list that does not parse, and why.
    pub fn invalid(&self) -> Option<(&'a str, RuleError)> {
        [self.allow, self.deny]
            .into_iter()
            .flat_map(|list| list.split(' ').filter(|r| !r.is_empty()))
            .find_map(|r| Rule::parse::<G>(r).err().map(|e| (r, e)))
    }

    /// Whether both lists parse.
    pub fn valid(&self) -> bool {
        self.invalid().is_none()
    }

    /// Whether a destination asked for as `host:port` may be reached; `addr` is what
    /// `host` resolved to (`None` before resolving; an address literal is its own
    /// address). [`Verdict::Resolve`] only for a name that an address rule might allow.
    pub fn check(&self, host: &str, addr: Option<IpAddr>, port: u16) -> Verdict {
        if !G::IPV6 && addr.is_none() && host.contains(':') {
            // An IPv6 literal this grammar cannot read (`::ffff:10.0.0.1` included):
            // refused as such, never sent to a resolver as a name.
            return Verdict::Deny;
        }
        let addr = addr.or_else(|| address::<G>(host)).map(canonical);
        let hit = |list| self.rules(list).any(|r| r.matches(host, addr, port));
        if hit(self.deny) {
            return Verdict::Deny;
        }
        if addr.is_some() {
            return if hit(self.allow) {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
        }
        // A name: it may be allowed by name, or by the address it resolves to.
        let maybe = self.rules(self.allow).any(|r| match r.target {
            Target::Name(_) => r.matches(host, None, port),
            Target::Net { .. } => r.covers(port),
        });
        if maybe {
            Verdict::Resolve
        } else {
            Verdict::Deny
        }
    }

    /// Whether the address `ip:port` may be reached (name rules play no part).
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        self.check("", Some(ip), port) == Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn other_spellings_of_an_address_are_the_address_they_reach() {
        assert_eq!(canonical(ip("0.0.0.0")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::")), ip("::1"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("::ffff:127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::ffff:0.0.0.0")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn each_grammar_takes_its_rules() {
        for good in [
            "10.0.0.0/8",
            "127.0.0.1:22,8000-8999",
            "0.0.0.0/0",
            "[fd00::/8]:443",
            "::1",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(Rule::parse::<Addresses>(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("10.0.0.0/33", "bad prefix length"),
            ("fd00::/129", "bad prefix length"),
            ("host.example:22", "not an IP address or network"),
            ("1.2.3.4:9-1", "bad port list"),
            ("10.0.0.1:", "bad port list"),
            ("[::1]x", "bad port list"),
            ("[::1:22", "missing ']'"),
        ] {
            let e = Rule::parse::<Addresses>(bad).unwrap_err();
            assert_eq!(e.to_string(), why, "{bad}");
        }
        assert_eq!(
            Rule::parse::<Device>("plc.local:502").map(|r| r.target),
            Ok(Target::Name("plc.local"))
        );
        assert_eq!(Rule::parse::<Device>("[fd00::1]:22"), Err(RuleError::Ipv6));
    }

    #[test]
    fn a_mapped_rule_is_the_ipv4_rule() {
        let r = Rules::<Addresses>::new("", "::ffff:10.0.0.0/104");
        assert!(r.invalid().is_none());
        let all = Rules::<Addresses>::new("0.0.0.0/0 ::/0", "::ffff:10.0.0.0/104");
        assert!(!all.allows(ip("10.9.9.9"), 22));
        assert!(!all.allows(ip("::ffff:10.9.9.9"), 22));
        assert!(all.allows(ip("11.0.0.1"), 22));
        assert!(all.allows(ip("2001:db8::1"), 22));
    }

    #[test]
    fn a_device_checks_this_host_as_loopback_and_refuses_ipv6_literals() {
        let r = Rules::<Device>::new("0.0.0.0/0", "127.0.0.0/8 10.0.2.100");
        assert_eq!(r.check("0.0.0.0", None, 80), Verdict::Deny);
        assert_eq!(r.check("10.0.2.15", None, 80), Verdict::Allow);
        for literal in [
            "::ffff:10.0.2.100",
            "::ffff:169.254.169.254",
            "::1",
            "[::1]",
        ] {
            assert_eq!(r.check(literal, None, 80), Verdict::Deny, "{literal}");
        }
        assert_eq!(r.check("example.com", None, 80), Verdict::Resolve);
    }

    #[test]
    fn an_invalid_rule_is_named() {
        let r = Rules::<Device>::new("10.0.0.0/8 10.0.0.0/33", "");
        assert_eq!(r.invalid(), Some(("10.0.0.0/33", RuleError::Prefix)));
        assert!(!r.valid());
    }
}
