//! Online agents and the session routes through each agent's connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agent_core::wire::{self, Frame, SidHeader, SID_HEADER_MAX};
use axum::body::Bytes;
use tokio::sync::{mpsc, watch};

use crate::agent_link::encode;

mod credit;
pub mod session;
pub use credit::CreditGate;

/// Frames queued towards one agent connection, at most (shared by its sessions).
pub const AGENT_QUEUE: usize = 1024;
/// Largest receive window the relay lets a client announce for one channel when it
/// opens it (`Open`, `ChannelOpen`); larger ones are clamped on the way to the agent.
pub const MAX_WINDOW: u32 = 256 * 1024;
/// Most a client's window on one channel may grow to with credit beyond what it
/// consumed (`flow::RecvWindow::growing`): the agent never has more than this in
/// flight per channel; what a client grants beyond it waits in the [`CreditGate`].
/// A single forwarded connection needs about its bandwidth-delay product.
pub const MAX_GROWN_WINDOW: u32 = 4 * 1024 * 1024;
/// Most payload the agent may have in flight towards one client stream, all its
/// channels together: what 64 channels (a Linux agent's most) at [`MAX_WINDOW`] could
/// always have. The [`CreditGate`] keeps grown windows within it.
pub const SESSION_WINDOW: usize = 64 * MAX_WINDOW as usize;
/// Bytes queued towards one client stream, at most (payload plus [`FRAME_COST`] per
/// frame): [`SESSION_WINDOW`] with room for frame costs. An honest agent honours
/// credit and stays below it even when the client stops reading (its session waits);
/// only a misbehaving agent overflows it, which ends only that session.
pub const CLIENT_QUEUE_BYTES: usize = SESSION_WINDOW * 5 / 4;
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
    /// A resumable session's: told when the agent's link goes and comes back (the
    /// route then waits in the [`Hub`] for the agent's next connection).
    pub link: Option<mpsc::UnboundedSender<LinkChange>>,
}

/// What happened to the agent link of a resumable session's route.
#[derive(Debug)]
pub enum LinkChange {
    /// The link dropped: the route waits for the agent to come back.
    Lost,
    /// The agent is back on this connection, the route on it with the same id.
    Back(Arc<AgentHandle>),
}

impl Route {
    /// Queue `frame`, addressed to the client's session id, unless the queue is over
    /// its byte bound.
    pub fn push(&self, frame: &Frame) -> bool {
        self.push_routed(Routed::new(*frame, self.client_sid))
    }

    /// Queue a frame already addressed to the client's session id, unless the queue
    /// is over its byte bound.
    pub fn push_routed(&self, routed: Routed) -> bool {
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
    pub bytes: Bytes,
    /// Payload bytes if it is `Data` (what pacing and the idle clock count), else 0.
    pub payload: usize,
    /// It ends the session (`Close` or `Reject`).
    pub last: bool,
    /// The channel it names (`Data`, `Credit`, `Eof`, the `Channel*` frames), else 0.
    pub ch: u16,
    /// It ends its channel (`ChannelClose` or `ChannelReject`).
    pub ends_channel: bool,
    /// Where its payload starts in its channel's bytes (`DataAt`; bytes sent again
    /// after a resume count once).
    pub offset: Option<u64>,
}

impl Routed {
    /// `frame` addressed to session `sid`, encoded.
    pub fn new(frame: Frame, sid: u32) -> Routed {
        Routed {
            bytes: encode(&frame.with_sid(sid)).into(),
            ..Routed::of(&frame)
        }
    }

