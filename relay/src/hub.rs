//! Online agents and the session routes through each agent's connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agent_core::wire::Frame;
use tokio::sync::{mpsc, watch};

use crate::agent_link::encode;

/// Frames queued towards one agent connection, at most (shared by its sessions).
pub const AGENT_QUEUE: usize = 1024;
/// Largest receive window the relay lets a client announce for one channel; larger
/// ones are clamped on the way to the agent, which then never has more than this in
/// flight per channel.
pub const MAX_WINDOW: u32 = 256 * 1024;
/// Bytes queued towards one client stream, at most (payload plus [`FRAME_COST`] per
/// frame): every channel's clamped window (64 channels on a Linux agent) with room for
/// frame costs. An honest agent honours credit and stays below it even when the client
/// stops reading (its session waits); only a misbehaving agent overflows it, which ends
/// only that session.
pub const CLIENT_QUEUE_BYTES: usize = 64 * (MAX_WINDOW as usize) * 5 / 4;
/// What one queued frame costs beyond its bytes, for [`CLIENT_QUEUE_BYTES`].
pub const FRAME_COST: usize = 64;

/// Where an agent's frames for one session go.
#[derive(Clone, Debug)]
pub struct Route {
    /// The session id the client used on its stream.
    pub client_sid: u32,
    /// The relay's session id (store key).
    pub session_id: String,
    /// Encoded frames for the client stream.
    pub tx: mpsc::UnboundedSender<Routed>,
    /// Bytes (with [`FRAME_COST`] each) in `tx` not yet taken by the stream task.
    pub queued: Arc<AtomicUsize>,
}

impl Route {
    /// Queue `frame`, addressed to the client's session id, unless the queue is over
    /// its byte bound.
    pub fn push(&self, frame: &Frame) -> bool {
        let routed = Routed::new(*frame, self.client_sid);
        let cost = routed.cost();
        let before = self.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > CLIENT_QUEUE_BYTES || self.tx.send(routed).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// A frame encoded for its next hop, with what the stream task needs to know of it,
/// learnt once from the decoded frame rather than by decoding the bytes again.
#[derive(Debug)]
pub struct Routed {
    /// The encoded frame.
    pub bytes: Vec<u8>,
    /// Payload bytes if it is `Data` (what pacing and the idle clock count), else 0.
    pub payload: usize,
    /// It ends the session (`Close` or `Reject`).
    pub last: bool,
}

impl Routed {
    /// `frame` addressed to session `sid`, encoded.
    pub fn new(frame: Frame, sid: u32) -> Routed {
        let payload = match frame {
            Frame::Data { data, .. } => data.0.len(),
            _ => 0,
        };
        let last = matches!(frame, Frame::Close { .. } | Frame::Reject { .. });
        Routed {
            bytes: encode(&frame.with_sid(sid)),
            payload,
            last,
        }
    }

    /// What it counts for against [`CLIENT_QUEUE_BYTES`].
    pub fn cost(&self) -> usize {
        self.bytes.len() + FRAME_COST
    }
}

/// One connected, authenticated agent.
#[derive(Debug)]
pub struct AgentHandle {
    /// Agent id.
    pub id: String,
    /// Agent name.
    pub name: String,
    /// Distinguishes successive connections of the same agent.
    pub conn_id: u64,
    /// The agent's advertised session capacity.
    pub max_sessions: u16,
    /// Largest frame the agent accepts (its `Hello`, within the protocol's bounds).
    pub max_frame: u32,
    /// Encoded frames for the agent.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Session kinds and features the agent announced (`wire::features`).
    pub features: u32,
    /// The account a session runs as when its `Open` names none (the agent's `Auth`;
    /// checked with `wire::account_valid`, never empty): what the policies decide on
    /// for such a session.
    pub default_account: String,
    /// Set to the reason to make the connection task hang up (replaced by a newer
    /// connection, the agent revoked).
    pub kick: watch::Sender<Option<String>>,
    routes: Mutex<HashMap<u32, (Route, RelaySlot)>>,
    next_sid: AtomicU32,
    /// Sessions on the whole relay (shared by every agent's handle).
    total: Arc<AtomicUsize>,
}

/// One session's place in the relay-wide count, given back when dropped. It lives
/// beside its route in the agent's table, so every way a route goes (its `Close`, a
/// refusal, the agent's disconnect, the handle dropped) gives the place back too:
/// the count is always the number of routes on the relay.
#[derive(Debug)]
struct RelaySlot(Arc<AtomicUsize>);

impl RelaySlot {
    /// Take a place if fewer than `max` are taken; else the number taken.
    fn reserve(total: &Arc<AtomicUsize>, max: usize) -> Result<RelaySlot, usize> {
        total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < max).then_some(t + 1)
            })
            .map(|_| RelaySlot(total.clone()))
    }
}

