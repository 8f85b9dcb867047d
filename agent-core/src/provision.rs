//! The provisioning image: what a device is given at flashing time.
//!
//! `sesame-relay device provision` writes it; firmware reads it from a reserved
//! flash region. Layout (all integers little-endian):
//!
//! ```text
//! "SESAMEPV" (8) | format version u16 | body length u32 | body | CRC-32 of body u32
//! ```
//!
//! The body is [`Provision`] in postcard. Format 2 appends the device's forwarding
//! rules ([`ForwardRules`]) to the body of format 1; an image without them is
//! written as format 1, byte for byte what earlier tools wrote, so that older
//! firmware still reads it, and older firmware given rules it cannot honour says
//! that the image is newer than it. Erased flash (all `0xFF`), a torn write and a
//! foreign image are all told apart from a good image by the magic, the length and
//! the CRC, and reported as [`ProvisionError`].

use core::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::dest::{self, Device, Rules};
use crate::wire::Bytes;

pub use crate::dest::{RuleError, Verdict};

/// First bytes of every image.
pub const MAGIC: &[u8; 8] = b"SESAMEPV";
/// The newest image format this crate reads and writes (1: no forwarding rules;
/// 2: with [`ForwardRules`]).
pub const FORMAT_VERSION: u16 = 2;
/// Bytes around the body: magic, version, length, CRC.
pub const OVERHEAD: usize = 8 + 2 + 4 + 4;

/// One device's identity and where its relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision<'a> {
    /// The agent's name in the relay's store (shown in the console and logs).
    pub agent_id: &'a str,
    /// Ed25519 private key seed (32 bytes).
    #[serde(borrow)]
    pub key_seed: Bytes<'a>,
    /// Address to dial: an IPv4 literal or a DNS name.
    pub relay_host: &'a str,
    /// TCP port of the relay.
    pub relay_port: u16,
    /// Name the relay's certificate must carry (TLS server name and HTTP `Host`).
    pub tls_name: &'a str,
    /// The pinned CA certificate, DER.
    #[serde(borrow)]
    pub ca_der: Bytes<'a>,
    /// 32 bytes from the provisioning host's RNG, mixed into the seed of boards
    /// without a hardware RNG.
    #[serde(borrow)]
    pub entropy: Bytes<'a>,
    /// Where `forward` sessions may connect; `None`: the device forwards nothing
    /// (and does not announce `forward` sessions). Format 2 only.
    #[serde(skip)]
    pub forward: Option<ForwardRules<'a>>,
}

/// Where a device's `forward` sessions may connect: a destination is allowed when
/// it matches an `allow` rule and no `deny` rule (deny wins). Each list is rules
/// ([`Rule`]) separated by spaces, as the image carries them (postcard: two strings);
/// [`Provision::decode`] refuses an image with a rule that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRules<'a> {
    /// Destinations that may be reached.
    pub allow: &'a str,
    /// Destinations that may never be reached, even when allowed.
    pub deny: &'a str,
}

/// One rule of a device's lists: an IPv4 network or a host name, with ports
/// ([`crate::dest`] has the syntax; an IPv6 rule is [`RuleError::Ipv6`]: devices
/// speak IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule<'a>(pub dest::Rule<'a>);

impl<'a> Rule<'a> {
    /// Parse one rule of a device's grammar ([`Device`]).
    pub fn parse(s: &'a str) -> Result<Rule<'a>, RuleError> {
        dest::Rule::parse::<Device>(s).map(Rule)
    }
}

impl<'a> ForwardRules<'a> {
    /// The lists as [`crate::dest::Rules`] of a device's grammar.
    pub fn rules(&self) -> Rules<'a, Device> {
        Rules::new(self.allow, self.deny)
    }

    /// Whether both lists parse.
    pub fn valid(&self) -> bool {
        self.rules().valid()
    }

    /// Whether a destination asked for as `host:port` may be reached; `addr` is what
    /// `host` resolved to (`None` before resolving; an IPv4 literal is its own
    /// address). [`Verdict::Resolve`] only for a name that an address rule might allow.
    pub fn check(&self, host: &str, addr: Option<Ipv4Addr>, port: u16) -> Verdict {
        self.rules().check(host, addr.map(IpAddr::V4), port)
    }
}

/// Why an image cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionError {
    /// No image: the region is erased or holds something else.
    Missing,
    /// The image was written by a newer tool.
    Version(u16),
    /// Length or CRC wrong: a torn or corrupted write.
    Corrupt,
    /// The body does not decode, or a field has the wrong size.
    Invalid,
    /// The output buffer is too small (encoding only).
    TooLarge,
}

impl core::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProvisionError::Missing => f.write_str("no provisioning image (flash it with the image from `sesame-relay device provision`)"),
            ProvisionError::Version(v) => write!(f, "provisioning image format {v} is newer than this firmware's {FORMAT_VERSION}"),
            ProvisionError::Corrupt => f.write_str("provisioning image is corrupt (length or CRC mismatch)"),
            ProvisionError::Invalid => f.write_str("provisioning image does not decode"),
            ProvisionError::TooLarge => f.write_str("provisioning image does not fit the buffer"),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as in zlib).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

