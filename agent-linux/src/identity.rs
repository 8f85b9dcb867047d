//! The agent's Ed25519 identity, kept in `STATE_DIR/identity.pk8` (mode 0600).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair};

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error("{0}: not an Ed25519 PKCS#8 key; remove it and activate again")]
    Corrupt(PathBuf),
}

/// The agent's key pair.
pub struct Identity {
    key: Ed25519KeyPair,
    /// Whether the key was made by this call (first run).
    pub created: bool,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity(public={:02x?})", &self.public_key()[..4])
    }
}

impl Identity {
    /// Load the key from `dir`, or make and save a fresh one if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join("identity.pk8");
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key = Ed25519KeyPair::from_pkcs8(&bytes)
                    .map_err(|_| IdentityError::Corrupt(path.clone()))?;
                Ok(Identity {
                    key,
                    created: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io)?;
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| io(std::io::Error::other("random generator failed")))?;
                let tmp = dir.join("identity.pk8.tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(doc.as_ref()).map_err(io)?;
                f.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                let key = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                    .map_err(|_| IdentityError::Corrupt(path.clone()))?;
                Ok(Identity { key, created: true })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.key.public_key().as_ref());
        k
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut s = [0u8; 64];
        s.copy_from_slice(self.key.sign(msg).as_ref());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_once_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("sesame-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Identity::load_or_create(&dir).unwrap();
        assert!(a.created);
        let mode = std::fs::metadata(dir.join("identity.pk8"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Identity::load_or_create(&dir).unwrap();
        assert!(!b.created);
        assert_eq!(a.public_key(), b.public_key());
        let sig = b.sign(b"msg");
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, a.public_key());
        assert!(pk.verify(b"msg", &sig).is_ok());
        std::fs::write(dir.join("identity.pk8"), b"garbage").unwrap();
        assert!(matches!(
            Identity::load_or_create(&dir),
            Err(IdentityError::Corrupt(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
