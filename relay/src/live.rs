//! The sessions this relay is serving now, so that a revoked key, a lock or a
//! revoked agent can end them at once (each session's task watches its entry and
//! closes both sides with the reason), someone can join one (its recording's
//! [`Watch`]), and its user can be told so (a notice).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::record::Watch;
use crate::secret::Secret;

/// Who a live session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub user_id: String,
    /// The API key it was opened with.
    pub key_id: Option<String>,
    /// The browser session it was opened through, if one (`ws-...`): it ends when
    /// that logs out.
    pub web: Option<String>,
    /// Agent id.
    pub agent_id: String,
}

struct Entry {
    owner: Owner,
    end: watch::Sender<Option<String>>,
    notices: mpsc::UnboundedSender<String>,
    /// Its recording, to be joined (a shell session being recorded).
    watch: Option<Watch>,
    /// A resumable session's: the hashes of its resume token and of the one before
    /// it (good until a resume with the new one is done: a stream cut before the
    /// client read its new token must not cost it the session), and where a new
    /// stream goes.
    resume: Option<(String, Option<String>, mpsc::UnboundedSender<Resumed>)>,
}

/// A client that came back to a resumable session with its token: its new stream.
pub struct Resumed {
    /// The WebSocket, upgraded.
    pub socket: axum::extract::ws::WebSocket,
    /// Where it comes from.
    pub peer: std::net::IpAddr,
    /// The hash of the token it presented (what its client holds for sure).
    pub presented: String,
}

/// Why a resume token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeRefused {
    /// The session is not live (it ended, or never ran on this relay).
    NotLive,
    /// The session is not resumable, or the token is not its latest one.
    BadToken,
}

/// The live sessions, by session id.
#[derive(Default)]
pub struct Live {
    sessions: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("sessions", &self.len())
            .finish()
    }
}

/// A session's place in [`Live`]: removed when dropped. `ended` yields the reason
/// once someone ends the session.
pub struct Registration {
    live: Arc<Live>,
    id: String,
    /// Becomes `Some(reason)` when the session must end.
    pub ended: watch::Receiver<Option<String>>,
    /// Lines for the session's user (someone joined or left).
    pub notices: mpsc::UnboundedReceiver<String>,
    /// New streams of a resumable session ([`Registration::resumable`]).
    pub resumed: mpsc::UnboundedReceiver<Resumed>,
    resumed_tx: mpsc::UnboundedSender<Resumed>,
}

impl Registration {
    /// The session can be resumed with `token` (its hash is kept); returns the token.
    pub fn resumable(&self) -> Secret {
        let token = Secret::generate("rt_");
        self.resumable_by(token.hash(), None);
        token
    }

    /// A client came back with the token whose hash is `presented`: the next token
    /// goes out, and `presented` stays good until a resume uses the new one (which
    /// a cut may keep from reaching the client). The token presented, not the one
    /// that was latest: a client that a restart cut off before its latest token
    /// came resumes with the one before, and holds only that one still.
    pub fn rotated(&self, presented: String) -> Secret {
        let token = Secret::generate("rt_");
        self.resumable_by(token.hash(), Some(presented));
        token
    }

    /// A token before the latest is still good ([`Registration::rotated`]).
    pub fn holds_previous(&self) -> bool {
        self.live
            .lock()
            .get(&self.id)
            .and_then(|e| e.resume.as_ref())
            .is_some_and(|(_, previous, _)| previous.is_some())
    }

    /// A resume with the latest token is done: the one before it is no longer good.
    pub fn confirm_token(&self) {
        if let Some((_, previous, _)) = self
            .live
            .lock()
            .get_mut(&self.id)
            .and_then(|e| e.resume.as_mut())
        {
            *previous = None;
        }
    }

    /// The session can be resumed with the token whose hash is `hash`, or the one
    /// before it (`previous`) until a resume uses the latest: a session a restarted
    /// relay takes up, whose client may not have had the latest.
    pub fn resumable_by(&self, hash: String, previous: Option<String>) {
        if let Some(e) = self.live.lock().get_mut(&self.id) {
            e.resume = Some((hash, previous, self.resumed_tx.clone()));
        }
    }

