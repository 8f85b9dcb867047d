//! Random secrets and their stored hashes.

use ring::rand::{SecureRandom, SystemRandom};

/// A secret value that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A fresh random secret: `prefix` then 32 lowercase base32 characters (160 bits).
    pub fn generate(prefix: &str) -> Secret {
        Secret(format!("{prefix}{}", random_base32(32)))
    }
    /// Wrap a secret received from a peer.
    pub fn from_string(s: String) -> Secret {
        Secret(s)
    }
    /// The secret itself, to show once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The hash kept in the store (hex SHA-256). Secrets are high-entropy random
    /// strings, so a fast hash is enough to make a stolen database useless.
    pub fn hash(&self) -> String {
        hash_hex(self.0.as_bytes())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Hex SHA-256 of `data`.
pub fn hash_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes from the system generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system random generator failed");
    b
}

/// `n` random characters of the RFC 4648 base32 alphabet, lowercased.
pub fn random_base32(n: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut raw = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("the system random generator failed");
    raw.iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hidden_in_debug() {
        let a = Secret::generate("k_");
        let b = Secret::generate("k_");
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 34);
        assert_eq!(format!("{a:?}"), "Secret(..)");
        assert_eq!(a.hash().len(), 64);
        assert_ne!(a.hash(), a.expose());
    }
}