impl<'a> Provision<'a> {
    /// Write the image into `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProvisionError> {
        if out.len() < OVERHEAD {
            return Err(ProvisionError::TooLarge);
        }
        let body_end = out.len() - 4;
        let mut body_len = postcard::to_slice(self, &mut out[14..body_end])
            .map_err(|_| ProvisionError::TooLarge)?
            .len();
        let version: u16 = match &self.forward {
            None => 1,
            Some(rules) => {
                body_len += postcard::to_slice(rules, &mut out[14 + body_len..body_end])
                    .map_err(|_| ProvisionError::TooLarge)?
                    .len();
                2
            }
        };
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&version.to_le_bytes());
        out[10..14].copy_from_slice(&(body_len as u32).to_le_bytes());
        let crc = crc32(&out[14..14 + body_len]);
        out[14 + body_len..OVERHEAD + body_len].copy_from_slice(&crc.to_le_bytes());
        Ok(OVERHEAD + body_len)
    }

    /// Read an image from the start of `region` (which may be longer than the image).
    pub fn decode(region: &'a [u8]) -> Result<Provision<'a>, ProvisionError> {
        if region.len() < OVERHEAD || &region[..8] != MAGIC {
            return Err(ProvisionError::Missing);
        }
        let version = u16::from_le_bytes([region[8], region[9]]);
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(ProvisionError::Version(version));
        }
        let len = u32::from_le_bytes([region[10], region[11], region[12], region[13]]) as usize;
        if len > region.len() - OVERHEAD {
            return Err(ProvisionError::Corrupt);
        }
        let body = &region[14..14 + len];
        let c = &region[14 + len..OVERHEAD + len];
        if crc32(body) != u32::from_le_bytes([c[0], c[1], c[2], c[3]]) {
            return Err(ProvisionError::Corrupt);
        }
        let (mut p, mut rest): (Provision, _) =
            postcard::take_from_bytes(body).map_err(|_| ProvisionError::Invalid)?;
        if version >= 2 {
            let (rules, after): (ForwardRules, _) =
                postcard::take_from_bytes(rest).map_err(|_| ProvisionError::Invalid)?;
            if !rules.valid() {
                return Err(ProvisionError::Invalid);
            }
            (p.forward, rest) = (Some(rules), after);
        }
        if !rest.is_empty()
            || p.key_seed.0.len() != 32
            || p.entropy.0.len() != 32
            || p.ca_der.0.is_empty()
            || p.relay_host.is_empty()
            || p.tls_name.is_empty()
            || p.relay_port == 0
        {
            return Err(ProvisionError::Invalid);
        }
        Ok(p)
    }

    /// The key seed as an array (its length is checked by [`Provision::decode`]).
    pub fn seed(&self) -> [u8; 32] {
        let mut s = [0u8; 32];
        if self.key_seed.0.len() == 32 {
            s.copy_from_slice(self.key_seed.0);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    fn sample() -> Provision<'static> {
        Provision {
            agent_id: "dev-1",
            key_seed: Bytes(&[7; 32]),
            relay_host: "10.0.2.100",
            relay_port: 8443,
            tls_name: "localhost",
            ca_der: Bytes(&[0x30, 0x82, 1, 2, 3]),
            entropy: Bytes(&[9; 32]),
            forward: None,
        }
    }

    fn with_rules(allow: &'static str, deny: &'static str) -> Provision<'static> {
        Provision {
            forward: Some(ForwardRules { allow, deny }),
            ..sample()
        }
    }

    fn ip(s: &str) -> Option<Ipv4Addr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn round_trip_and_trailing_flash() {
        let mut buf = [0xFFu8; 512];
        let n = sample().encode(&mut buf).unwrap();
        assert_eq!(Provision::decode(&buf).unwrap(), sample());
        assert_eq!(Provision::decode(&buf[..n]).unwrap(), sample());
        assert_eq!(
            Provision::decode(&buf[..n - 1]),
            Err(ProvisionError::Corrupt)
        );
    }

    #[test]
    fn erased_corrupt_and_newer_images_are_told_apart() {
        assert_eq!(Provision::decode(&[0xFF; 64]), Err(ProvisionError::Missing));
        let mut buf = [0u8; 512];
        let n = sample().encode(&mut buf).unwrap();
        let mut bad = buf;
        bad[20] ^= 1;
        assert_eq!(Provision::decode(&bad[..n]), Err(ProvisionError::Corrupt));
        let mut newer = buf;
        newer[8] = 3;
        assert_eq!(Provision::decode(&newer), Err(ProvisionError::Version(3)));
        let mut short = sample();
        short.key_seed = Bytes(&[1; 31]);
        let n = short.encode(&mut buf).unwrap();
        assert_eq!(Provision::decode(&buf[..n]), Err(ProvisionError::Invalid));
    }

    #[test]
    fn an_image_without_rules_is_format_1_as_before() {
        let mut buf = [0u8; 512];
        let n = sample().encode(&mut buf).unwrap();
        // What the format-1 tool wrote, byte for byte: the seven fields and no more.
        let body = [
            &b"\x05dev-1\x20"[..],
            &[7; 32],
            b"\x0a10.0.2.100\xfb\x41\x09localhost\x05\x30\x82\x01\x02\x03\x20",
            &[9; 32],
        ]
        .concat();
        let want = [
            &b"SESAMEPV\x01\x00"[..],
            &(body.len() as u32).to_le_bytes(),
            &body,
            &crc32(&body).to_le_bytes(),
        ]
        .concat();
        assert_eq!(&buf[..n], &want[..]);
        assert_eq!(Provision::decode(&buf[..n]).unwrap().forward, None);
    }

    #[test]
    fn rules_make_a_format_2_image_that_round_trips() {
        let p = with_rules("10.0.2.0/24:80,8000-8999 plc.local", "10.0.2.100");
        let mut buf = [0xFFu8; 512];
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(&buf[8..10], &[2, 0]);
        // The rules follow format 1's body: two postcard strings.
        let tail = b"\x2210.0.2.0/24:80,8000-8999 plc.local\x0a10.0.2.100";
        assert_eq!(&buf[n - 4 - tail.len()..n - 4], tail);
        assert_eq!(Provision::decode(&buf).unwrap(), p);
        // Firmware that reads format 1 only refuses it as newer ("provisioning image
        // format 2 is newer than this firmware's 1"), as this one refuses format 3.
        let mut newer = buf;
        newer[8] = 3;
        assert_eq!(Provision::decode(&newer), Err(ProvisionError::Version(3)));
    }

    #[test]
    fn an_image_with_a_rule_that_does_not_parse_is_invalid() {
        for bad in [
            ("10.0.0.0/33", ""),
            ("10.0.0.1", "host_name"),
            ("[::1]:22", ""),
        ] {
            let p = with_rules(bad.0, bad.1);
            let mut buf = [0u8; 512];
            let n = p.encode(&mut buf).unwrap();
            assert_eq!(
                Provision::decode(&buf[..n]),
                Err(ProvisionError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rules_parse_with_clear_errors() {
        for good in [
            "10.0.0.0/8",
            "127.0.0.1:22,8000-8999",
            "plc.local:502",
            "Gateway-1.",
            "0.0.0.0/0",
        ] {
            assert!(Rule::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("10.0.0.0/33", "bad prefix length"),
            ("10.0.0.256", "not an IPv4 address or network"),
            ("10.0.0.1:", "bad port list"),
            ("10.0.0.1:9-1", "bad port list"),
            ("10.0.0.1:http", "bad port list"),
            ("host_name", "not a host name"),
            ("a..b", "not a host name"),
            ("[fd00::/8]:443", "devices speak IPv4 only"),
            ("::1", "devices speak IPv4 only"),
        ] {
            assert_eq!(Rule::parse(bad).unwrap_err().to_string(), why, "{bad}");
        }
    }

    #[test]
    fn deny_wins_and_names_meet_the_address_rules() {
        let r = ForwardRules {
            allow: "10.0.2.0/24:80,8000-8999 plc.local:502",
            deny: "10.0.2.100 blocked.example",
        };
        assert_eq!(r.check("10.0.2.101", None, 80), Verdict::Allow);
        assert_eq!(r.check("10.0.2.101", None, 8080), Verdict::Allow);
        assert_eq!(r.check("10.0.2.101", None, 22), Verdict::Deny);
        assert_eq!(r.check("10.0.2.100", None, 80), Verdict::Deny);
        assert_eq!(r.check("10.0.3.1", None, 80), Verdict::Deny);
        // A name allowed by name still meets the address rules once resolved.
        assert_eq!(r.check("PLC.local.", None, 502), Verdict::Resolve);
        assert_eq!(r.check("plc.local", ip("192.168.1.5"), 502), Verdict::Allow);
        assert_eq!(r.check("plc.local", ip("10.0.2.100"), 502), Verdict::Deny);
        assert_eq!(r.check("plc.local", None, 503), Verdict::Deny);
        // A name the address rules might allow is resolved, then decided.
        assert_eq!(r.check("web.example", None, 80), Verdict::Resolve);
        assert_eq!(r.check("web.example", ip("10.0.2.7"), 80), Verdict::Allow);
        assert_eq!(r.check("web.example", ip("8.8.8.8"), 80), Verdict::Deny);
        assert_eq!(r.check("blocked.example", None, 80), Verdict::Deny);
        // Nothing is allowed without an allow rule.
        let none = ForwardRules {
            allow: "",
            deny: "",
        };
        assert_eq!(none.check("10.0.2.101", None, 80), Verdict::Deny);
        assert_eq!(none.check("a.example", None, 80), Verdict::Deny);
        let all = ForwardRules {
            allow: "0.0.0.0/0",
            deny: "",
        };
        assert_eq!(all.check("192.0.2.1", None, 1), Verdict::Allow);
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn too_small_buffer_is_an_error() {
        let mut buf = [0u8; 40];
        assert_eq!(sample().encode(&mut buf), Err(ProvisionError::TooLarge));
    }
}
