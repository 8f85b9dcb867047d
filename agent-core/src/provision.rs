//! The provisioning image: what a device is given at flashing time.
//!
//! `sesame-relay device provision` writes it; firmware reads it from a reserved
//! flash region. Layout (all integers little-endian):
//!
//! ```text
//! "SESAMEPV" (8) | format version u16 | body length u32 | body | CRC-32 of body u32
//! ```
//!
//! The body is [`Provision`] in postcard. Erased flash (all `0xFF`), a torn write
//! and a foreign image are all told apart from a good image by the magic, the
//! length and the CRC, and reported as [`ProvisionError`].

use serde::{Deserialize, Serialize};

use crate::wire::Bytes;

/// First bytes of every image.
pub const MAGIC: &[u8; 8] = b"SESAMEPV";
/// The image format this crate reads and writes.
pub const FORMAT_VERSION: u16 = 1;
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
        let body_len = postcard::to_slice(self, &mut out[14..body_end])
            .map_err(|_| ProvisionError::TooLarge)?
            .len();
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
        if version != FORMAT_VERSION {
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
        let (p, rest): (Provision, _) =
            postcard::take_from_bytes(body).map_err(|_| ProvisionError::Invalid)?;
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
    use super::*;

    fn sample() -> Provision<'static> {
        Provision {
            agent_id: "dev-1",
            key_seed: Bytes(&[7; 32]),
            relay_host: "10.0.2.100",
            relay_port: 8443,
            tls_name: "localhost",
            ca_der: Bytes(&[0x30, 0x82, 1, 2, 3]),
            entropy: Bytes(&[9; 32]),
        }
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
        newer[8] = 2;
        assert_eq!(Provision::decode(&newer), Err(ProvisionError::Version(2)));
        let mut short = sample();
        short.key_seed = Bytes(&[1; 31]);
        let n = short.encode(&mut buf).unwrap();
        assert_eq!(Provision::decode(&buf[..n]), Err(ProvisionError::Invalid));
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