impl Drop for RelaySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a route could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReached {
    /// What is full: `agent 'gw-01'` or `relay`.
    pub scope: String,
    /// Sessions in use.
    pub in_use: usize,
    /// The limit.
    pub max: usize,
}

impl LimitReached {
    /// The relay's own limit, with `in_use` of `max` sessions taken.
    fn relay(in_use: usize, max: usize) -> LimitReached {
        LimitReached {
            scope: "relay".into(),
            in_use,
            max,
        }
    }
}

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} session limit reached ({} of {} sessions in use)",
            self.scope, self.in_use, self.max
        )
    }
}

impl AgentHandle {
    /// Sessions currently routed through this agent.
    pub fn session_count(&self) -> usize {
        self.routes.lock().unwrap().len()
    }

    /// The agent's limit, if `in_use` sessions already fill it.
    fn agent_full(&self, in_use: usize) -> Option<LimitReached> {
        let max = self.max_sessions as usize;
        (in_use >= max).then(|| LimitReached {
            scope: format!("agent '{}'", self.name),
            in_use,
            max,
        })
    }

    /// Whether another session fits on this agent and on the relay (`relay_max`).
    pub fn check_capacity(&self, relay_max: usize) -> Result<(), LimitReached> {
        if let Some(full) = self.agent_full(self.session_count()) {
            return Err(full);
        }
        let total = self.total.load(Ordering::Relaxed);
        if total >= relay_max {
            return Err(LimitReached::relay(total, relay_max));
        }
        Ok(())
    }

    /// Reserve a session id on this agent for a client stream, within the agent's
    /// capacity and the relay's limit of `relay_max` sessions.
    pub fn open_route(&self, route: Route, relay_max: usize) -> Result<u32, LimitReached> {
        let mut routes = self.routes.lock().unwrap();
        if let Some(full) = self.agent_full(routes.len()) {
            return Err(full);
        }
        // Reserve a place on the relay atomically, so concurrent opens cannot overshoot.
        let slot = RelaySlot::reserve(&self.total, relay_max)
            .map_err(|in_use| LimitReached::relay(in_use, relay_max))?;
        loop {
            let sid = self.next_sid.fetch_add(1, Ordering::Relaxed).max(1);
            if let std::collections::hash_map::Entry::Vacant(e) = routes.entry(sid) {
                e.insert((route, slot));
                return Ok(sid);
            }
        }
    }

    /// The route of a session.
    pub fn route(&self, sid: u32) -> Option<Route> {
        self.routes
            .lock()
            .unwrap()
            .get(&sid)
            .map(|(r, _)| r.clone())
    }

    /// Forget a session's route (its `Close` or `Reject` went through).
    pub fn remove_route(&self, sid: u32) -> Option<Route> {
        self.routes.lock().unwrap().remove(&sid).map(|(r, _)| r)
    }

    /// Forget every route (the connection ended).
    pub fn take_routes(&self) -> Vec<Route> {
        self.routes
            .lock()
            .unwrap()
            .drain()
            .map(|(_, (r, _))| r)
            .collect()
    }
}

/// The registry of online agents.
#[derive(Debug, Default)]
pub struct Hub {
    agents: Mutex<HashMap<String, Arc<AgentHandle>>>,
    conn_seq: AtomicU64,
    total: Arc<AtomicUsize>,
}