    /// What the stream task needs to know of `frame`, without its bytes yet (see
    /// [`Routed::readdress`]).
    pub fn of(frame: &Frame) -> Routed {
        let (payload, ch) = match *frame {
            Frame::Data { data, ch, .. } | Frame::DataAt { data, ch, .. } => (data.0.len(), ch),
            Frame::Credit { ch, .. }
            | Frame::Ack { ch, .. }
            | Frame::Resume { ch, .. }
            | Frame::Eof { ch, .. }
            | Frame::ChannelOpen { ch, .. }
            | Frame::ChannelAccept { ch, .. }
            | Frame::ChannelReject { ch, .. }
            | Frame::ChannelClose { ch, .. } => (0, ch),
            _ => (0, 0),
        };
        Routed {
            bytes: Bytes::new(),
            payload,
            last: matches!(frame, Frame::Close { .. } | Frame::Reject { .. }),
            ch,
            ends_channel: matches!(
                frame,
                Frame::ChannelClose { .. } | Frame::ChannelReject { .. }
            ),
            offset: match *frame {
                Frame::DataAt { offset, .. } => Some(offset),
                _ => None,
            },
        }
    }

    /// With `frame`, the encoded session-scoped frame these facts were learnt from
    /// ([`Routed::of`]), readdressed to session `sid` without encoding it again.
    pub fn readdress(self, frame: Bytes, sid: u32) -> Routed {
        Routed {
            bytes: readdress(frame, sid),
            ..self
        }
    }

    /// What it counts for against [`CLIENT_QUEUE_BYTES`].
    pub fn cost(&self) -> usize {
        self.bytes.len() + FRAME_COST
    }
}

/// The encoded session-scoped frame `frame` (decoded once by the caller, so known to
/// be well formed) addressed to session `sid`. Only the header changes: in place when
/// the bytes are ours alone and the new id is no longer than the old one (the usual
/// case from an agent, whose ids grow, to a client, whose id is 1). Otherwise the new
/// header and the rest of the frame are copied once into a new buffer; so are bytes
/// that are a view into the WebSocket reader's buffer, even for the same id: a frame
/// that waits in a queue must not keep that buffer from being reused (the reader
/// would allocate and fault in a fresh one for every message).
pub fn readdress(frame: Bytes, sid: u32) -> Bytes {
    let Some(old) = SidHeader::read(&frame) else {
        return frame;
    };
    let frame = match frame.try_into_mut() {
        Ok(mut owned) => match wire::rewrite_sid(&mut owned, sid) {
            Some(start) => return owned.freeze().slice(start..),
            None => owned.freeze(),
        },
        Err(shared) => shared,
    };
    let mut header = [0u8; SID_HEADER_MAX];
    let n = SidHeader { sid, ..old }.write(&mut header);
    let mut out = FrameBuffer::take();
    out.0.reserve(n + frame.len() - old.len);
    out.0.extend_from_slice(&header[..n]);
    out.0.extend_from_slice(&frame[old.len..]);
    Bytes::from_owner(out)
}

/// Buffers of readdressed frames kept for reuse, at most.
const POOLED_FRAME_BUFFERS: usize = 256;
/// Buffers of readdressed frames for reuse (at most [`POOLED_FRAME_BUFFERS`] of them,
/// 8 MiB of full frames). Allocating one for each frame is not free: when a client's
/// queue drains, the allocator hands the memory back to the kernel, and the next
/// burst faults every page in again (measured: 40 000 page faults a second at
/// 300 MB/s, more time than the copy itself).
static FRAME_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A frame's bytes, back to [`FRAME_BUFFERS`] once the last `Bytes` of them is gone.
struct FrameBuffer(Vec<u8>);

impl FrameBuffer {
    /// An empty buffer, reused if there is one.
    fn take() -> FrameBuffer {
        let reused = FRAME_BUFFERS.lock().ok().and_then(|mut p| p.pop());
        FrameBuffer(reused.unwrap_or_default())
    }
}

impl AsRef<[u8]> for FrameBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        // Only frame-sized ones (an agent's frames are at most the default maximum).
        if buf.capacity() > wire::DEFAULT_MAX_FRAME as usize + SID_HEADER_MAX {
            return;
        }
        buf.clear();
        if let Ok(mut pool) = FRAME_BUFFERS.lock() {
            if pool.len() < POOLED_FRAME_BUFFERS {
                pool.push(buf);
            }
        }
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
    pub tx: mpsc::Sender<Bytes>,
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

