//! Temporary SSH public keys: `ssh-key` sessions append a key to a user's
//! `authorized_keys` with OpenSSH's `expiry-time=` option (honoured by OpenSSH >= 8.2,
//! so the key stops working on time even if the agent is killed), and the agent also
//! removes the line when it expires. Lines the agent wrote end with a `sesame:EXPIRY`
//! comment; every file it touched is listed in the state directory and swept of
//! expired Sesame lines at start-up.
//!
//! The files live in directories their users own, so each is read as hostile: never
//! through a symlink, never a FIFO or device (opened without blocking, refused after
//! `fstat`), at most [`MAX_FILE`] bytes, with one link and owned by its user. The
//! functions here block on the file system: the driver runs them on tokio's blocking
//! threads, never on its runtime thread.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Gid, Mode, OFlags, Uid};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::wire::ErrorCode;

/// Longest TTL accepted (one day): these keys are meant to be short-lived.
pub const MAX_TTL: u32 = 24 * 3600;
/// Largest `authorized_keys` read (OpenSSH's own are a few KiB; a user could make
/// theirs a sparse file of many GiB).
pub const MAX_FILE: u64 = 1024 * 1024;
const MARKER: &str = "sesame:";
const REGISTRY: &str = "ssh-key-files";

/// Held for each read-modify-write of a key file or the registry, so a push and a
/// sweep of the same file cannot lose each other's change.
static EDITING: Mutex<()> = Mutex::new(());

fn editing() -> std::sync::MutexGuard<'static, ()> {
    EDITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
    let (y, m, d) = agent_core::time::civil_from_days(days);
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

