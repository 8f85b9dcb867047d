//! Temporary SSH public keys: `ssh-key` sessions append a key to a user's
//! `authorized_keys` with OpenSSH's `expiry-time=` option (honoured by OpenSSH >= 8.2,
//! so the key stops working on time even if the agent is killed), and the agent also
//! removes the line when it expires. Lines the agent wrote end with a `sesame:EXPIRY`
//! comment; every file it touched is listed in the state directory and swept of
//! expired Sesame lines at start-up.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Gid, Mode, OFlags, Uid};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::wire::ErrorCode;

/// Longest TTL accepted (one day): these keys are meant to be short-lived.
pub const MAX_TTL: u32 = 24 * 3600;
const MARKER: &str = "sesame:";
const REGISTRY: &str = "ssh-key-files";

/// Where `authorized_keys` lives; `%h` is the home directory, `%u` the user name
/// (as in sshd's `AuthorizedKeysFile`).
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// The path pattern.
    pub pattern: String,
    /// The agent's state directory (registry of touched files).
    pub state_dir: PathBuf,
}

impl Default for KeyConfig {
    fn default() -> Self {
        KeyConfig {
            pattern: "%h/.ssh/authorized_keys".into(),
            state_dir: PathBuf::from("/var/lib/sesame-agent"),
        }
    }
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// `type base64`, validated so that no option or second line can be smuggled in.
fn parse_key(key: &str) -> Result<(&str, &str), String> {
    let mut parts = key.split_whitespace();
    let (Some(ty), Some(blob)) = (parts.next(), parts.next()) else {
        return Err("not a public key line (expected 'TYPE BASE64 [COMMENT]')".into());
    };
    if !KEY_TYPES.contains(&ty) {
        return Err(format!("unsupported key type '{ty}'"));
    }
    let b64 = blob.len() >= 16
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if !b64 || key.contains(['\n', '\r']) {
        return Err("malformed public key".into());
    }
    Ok((ty, blob))
}

/// `YYYYMMDDHHMMSSZ` for a Unix time (UTC), as `expiry-time=` wants it.
pub fn utc_stamp(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keep every line except Sesame lines whose expiry has passed.
fn sweep_text(text: &str, now: u64) -> String {
    text.lines()
        .filter(|l| {
            l.rsplit_once(MARKER)
                .and_then(|(_, t)| t.trim().parse::<u64>().ok())
                .is_none_or(|exp| exp > now)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The directory holding an `authorized_keys` file, opened so that nothing in it can
/// redirect the root agent's writes: the directory itself must not be a symlink, the
/// file is read with `O_NOFOLLOW`, and the new content goes to a fresh `O_EXCL` file
/// that is `fchown`ed and renamed over the old one (a rename replaces a symlink rather
/// than following it). The user owns that directory and could otherwise point
/// `authorized_keys` at `/etc/shadow` or at root's own keys.
struct KeysDir {
    fd: OwnedFd,
}

fn io_err(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

impl KeysDir {
    /// Open `dir`; create it (0700, owned by `owner`) when missing and `owner` is given.
    fn open(dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<KeysDir> {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/"));
        let name = dir
            .file_name()
            .ok_or_else(|| std::io::Error::other("the key directory has no name"))?;
        let pfd = rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&pfd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if owner.is_some() => {
                rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o700)).map_err(io_err)?;
                let fd = rustix::fs::openat(&pfd, name, flags, Mode::empty()).map_err(io_err)?;
                if let Some((uid, gid)) = owner {
                    let _ =
                        rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
                }
                fd
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(std::io::Error::other(
                    "refusing: it is a symlink, not a directory",
                ))
            }
            Err(e) => return Err(io_err(e)),
        };
        Ok(KeysDir { fd })
    }

    /// The file's text and owner, or `None` when it does not exist.
    fn read(&self, name: &OsStr) -> std::io::Result<Option<(String, u32, u32)>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(std::io::Error::other(
                    "refusing: authorized_keys is a symlink",
                ))
            }
            Err(e) => return Err(io_err(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
            return Err(std::io::Error::other(
                "refusing: authorized_keys is not a regular file",
            ));
        }
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text)?;
        Ok(Some((text, st.st_uid, st.st_gid)))
    }

    /// Replace the file with `text`, owned by `uid:gid`, mode 0600.
    fn write(&self, name: &OsStr, text: &str, uid: u32, gid: u32) -> std::io::Result<()> {
        let tmp = format!(
            ".{}.sesame-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, tmp.as_str(), flags, Mode::from_raw_mode(0o600))
            .map_err(io_err)?;
        let _ = rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        let mut f = std::fs::File::from(fd);
        let written = f.write_all(text.as_bytes()).and_then(|_| f.sync_all());
        let renamed = written.and_then(|_| {
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(io_err)
        });
        if renamed.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), rustix::fs::AtFlags::empty());
        }
        renamed
    }
}

fn split(path: &Path) -> std::io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(std::io::Error::other("not a file path")),
    }
}

/// Remove expired Sesame lines from `path` (keeps its owner).
pub fn sweep(path: &Path) {
    let Ok((dir, name)) = split(path) else { return };
    let Ok(keys) = KeysDir::open(dir, None) else {
        return;
    };
    let Ok(Some((text, uid, gid))) = keys.read(name) else {
        return;
    };
    let kept = sweep_text(&text, now());
    if kept != text {
        let _ = keys.write(name, &kept, uid, gid);
    }
}

