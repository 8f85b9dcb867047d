//! Accounts from `/etc/passwd` and groups from `/etc/group` (the agent is static: no
//! NSS, so local accounts only).

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

/// The account of one `/etc/passwd` line, if it is one.
fn parse_passwd_line(l: &str) -> Option<Account> {
    let f: Vec<&str> = l.split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(Account {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5].to_string(),
        shell: f[6].to_string(),
    })
}

fn find(pred: impl Fn(&Account) -> bool) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|a| pred(a))
}

/// The account named `name`.
pub fn by_name(name: &str) -> Option<Account> {
    find(|a| a.name == name)
}

/// The account with user id `uid`.
pub fn by_uid(uid: u32) -> Option<Account> {
    find(|a| a.uid == uid)
}

/// `(name, gid, members)` of one `/etc/group` line (`name:x:gid:user1,user2`).
fn parse_group_line(l: &str) -> Option<(&str, u32, impl Iterator<Item = &str>)> {
    let mut f = l.split(':');
    let name = f.next()?;
    let _password = f.next()?;
    let gid = f.next()?.trim().parse().ok()?;
    let members = f.next().unwrap_or("");
    Some((
        name,
        gid,
        members.split(',').map(str::trim).filter(|m| !m.is_empty()),
    ))
}

/// The groups of `user` in a `/etc/group` text: `primary` first, then every group
/// that lists the user as a member, each once (what `initgroups(3)` gives a login).
pub fn groups_in(group_file: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    for (_, gid, mut members) in group_file.lines().filter_map(parse_group_line) {
        if !groups.contains(&gid) && members.any(|m| m == user) {
            groups.push(gid);
        }
    }
    groups
}

/// The supplementary groups of `user` from `/etc/group`, with its primary group.
pub fn groups_of(user: &str, primary: u32) -> Vec<u32> {
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups_in(&text, user, primary)
}

/// The id of the group named `name` in `/etc/group`.
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines()
        .filter_map(parse_group_line)
        .find(|(n, _, _)| *n == name)
        .map(|(_, gid, _)| gid)
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

    #[test]
    fn passwd_lines() {
        assert_eq!(
            parse_passwd_line("deploy:x:1001:1002:Deploy,,,:/home/deploy:/bin/bash"),
            Some(Account {
                name: "deploy".into(),
                uid: 1001,
                gid: 1002,
                home: "/home/deploy".into(),
                shell: "/bin/bash".into(),
            })
        );
        assert_eq!(
            parse_passwd_line("svc:x:999:999::/:").map(|a| a.shell),
            Some(String::new())
        );
        for bad in [
            "",
            "# comment",
            "x:x:notanumber:1::/:/bin/sh",
            "short:x:1:1",
        ] {
            assert_eq!(parse_passwd_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn groups_are_the_primary_then_each_group_listing_the_user_once() {
        let file = "\
root:x:0:
adm:x:4:syslog,deploy
tty:x:5:
sudo:x:27: deploy
deploy:x:1002:
docker:x:998:alice,deploy
broken line
nogid:x::deploy
deployers:x:1500:deployer
again:x:1002:deploy
";
        assert_eq!(groups_in(file, "deploy", 1002), vec![1002, 4, 27, 998]);
        assert_eq!(groups_in(file, "alice", 1003), vec![1003, 998]);
        assert_eq!(groups_in(file, "nobody", 65534), vec![65534]);
        assert_eq!(groups_in("", "deploy", 7), vec![7]);
    }
}
