//! Accounts from `/etc/passwd` (the agent is static: no NSS, so local accounts only).

/// One account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell (may be empty).
    pub shell: String,
}

fn find(pred: impl Fn(&Account) -> bool) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let a = Account {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
            shell: f[6].to_string(),
        };
        pred(&a).then_some(a)
    })
}

/// The account named `name`.
pub fn by_name(name: &str) -> Option<Account> {
    find(|a| a.name == name)
}

/// The account with user id `uid`.
pub fn by_uid(uid: u32) -> Option<Account> {
    find(|a| a.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_both_ways() {
        let root = by_uid(0).expect("uid 0 in /etc/passwd");
        assert_eq!(by_name(&root.name), Some(root.clone()));
        assert_eq!(by_name("no-such-user-here"), None);
    }
}