impl Hub {
    /// Register a freshly authenticated connection, with the default account its
    /// `Auth` named; a previous connection of the same agent is told to hang up.
    // Each argument is one thing the handshake learnt; a struct would only name them twice.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        id: &str,
        name: &str,
        max_sessions: u16,
        max_frame: u32,
        features: u32,
        default_account: &str,
        tx: mpsc::Sender<Vec<u8>>,
    ) -> (Arc<AgentHandle>, watch::Receiver<Option<String>>) {
        let (kick, kicked) = watch::channel(None);
        let handle = Arc::new(AgentHandle {
            id: id.to_string(),
            name: name.to_string(),
            conn_id: self.conn_seq.fetch_add(1, Ordering::Relaxed),
            max_sessions,
            max_frame,
            features,
            default_account: default_account.to_string(),
            tx,
            kick,
            routes: Mutex::new(HashMap::new()),
            next_sid: AtomicU32::new(1),
            total: self.total.clone(),
        });
        if let Some(old) = self
            .agents
            .lock()
            .unwrap()
            .insert(id.to_string(), handle.clone())
        {
            old.kick
                .send_replace(Some("replaced by a newer connection".into()));
        }
        (handle, kicked)
    }

    /// Remove a connection, unless a newer one of the same agent replaced it.
    pub fn unregister(&self, handle: &AgentHandle) {
        let mut agents = self.agents.lock().unwrap();
        if agents.get(&handle.id).map(|h| h.conn_id) == Some(handle.conn_id) {
            agents.remove(&handle.id);
        }
    }

    /// Sessions routed through the whole relay now.
    pub fn total_sessions(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The connection of an online agent.
    pub fn get(&self, id: &str) -> Option<Arc<AgentHandle>> {
        self.agents.lock().unwrap().get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> (Route, mpsc::UnboundedReceiver<Routed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let route = Route {
            client_sid: 1,
            session_id: "s".into(),
            tx,
            queued: Arc::default(),
        };
        (route, rx)
    }

    fn agent(hub: &Hub, id: &str, capacity: u16) -> Arc<AgentHandle> {
        let (tx, _rx) = mpsc::channel(1);
        hub.register(id, id, capacity, 2048, 0, "sesame-user", tx).0
    }

    #[test]
    fn sequential_sessions_never_exhaust_the_relay() {
        let hub = Hub::default();
        let a = agent(&hub, "a", 20);
        for _ in 0..1000 {
            let sid = a.open_route(route().0, 3).expect("room for one session");
            assert_eq!(hub.total_sessions(), 1);
            a.remove_route(sid).expect("its route");
            assert_eq!(hub.total_sessions(), 0);
        }
    }

    #[test]
    fn refusals_take_no_place() {
        let hub = Hub::default();
        let (a, b) = (agent(&hub, "a", 2), agent(&hub, "b", 20));
        let held: Vec<u32> = (0..2)
            .map(|_| a.open_route(route().0, 3).unwrap())
            .collect();
        // The agent is full: refused without touching the relay's count.
        let full = a.open_route(route().0, 3).unwrap_err();
        assert_eq!(full.scope, "agent 'a'");
        assert_eq!(hub.total_sessions(), 2);
        b.open_route(route().0, 3).unwrap();
        // The relay is full: refused, and the count stays at the limit.
        let full = b.open_route(route().0, 3).unwrap_err();
        assert_eq!(
            (full.scope.as_str(), full.in_use, full.max),
            ("relay", 3, 3)
        );
        assert_eq!(b.check_capacity(3).unwrap_err().in_use, 3);
        assert_eq!(hub.total_sessions(), 3);
        for sid in held {
            a.remove_route(sid);
        }
        assert_eq!(hub.total_sessions(), 1);
        assert!(b.check_capacity(3).is_ok());
    }

    #[test]
    fn a_disconnected_agent_gives_its_places_back() {
        let hub = Hub::default();
        let a = agent(&hub, "a", 20);
        for _ in 0..5 {
            a.open_route(route().0, 10).unwrap();
        }
        assert_eq!(a.take_routes().len(), 5);
        assert_eq!(hub.total_sessions(), 0);

        // A handle dropped with routes still in it (its task ended) frees them too.
        let b = agent(&hub, "b", 20);
        for _ in 0..4 {
            b.open_route(route().0, 10).unwrap();
        }
        assert_eq!(hub.total_sessions(), 4);
        hub.unregister(&b);
        drop(b);
        assert_eq!(hub.total_sessions(), 0);
    }
}