    /// Take a resumable session's route from an earlier connection, with its id
    /// and its place; its stream task hears that the agent is back on this one.
    fn adopt(self: &Arc<Self>, sid: u32, route: Route, slot: RelaySlot) {
        let link = route.link.clone();
        if link.as_ref().is_some_and(|l| l.is_closed()) {
            return; // its session task has ended
        }
        self.routes.lock().unwrap().insert(sid, (route, slot));
        self.next_sid
            .fetch_max(sid.wrapping_add(1), Ordering::Relaxed);
        if let Some(link) = link {
            let _ = link.send(LinkChange::Back(self.clone()));
        }
    }
}

/// The registry of online agents.
#[derive(Debug, Default)]
pub struct Hub {
    agents: Mutex<Agents>,
    conn_seq: AtomicU64,
    total: Arc<AtomicUsize>,
}

/// The online agents, and what waits for each one's next connection.
#[derive(Debug, Default)]
struct Agents {
    online: HashMap<String, Arc<AgentHandle>>,
    /// Routes of resumable sessions whose agent link dropped, by agent id, with
    /// their places on the relay.
    held: HashMap<String, Vec<(u32, Route, RelaySlot)>>,
    /// The next session id to use on each agent's links: ids go on from one
    /// connection to the next, so a new session never takes the id of one the
    /// agent still holds.
    next_sid: HashMap<String, u32>,
    /// Resumable sessions that ended while their agent was away: the agent is told
    /// when it comes back, so that their processes stop then rather than at the end
    /// of its own hold.
    ended_away: HashMap<String, Vec<u32>>,
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
        tx: mpsc::Sender<Bytes>,
    ) -> (Arc<AgentHandle>, watch::Receiver<Option<String>>) {
        let (kick, kicked) = watch::channel(None);
        let mut agents = self.agents.lock().unwrap();
        // After every id the agent's earlier connections gave out, the one it
        // replaces included (it may not have gone yet).
        let replaced = agents
            .online
            .get(id)
            .map_or(1, |old| old.next_sid.load(Ordering::Relaxed));
        let first_sid = agents.next_sid.get(id).copied().unwrap_or(1).max(replaced);
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
            next_sid: AtomicU32::new(first_sid),
            total: self.total.clone(),
        });
        if let Some(old) = agents.online.insert(id.to_string(), handle.clone()) {
            old.kick
                .send_replace(Some("replaced by a newer connection".into()));
        }
        // Resumable sessions waiting for this agent go on on this connection; those
        // that ended meanwhile are ended on it.
        for (sid, route, slot) in agents.held.remove(id).unwrap_or_default() {
            handle.adopt(sid, route, slot);
        }
        for sid in agents.ended_away.remove(id).unwrap_or_default() {
            let close = Frame::Close {
                sid,
                exit: agent_core::wire::Exit::Aborted(agent_core::wire::ErrorCode::TERMINATED),
                reason: "the session ended while the agent was away",
            };
            let _ = handle.tx.try_send(encode(&close).into());
        }
        (handle, kicked)
    }

    /// Remove a connection, unless a newer one of the same agent replaced it, and
    /// take its routes: those of sessions that are not resumable are returned (they
    /// end); resumable ones are told the link is lost and wait for the agent's next
    /// connection (at once, if one is already up).
    pub fn unregister(&self, handle: &AgentHandle) -> Vec<Route> {
        let mut agents = self.agents.lock().unwrap();
        let next = handle.next_sid.load(Ordering::Relaxed);
        let stored = agents.next_sid.entry(handle.id.clone()).or_insert(1);
        *stored = (*stored).max(next);
        if agents.online.get(&handle.id).map(|h| h.conn_id) == Some(handle.conn_id) {
            agents.online.remove(&handle.id);
        }
        let newer = agents.online.get(&handle.id).cloned();
        let mut ending = Vec::new();
        let drained: Vec<_> = handle.routes.lock().unwrap().drain().collect();
        for (sid, (route, slot)) in drained {
            let Some(link) = route.link.clone() else {
                ending.push(route);
                continue;
            };
            if link.is_closed() {
                // Its session task has ended: nothing waits for it.
                continue;
            }
            let _ = link.send(LinkChange::Lost);
            match &newer {
                Some(h) => h.adopt(sid, route, slot),
                None => agents
                    .held
                    .entry(handle.id.clone())
                    .or_default()
                    .push((sid, route, slot)),
            }
        }
        ending
    }

    /// A resumable session is over: forget its route wherever it is (on its agent's
    /// connection, or waiting for the agent; then the agent is told to end it when it
    /// comes back).
    pub fn forget_route(&self, agent_id: &str, sid: u32) {
        let mut agents = self.agents.lock().unwrap();
        let mut was_held = false;
        if let Some(held) = agents.held.get_mut(agent_id) {
            let before = held.len();
            held.retain(|(s, _, _)| *s != sid);
            was_held = held.len() != before;
        }
        if was_held {
            agents
                .ended_away
                .entry(agent_id.to_string())
                .or_default()
                .push(sid);
        }
        let online = agents.online.get(agent_id).cloned();
        drop(agents);
        if let Some(h) = online {
            h.remove_route(sid);
        }
    }

    /// New sessions on `agent_id`'s links get ids above `sid` (a restarted relay's
    /// start: the agent may still hold sessions of the previous run up to it).
    pub fn ids_after(&self, agent_id: &str, sid: u32) {
        let mut agents = self.agents.lock().unwrap();
        let next = agents.next_sid.entry(agent_id.to_string()).or_insert(1);
        *next = (*next).max(sid.saturating_add(1));
    }

    /// The agent may still hold session `sid`, which is over: it is told to end it
    /// when it connects next.
    pub fn end_on_return(&self, agent_id: &str, sid: u32) {
        let mut agents = self.agents.lock().unwrap();
        agents
            .ended_away
            .entry(agent_id.to_string())
            .or_default()
            .push(sid);
    }

    /// A resumable session the previous run of the relay left running: its route
    /// waits for its agent's next connection with its id `sid` (at once on the
    /// current one, if the agent is online), within the relay's limit of
    /// `relay_max` sessions.
    pub fn park(
        &self,
        agent_id: &str,
        sid: u32,
        route: Route,
        relay_max: usize,
    ) -> Result<(), LimitReached> {
        let slot = RelaySlot::reserve(&self.total, relay_max)
            .map_err(|in_use| LimitReached::relay(in_use, relay_max))?;
        let mut agents = self.agents.lock().unwrap();
        let next = agents.next_sid.entry(agent_id.to_string()).or_insert(1);
        *next = (*next).max(sid.wrapping_add(1));
        match agents.online.get(agent_id).cloned() {
            Some(h) => h.adopt(sid, route, slot),
            None => agents
                .held
                .entry(agent_id.to_string())
                .or_default()
                .push((sid, route, slot)),
        }
        Ok(())
    }

    /// Sessions routed through the whole relay now.
    pub fn total_sessions(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The connection of an online agent.
    pub fn get(&self, id: &str) -> Option<Arc<AgentHandle>> {
        self.agents.lock().unwrap().online.get(id).cloned()
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
            link: None,
        };
        (route, rx)
    }

    fn agent(hub: &Hub, id: &str, capacity: u16) -> Arc<AgentHandle> {
        let (tx, _rx) = mpsc::channel(1);
        hub.register(id, id, capacity, 2048, 0, "sesame-user", tx).0
    }

    #[test]
    fn frames_are_readdressed_in_place_when_the_new_id_fits() {
        // Data{sid 300, ch 0, OUT, "ok"} to the client's sid 1: the same buffer.
        let from_agent = vec![0x07, 0xac, 0x02, 0x00, 0x00, 0x02, b'o', b'k'];
        let ptr = from_agent[3..].as_ptr();
        let out = readdress(Bytes::from(from_agent), 1);
        assert_eq!(&out[..], &[0x07, 0x01, 0x00, 0x00, 0x02, b'o', b'k']);
        assert_eq!(out[2..].as_ptr(), ptr, "not copied");
        // To a longer id, or while the bytes are shared: copied once, same frame.
        let from_client = Bytes::from_static(&[0x07, 0x01, 0x00, 0x00, 0x02, b'o', b'k']);
        let out = readdress(from_client.clone(), 300);
        assert_eq!(&out[..], &[0x07, 0xac, 0x02, 0x00, 0x00, 0x02, b'o', b'k']);
        let out = readdress(from_client.clone(), 5);
        assert_eq!(&out[..], &[0x07, 0x05, 0x00, 0x00, 0x02, b'o', b'k']);
        let same = readdress(from_client.clone(), 1);
        assert_eq!(same, from_client, "same id, same frame");
        assert_ne!(
            same.as_ptr(),
            from_client.as_ptr(),
            "but not the shared buffer"
        );
        // The facts the stream task needs, learnt from the decoded frame.
        let f = Frame::decode(&from_client).unwrap();
        let r = Routed::of(&f).readdress(from_client.clone(), 9);
        assert_eq!(
            (r.payload, r.ch, r.last, r.ends_channel),
            (2, 0, false, false)
        );
        assert_eq!(Frame::decode(&r.bytes).unwrap(), f.with_sid(9));
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
        assert_eq!(hub.unregister(&a).len(), 5);
        assert_eq!(hub.total_sessions(), 0);

        // The places go with the routes, whoever holds the handle.
        let b = agent(&hub, "b", 20);
        for _ in 0..4 {
            b.open_route(route().0, 10).unwrap();
        }
        assert_eq!(hub.total_sessions(), 4);
        let ended = hub.unregister(&b);
        assert_eq!(hub.total_sessions(), 0);
        drop((ended, b));
    }

    #[test]
    fn a_resumable_route_waits_for_the_agents_next_connection_and_keeps_its_id() {
        let hub = Hub::default();
        let a = agent(&hub, "a", 20);
        let (mut held, _rx) = route();
        let (link, mut changes) = mpsc::unbounded_channel();
        held.link = Some(link);
        let sid = a.open_route(held, 10).unwrap();
        let plain = a.open_route(route().0, 10).unwrap();
        assert_eq!(hub.unregister(&a).len(), 1, "the plain session ends");
        assert!(matches!(changes.try_recv(), Ok(LinkChange::Lost)));
        assert_eq!(hub.total_sessions(), 1, "the held one keeps its place");

        let b = agent(&hub, "a", 20);
        match changes.try_recv() {
            Ok(LinkChange::Back(h)) => assert_eq!(h.conn_id, b.conn_id),
            other => panic!("{other:?}"),
        }
        assert!(b.route(sid).is_some(), "same id on the new link");
        // Ids go on: a new session never takes one the agent may still hold.
        let next = b.open_route(route().0, 10).unwrap();
        assert!(next > sid.max(plain), "{next}");
        hub.forget_route(&b.id, sid);
        assert!(b.route(sid).is_none());
        assert_eq!(hub.total_sessions(), 1);

        // Held while the agent is away, forgotten there too.
        let (mut held, _rx) = route();
        let (link, _changes) = mpsc::unbounded_channel();
        held.link = Some(link);
        let sid = b.open_route(held, 10).unwrap();
        let _ = hub.unregister(&b);
        assert_eq!(hub.total_sessions(), 1);
        hub.forget_route(&b.id, sid);
        assert_eq!(hub.total_sessions(), 0);
    }
}