    /// The session can be joined through its recording's `watch`.
    pub fn joinable(&self, watch: Watch) {
        if let Some(e) = self.live.lock().get_mut(&self.id) {
            e.watch = Some(watch);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Note a session as live.
    pub fn register(self: &Arc<Self>, session_id: &str, owner: Owner) -> Registration {
        let (end, ended) = watch::channel(None);
        let (tell, notices) = mpsc::unbounded_channel();
        let (resumed_tx, resumed) = mpsc::unbounded_channel();
        let entry = Entry {
            owner,
            end,
            notices: tell,
            watch: None,
            resume: None,
        };
        self.lock().insert(session_id.to_string(), entry);
        Registration {
            live: self.clone(),
            id: session_id.to_string(),
            ended,
            notices,
            resumed,
            resumed_tx,
        }
    }

    /// A client presents `token` to resume a session: if it is the session's latest
    /// token, the owner (to check for locks and revocations) and where the new
    /// stream goes. The session's task spends the token when it takes the stream
    /// ([`Registration::resumable`] makes the next one): a stream that never arrives
    /// (a failed upgrade) costs the client nothing.
    pub fn resume(
        &self,
        session_id: &str,
        token: &Secret,
    ) -> Result<(Owner, mpsc::UnboundedSender<Resumed>), ResumeRefused> {
        let sessions = self.lock();
        let e = sessions.get(session_id).ok_or(ResumeRefused::NotLive)?;
        let presented = token.hash();
        match &e.resume {
            // Hashes of random tokens: comparing them tells nothing of the token.
            Some((current, previous, to))
                if *current == presented || previous.as_ref() == Some(&presented) =>
            {
                Ok((e.owner.clone(), to.clone()))
            }
            _ => Err(ResumeRefused::BadToken),
        }
    }

    /// End every live session whose owner matches, with `reason`. Returns how many
    /// matched, those already ending included: a session something else ended
    /// first keeps its first reason (a lock right after a terminate does not
    /// rewrite why the session ended).
    pub fn end_where(&self, matches: impl Fn(&Owner) -> bool, reason: &str) -> usize {
        let sessions = self.lock();
        let mut n = 0;
        for e in sessions.values().filter(|e| matches(&e.owner)) {
            end_first(e, reason);
            n += 1;
        }
        n
    }

    /// End one live session. Returns whether this ended it: `false` when it is not
    /// live, or something else ended it first (the first reason stands).
    pub fn end(&self, session_id: &str, reason: &str) -> bool {
        match self.lock().get(session_id) {
            Some(e) => end_first(e, reason),
            None => false,
        }
    }

    /// A live session's owner and its recording's [`Watch`] (`None` when it is not
    /// being recorded), to join it.
    pub fn watch(&self, session_id: &str) -> Option<(Owner, Option<Watch>)> {
        self.lock()
            .get(session_id)
            .map(|e| (e.owner.clone(), e.watch.clone()))
    }

    /// Tell a live session's user `line`. Returns whether it is live.
    pub fn notify(&self, session_id: &str, line: &str) -> bool {
        self.lock()
            .get(session_id)
            .is_some_and(|e| e.notices.send(line.to_string()).is_ok())
    }

    /// Whether a session is live.
    pub fn contains(&self, session_id: &str) -> bool {
        self.lock().contains_key(session_id)
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// End a session with `reason` unless it was ended already (the first reason
/// stands). Returns whether this ended it.
fn end_first(e: &Entry, reason: &str) -> bool {
    e.end.send_if_modified(|why| {
        let first = why.is_none();
        if first {
            *why = Some(reason.to_string());
        }
        first
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(user: &str, key: &str, agent: &str) -> Owner {
        Owner {
            user_id: user.into(),
            key_id: Some(key.into()),
            web: None,
            agent_id: agent.into(),
        }
    }

    #[test]
    fn ending_reaches_only_the_matching_sessions_and_drop_unregisters() {
        let live = Arc::new(Live::default());
        let a = live.register("s-1", owner("us-a", "k-1", "ag-1"));
        let b = live.register("s-2", owner("us-a", "k-2", "ag-2"));
        let c = live.register("s-3", owner("us-b", "k-3", "ag-1"));
        assert_eq!(
            live.end_where(|o| o.key_id.as_deref() == Some("k-1"), "key revoked"),
            1
        );
        assert_eq!(a.ended.borrow().as_deref(), Some("key revoked"));
        assert_eq!(*b.ended.borrow(), None);
        // s-1 and s-3 match; s-1 was ended first and keeps its reason.
        assert_eq!(live.end_where(|o| o.agent_id == "ag-1", "agent locked"), 2);
        assert_eq!(a.ended.borrow().as_deref(), Some("key revoked"));
        assert_eq!(c.ended.borrow().as_deref(), Some("agent locked"));
        assert!(live.end("s-2", "terminated"));
        assert!(!live.end("s-2", "terminated again"), "the first end stands");
        assert_eq!(b.ended.borrow().as_deref(), Some("terminated"));
        // A lock of the user right after the terminate: both of its sessions match,
        // neither reason is overwritten.
        assert_eq!(live.end_where(|o| o.user_id == "us-a", "user locked"), 2);
        assert_eq!(b.ended.borrow().as_deref(), Some("terminated"));
        assert_eq!(a.ended.borrow().as_deref(), Some("key revoked"));
        assert!(live.contains("s-2"));
        drop((a, b, c));
        assert!(live.is_empty());
        assert!(!live.contains("s-2"));
        assert!(!live.end("s-2", "terminated"));
    }
}