/// Sweep every file the agent ever wrote a key to (at start-up).
pub fn sweep_registered(config: &KeyConfig) {
    let reg = std::fs::read_to_string(config.state_dir.join(REGISTRY)).unwrap_or_default();
    for p in reg.lines().filter(|l| !l.is_empty()) {
        sweep(Path::new(p));
    }
}

/// Make `key` valid for `user` for `ttl` seconds. Returns the message for the user,
/// and the file and expiry to sweep later.
pub fn push(
    config: &KeyConfig,
    user: &str,
    key: &str,
    ttl: u32,
) -> Result<(String, PathBuf, Duration), (ErrorCode, String)> {
    if ttl == 0 || ttl > MAX_TTL {
        return Err((
            ErrorCode::DENIED,
            format!("ttl must be 1..={MAX_TTL} seconds"),
        ));
    }
    let (ty, blob) = parse_key(key).map_err(|e| (ErrorCode::DENIED, e))?;
    let u = crate::passwd::by_name(user).ok_or_else(|| {
        (
            ErrorCode::NO_SUCH_USER,
            format!("no such user '{user}' on this target"),
        )
    })?;
    let path = PathBuf::from(config.pattern.replace("%h", &u.home).replace("%u", user));
    let fail = |e: std::io::Error| (ErrorCode::INTERNAL, format!("{}: {e}", path.display()));
    let (dir, name) = split(&path).map_err(fail)?;
    let keys = KeysDir::open(dir, Some((u.uid, u.gid))).map_err(fail)?;
    let existing = keys
        .read(name)
        .map_err(fail)?
        .map(|(t, _, _)| t)
        .unwrap_or_default();
    let expiry = now() + u64::from(ttl);
    let mut text = sweep_text(&existing, now());
    text.push_str(&format!(
        "expiry-time=\"{}\" {ty} {blob} {MARKER}{expiry}\n",
        utc_stamp(expiry)
    ));
    keys.write(name, &text, u.uid, u.gid).map_err(fail)?;
    register(config, &path);
    let msg = format!(
        "key valid for '{user}' for {ttl} s (until {} UTC)",
        utc_stamp(expiry).trim_end_matches('Z')
    );
    Ok((msg, path, Duration::from_secs(u64::from(ttl))))
}

fn register(config: &KeyConfig, path: &Path) {
    let reg = config.state_dir.join(REGISTRY);
    let existing = std::fs::read_to_string(&reg).unwrap_or_default();
    let line = path.display().to_string();
    if !existing.lines().any(|l| l == line) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&reg)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229000000Z");
        assert_eq!(utc_stamp(1_700_000_000), "20231114221320Z");
        assert_eq!(utc_stamp(4_102_444_799), "20991231235959Z");
    }

    #[test]
    fn keys_are_validated_and_expired_lines_swept() {
        assert!(parse_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me@host").is_ok());
        assert!(parse_key("command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA").is_err());
        assert!(parse_key("ssh-ed25519 AAAA\nssh-rsa BBBB").is_err());
        let text = "ssh-rsa AAAAB3 keep-me\nexpiry-time=\"x\" ssh-ed25519 AAAA sesame:100\nexpiry-time=\"y\" ssh-ed25519 BBBB sesame:300\n";
        assert_eq!(
            sweep_text(text, 200),
            "ssh-rsa AAAAB3 keep-me\nexpiry-time=\"y\" ssh-ed25519 BBBB sesame:300\n"
        );
    }

    #[test]
    fn symlinked_key_files_and_directories_are_refused() {
        let tmp = std::env::temp_dir().join(format!("sesame-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("keys")).unwrap();
        std::fs::write(tmp.join("secret"), "do not touch\n").unwrap();
        let me = crate::passwd::by_uid(rustix::process::geteuid().as_raw())
            .expect("the test user is in /etc/passwd")
            .name;
        let config = KeyConfig {
            pattern: format!("{}/keys/%u", tmp.display()),
            state_dir: tmp.clone(),
        };
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA";
        // authorized_keys pointing at another file
        std::os::unix::fs::symlink(tmp.join("secret"), tmp.join("keys").join(&me)).unwrap();
        let err = push(&config, &me, key, 60).unwrap_err();
        assert!(err.1.contains("symlink"), "{}", err.1);
        assert_eq!(
            std::fs::read_to_string(tmp.join("secret")).unwrap(),
            "do not touch\n"
        );
        // the key directory itself pointing elsewhere
        std::fs::create_dir_all(tmp.join("elsewhere")).unwrap();
        let config = KeyConfig {
            pattern: format!("{}/linked/%u", tmp.display()),
            state_dir: tmp.clone(),
        };
        std::os::unix::fs::symlink(tmp.join("elsewhere"), tmp.join("linked")).unwrap();
        let err = push(&config, &me, key, 60).unwrap_err();
        assert!(err.1.contains("symlink"), "{}", err.1);
        assert!(std::fs::read_dir(tmp.join("elsewhere"))
            .unwrap()
            .next()
            .is_none());
        // and a plain file works, private and with the expiry option
        let config = KeyConfig {
            pattern: format!("{}/plain/%u", tmp.display()),
            state_dir: tmp.clone(),
        };
        push(&config, &me, key, 60).unwrap();
        let text = std::fs::read_to_string(tmp.join("plain").join(&me)).unwrap();
        assert!(text.starts_with("expiry-time=\""), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.join("plain").join(&me))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