/// `refusing: authorized_keys WHY`.
fn refuse(why: &str) -> std::io::Error {
    std::io::Error::other(format!("refusing: authorized_keys {why}"))
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

    /// The file's text and owner, or `None` when it does not exist. With `owner`,
    /// the file must belong to that uid: a file someone else owns (a hard link to
    /// `/etc/shadow`, say) would otherwise be copied into one the user can read.
    fn read(
        &self,
        name: &OsStr,
        owner: Option<u32>,
    ) -> std::io::Result<Option<(String, u32, u32)>> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => return Err(refuse("is a symlink")),
            // What opening a socket gives.
            Err(rustix::io::Errno::NXIO) => return Err(refuse("is not a regular file")),
            Err(e) => return Err(io_err(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        let ty = rustix::fs::FileType::from_raw_mode(st.st_mode);
        if !ty.is_file() {
            let what = match ty {
                rustix::fs::FileType::Fifo => "is a FIFO, not a regular file",
                rustix::fs::FileType::Directory => "is a directory, not a regular file",
                rustix::fs::FileType::CharacterDevice | rustix::fs::FileType::BlockDevice => {
                    "is a device, not a regular file"
                }
                _ => "is not a regular file",
            };
            return Err(refuse(what));
        }
        if st.st_nlink != 1 {
            return Err(refuse("has other hard links"));
        }
        if let Some(uid) = owner.filter(|uid| *uid != st.st_uid) {
            return Err(refuse(&format!(
                "is owned by uid {}, not by the user (uid {uid})",
                st.st_uid
            )));
        }
        let too_big = || refuse(&format!("is larger than {} MiB", MAX_FILE >> 20));
        if st.st_size as u64 > MAX_FILE {
            return Err(too_big());
        }
        let mut text = String::new();
        // It may grow after the fstat: read no more than the limit.
        std::fs::File::from(fd)
            .take(MAX_FILE + 1)
            .read_to_string(&mut text)?;
        if text.len() as u64 > MAX_FILE {
            return Err(too_big());
        }
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
    let _editing = editing();
    let Ok(Some((text, uid, gid))) = keys.read(name, None) else {
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

/// What [`push`] answers: the message for the user, the file and the key's lifetime;
/// or the refusal.
pub type KeyPush = Result<(String, PathBuf, Duration), (ErrorCode, String)>;

/// Remove the key from `path` once its lifetime `after` is over (it also carries
/// `expiry-time=`, which OpenSSH honours; this removes the line).
pub fn expire_later(path: PathBuf, after: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(after + Duration::from_secs(1)).await;
        let _ = tokio::task::spawn_blocking(move || sweep(&path)).await;
    });
}

/// Make `key` valid for `user` for `ttl` seconds. Returns the message for the user,
/// and the file and expiry to sweep later.
pub fn push(config: &KeyConfig, user: &str, key: &str, ttl: u32) -> KeyPush {
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
    let _editing = editing();
    let existing = keys
        .read(name, Some(u.uid))
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
        let (tmp, config, me, _) = scratch("symlinks");
        std::fs::write(tmp.join("secret"), "do not touch\n").unwrap();
        let key = KEY;
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

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA";

    /// A scratch directory with a `keys/` directory for the test user's key file:
    /// (directory, config, user name, that user's key file).
    fn scratch(tag: &str) -> (PathBuf, KeyConfig, String, PathBuf) {
        let tmp = std::env::temp_dir().join(format!("sesame-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("keys")).unwrap();
        let me = crate::passwd::by_uid(rustix::process::geteuid().as_raw())
            .expect("the test user is in /etc/passwd")
            .name;
        let config = KeyConfig {
            pattern: format!("{}/keys/%u", tmp.display()),
            state_dir: tmp.clone(),
        };
        let file = tmp.join("keys").join(&me);
        (tmp, config, me, file)
    }

    /// `push`, on a thread: `None` if it is still blocked after five seconds.
    fn push_within_5s(config: &KeyConfig, user: &str) -> Option<Result<String, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (config, user) = (config.clone(), user.to_string());
        std::thread::spawn(move || {
            let _ = tx.send(push(&config, &user, KEY, 60).map(|r| r.0).map_err(|e| e.1));
        });
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (tmp, config, me, file) = scratch("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &file,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let refused = push_within_5s(&config, &me).expect("push blocked on a FIFO");
        assert_eq!(
            refused.unwrap_err(),
            format!(
                "{}: refusing: authorized_keys is a FIFO, not a regular file",
                file.display()
            )
        );
        // The start-up and expiry sweep too (it runs before the agent connects).
        let (tx, rx) = std::sync::mpsc::channel();
        let f = file.clone();
        std::thread::spawn(move || {
            sweep(&f);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("sweep blocked on a FIFO");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn an_oversized_file_is_refused_unread() {
        let (tmp, config, me, file) = scratch("big");
        // Sparse: costs no disk, but reading it whole would cost 64 MiB of memory.
        std::fs::File::create(&file)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let refused = push_within_5s(&config, &me).expect("push took over 5 s");
        assert_eq!(
            refused.unwrap_err(),
            format!(
                "{}: refusing: authorized_keys is larger than 1 MiB",
                file.display()
            )
        );
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 << 20);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn a_hard_link_is_refused_and_left_alone() {
        use std::os::unix::fs::MetadataExt;
        let (tmp, config, me, file) = scratch("link");
        // Stands for /etc/shadow (protected_hardlinks stops most users; not all hosts
        // set it, and root's own files are fair game for root's directory).
        let secret = tmp.join("secret");
        std::fs::write(&secret, "expiry-time=\"x\" ssh-ed25519 AAAA sesame:100\n").unwrap();
        std::fs::hard_link(&secret, &file).unwrap();
        let refused = push_within_5s(&config, &me).unwrap();
        assert_eq!(
            refused.unwrap_err(),
            format!(
                "{}: refusing: authorized_keys has other hard links",
                file.display()
            )
        );
        sweep(&file);
        assert_eq!(std::fs::metadata(&file).unwrap().nlink(), 2);
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "expiry-time=\"x\" ssh-ed25519 AAAA sesame:100\n"
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn a_file_owned_by_someone_else_is_refused() {
        let (tmp, config, me, file) = scratch("owner");
        std::fs::write(&file, "ssh-rsa AAAAB3 someone-elses\n").unwrap();
        let uid = rustix::process::geteuid().as_raw();
        let other = if uid == 65534 { 65533 } else { 65534 };
        if std::os::unix::fs::chown(&file, Some(other), None).is_err() {
            eprintln!("skipped: giving a file away needs root");
            return;
        }
        let refused = push_within_5s(&config, &me).unwrap();
        assert_eq!(
            refused.unwrap_err(),
            format!(
                "{}: refusing: authorized_keys is owned by uid {other}, not by the user (uid {uid})",
                file.display()
            )
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "ssh-rsa AAAAB3 someone-elses\n"
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
