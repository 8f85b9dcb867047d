// The page's protocol client: agent-core's Client compiled to WebAssembly
// (relay/web/client), one instance per terminal, and the shell's link to the
// relay over it: open, output, typing, resize, resume after a cut, and taken
// up again by the page that replaces this one (a reload).

export const KIND = {
  NONE: 0, ACCEPTED: 1, REJECTED: 2, DATA: 3, EOF: 4, RESUMABLE: 5,
  SUSPENDED: 6, RESUMED: 7, NOTICE: 8, CLOSED: 9, RESIZE: 10,
};
const ERROR = -1;
const utf8 = new TextEncoder();
const words = new TextDecoder();

let module;

/** A fresh codec (its own memory and session). */
export async function codec() {
  module ??= WebAssembly.compileStreaming(fetch('/assets/client.wasm'));
  const instance = await WebAssembly.instantiate(await module, {});
  return new Codec(instance.exports);
}

class Codec {
  constructor(x) { this.x = x; }
  get mem() { return new Uint8Array(this.x.memory.buffer); }
  get ev() { return new Uint32Array(this.x.memory.buffer, this.x.event(), 8); }
  bytes() { const e = this.ev; return this.mem.slice(e[2], e[2] + e[3]); }
  text() { return words.decode(this.bytes()); }
  /** Hand a message over; returns the event kind, or throws the error. */
  handle(msg) {
    this.mem.set(msg, this.x.input());
    return this.check(this.x.handle(msg.length));
  }
  /** Decode a watch's frame. */
  decode(msg) {
    this.mem.set(msg, this.x.input());
    return this.check(this.x.decode(msg.length));
  }
  check(k) { if (k === ERROR) throw new Error(this.text()); return k; }
  /** Every frame there is to send. */
  *frames() {
    for (;;) {
      const n = this.check(this.x.transmit());
      if (n === 0) return;
      yield this.mem.slice(this.x.output(), this.x.output() + n);
    }
  }
  /** Typed bytes: how many the session took. */
  send(bytes) {
    const n = Math.min(bytes.length, this.x.input_capacity());
    this.mem.set(bytes.subarray(0, n), this.x.input());
    return this.check(this.x.send(n));
  }
}

const b64 = {
  to(bytes) { let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); },
  from(s) { return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)); },
};

/** Calls of the JSON API with the browser session's cookie. */
export async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
    credentials: 'same-origin',
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(data.error || `${method} ${path}: ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return data;
}

const RETRY = [500, 1000, 2000, 4000, 5000];
/** Silence before the page asks the relay for a sign of life (a text `ping`),
 *  and before it takes the stream for dead and comes back on a new one. */
const PING_AFTER = 15000;
const DEAD_AFTER = 45000;

/**
 * A shell session on `target`, drawn by `ui`:
 * { output(bytes, done), status(text, kind), notice(text), ended(text), size() }.
 */
export class ShellLink {
  constructor(target, account, ui) {
    this.target = target;
    this.account = account;
    this.ui = ui;
    this.key = `sesame.shell.${target}.${account || ''}`;
    this.pending = new Uint8Array(0);
    this.unwritten = [];
    this.over = false;
    this.live = false;
    this.tries = 0;
  }

  /** Saved by the page this one replaces, if any. */
  saved() {
    try { return JSON.parse(sessionStorage.getItem(this.key) || 'null'); } catch { return null; }
  }

  /** Take the session up from `saved`, or open a new one. */
  async start(saved) {
    this.codec = await codec();
    if (this.over) return;
    if (saved) {
      // Ended meanwhile (terminated, exited while this page was away): a new one.
      const rows = await api('GET', '/v1/sessions?limit=200').catch(() => null);
      if (this.over) return;
      const was = rows?.find((r) => r.id === saved.id);
      if (was && !was.live) {
        sessionStorage.removeItem(this.key);
        this.ui.notice(`the previous session ended: ${was.exit || 'ended'}; this is a new one`);
        saved = null;
      }
    }
    if (saved) {
      sessionStorage.removeItem(this.key);
      const state = b64.from(saved.state);
      this.codec.mem.set(state, this.codec.x.saved());
      this.codec.check(this.codec.x.take_up(state.length));
      Object.assign(this, { url: saved.url, token: saved.token, hold: saved.hold, id: saved.id });
      this.accepted = true;
      this.pending = b64.from(saved.pending || '');
      this.ui.status('taking the session up again…', 'wait');
      this.connect(`resume_token=${encodeURIComponent(this.token)}`, true);
      return;
    }
    const body = { target: this.target, kind: 'shell' };
    if (this.account) body.run_as = this.account;
    const r = await api('POST', '/v1/sessions', body);
    Object.assign(this, { url: r.stream_url, id: r.session_id });
    if (this.over) {
      // Left before it opened: its token goes unused, and the session with it.
      return;
    }
    this.ui.status('opening…', 'wait');
    this.connect(`token=${encodeURIComponent(r.token)}`, false);
  }

  connect(auth, resuming) {
    const ws = new WebSocket(`${this.url}?${auth}&notices=true&resume=2`);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    // A connection that does not open (a network that drops packets) is given up.
    const opening = setTimeout(() => { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, 10000);
    ws.onopen = () => {
      clearTimeout(opening);
      if (resuming) {
        if (this.codec.x.reattach() === ERROR) {
          // A page that took the session up is reattached already.
        }
      } else {
        const { cols, rows } = this.ui.size();
        const n = this.codec.check(this.codec.x.open_shell(cols, rows));
        ws.send(this.codec.mem.slice(this.codec.x.output(), this.codec.x.output() + n));
      }
      this.flush();
    };
    this.heard = Date.now();
    ws.onmessage = (m) => {
      if (ws !== this.ws || this.detached) return;
      this.heard = Date.now();
      if (typeof m.data !== 'string') this.receive(new Uint8Array(m.data));
    };
    ws.onclose = () => { if (ws === this.ws && !this.detached) this.lost(); };
    this.keepalive ??= setInterval(() => this.beat(), 5000);
  }

  /** A stream silent for long is asked for a sign of life, then given up: its
   *  socket is dropped without a close (a close would end the session). */
  beat() {
    const ws = this.ws;
    if (this.over || this.detached || !ws || ws.readyState !== WebSocket.OPEN) return;
    const quiet = Date.now() - this.heard;
    if (quiet > DEAD_AFTER) {
      ws.onmessage = null;
      ws.onclose = null;
      this.lost();
    } else if (quiet > PING_AFTER) {
      ws.send('ping');
    }
  }

  receive(msg) {
    let k;
    try {
      k = this.codec.handle(msg);
    } catch (e) {
      this.flush();
      this.end(`error: ${e.message}`);
      return;
    }
    switch (k) {
      case KIND.RESUMABLE:
        this.hold = this.codec.ev[0];
        this.token = this.codec.text();
        break;
      case KIND.ACCEPTED:
        this.tries = 0;
        this.accepted = true;
        this.live = true;
        this.ui.status('', 'live');
        break;
      case KIND.REJECTED:
        this.end(`${this.target}: ${this.codec.text()}`);
        return;
      case KIND.DATA: {
        const bytes = this.codec.bytes();
        this.unwritten.push(bytes);
        this.ui.output(bytes, () => {
          this.unwritten.shift();
          if (!this.over && !this.detached) { this.codec.x.consumed(bytes.length); this.flush(); }
        });
        break;
      }
      case KIND.SUSPENDED:
        this.live = false;
        if (!this.resuming) this.ui.status(`${this.target} unreachable; waiting (session kept for ${span(this.hold)})`, 'wait');
        break;
      case KIND.RESUMED: {
        this.live = true;
        this.resuming = false;
        this.lostAt = undefined;
        this.tries = 0;
        this.ui.status('', 'live');
        const { cols, rows } = this.ui.size();
        this.codec.x.resize(cols, rows);
        break;
      }
      case KIND.NOTICE:
        this.ui.notice(this.codec.text());
        break;
      case KIND.CLOSED: {
        const e = this.codec.ev;
        const why = this.codec.text();
        const how = e[0] === 0 ? `exited with status ${e[1] | 0}`
          : e[0] === 1 ? `killed by signal ${e[1]}`
          : `ended: ${why || 'aborted'}`;
        this.end(`session on ${this.target} ${how}`);
        return;
      }
      default:
    }
    this.pump();
  }

  /** Bytes typed (a string or bytes). */
  type(data) {
    const bytes = typeof data === 'string' ? utf8.encode(data) : data;
    const all = new Uint8Array(this.pending.length + bytes.length);
    all.set(this.pending);
    all.set(bytes, this.pending.length);
    this.pending = all;
    this.pump();
  }

  pump() {
    if (this.over || !this.codec) return;
    while (this.pending.length) {
      const n = this.codec.send(this.pending);
      if (n === 0) break;
      this.pending = this.pending.subarray(n);
    }
    this.flush();
  }

  resize(cols, rows) {
    if (this.codec && !this.over) { this.codec.x.resize(cols, rows); this.flush(); }
  }

  flush() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.detached) return;
    for (const f of this.codec.frames()) ws.send(f);
  }

  /** The stream was lost: come back on a new one while the relay holds the session. */
  lost() {
    this.live = false;
    if (this.over) return;
    if (!this.accepted || !this.token) {
      this.end(`lost the relay; the session on ${this.target} ended`);
      return;
    }
    this.lostAt ??= Date.now();
    if (Date.now() - this.lostAt > (this.hold || 0) * 1000) {
      this.end(`session on ${this.target} ended: the relay was unreachable for ${span(this.hold)}`);
      return;
    }
    this.resuming = true;
    this.ui.status(`relay connection lost; reconnecting (session kept for ${span(this.hold)})`, 'wait');
    if (this.tries >= 2) {
      // A browser is not told why an upgrade was refused: the session may be
      // over (ended, terminated). The API says so.
      api('GET', '/v1/sessions?limit=200').then((rows) => {
        const s = rows.find((r) => r.id === this.id);
        if (s && !s.live) this.end(`session on ${this.target} ended: ${s.exit || 'ended'}`);
      }).catch((e) => {
        // Logged out (in another tab): the relay ended the session.
        if (e.status === 401) this.end(`session on ${this.target} ended: ${e.message}`);
      });
    }
    const wait = RETRY[Math.min(this.tries++, RETRY.length - 1)];
    this.ws.onopen = null;
    setTimeout(() => {
      if (this.over || this.detached) return;
      this.connect(`resume_token=${encodeURIComponent(this.token)}`, true);
    }, wait);
  }

  /** The page goes away (reload, navigation): save where the session stands so
   *  that the page that follows takes it up; the browser's leaving cuts the
   *  stream ("going away"), which the relay holds like any cut. */
  detach(screen) {
    if (this.over || !this.accepted || this.detached || !this.token) return false;
    const n = this.codec.x.save();
    if (n === ERROR) return false;
    const state = this.codec.mem.slice(this.codec.x.saved(), this.codec.x.saved() + n);
    // Output handed to the terminal but not drawn yet goes with the screen.
    const tail = this.unwritten.reduce((a, b) => { const c = new Uint8Array(a.length + b.length); c.set(a); c.set(b, a.length); return c; }, new Uint8Array(0));
    try {
      sessionStorage.setItem(this.key, JSON.stringify({
        url: this.url, token: this.token, hold: this.hold, id: this.id,
        state: b64.to(state), pending: b64.to(this.pending), screen, tail: b64.to(tail),
      }));
    } catch {
      // Too much to keep (the tab's storage is full): no page could take the
      // session up, so it ends now rather than wait out its hold.
      this.close();
      return false;
    }
    this.detached = true;
    return true;
  }

  /** End the session (the user asked). */
  close() {
    if (this.over) return;
    if (!this.codec) { this.end(''); return; }
    this.codec.x.close();
    if (this.ws?.readyState === WebSocket.OPEN && this.live) {
      this.flush();
    } else if (this.id && this.accepted) {
      // No stream to say it on (a reconnection under way): the API ends it, if
      // the policies let this user end it; else the page says so.
      fetch(`/v1/sessions/${encodeURIComponent(this.id)}/terminate`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}', keepalive: true,
      }).then(async (r) => {
        if (!r.ok) {
          const why = (await r.json().catch(() => ({}))).error || r.status;
          this.ui.ended(`could not end the session (${why}); it ends once its hold of ${span(this.hold)} has passed`);
        }
      }).catch(() => {});
    }
    this.end(`session on ${this.target} ended`);
  }

  end(text) {
    if (this.over) return;
    this.over = true;
    this.live = false;
    clearInterval(this.keepalive);
    sessionStorage.removeItem(this.key);
    try { this.ws?.close(1000); } catch { /* already closed */ }
    this.ui.ended(text);
  }
}

/** A read-only watch of a live shell (`/v1/sessions/{id}/join`). */
export async function watch(id, ui) {
  const c = await codec();
  const ws = new WebSocket(`wss://${location.host}/v1/sessions/${encodeURIComponent(id)}/join`);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = (m) => {
    let k;
    try { k = c.decode(new Uint8Array(m.data)); } catch (e) { ui.ended(`error: ${e.message}`); ws.close(); return; }
    if (k === KIND.RESIZE) ui.resize(c.ev[0], c.ev[1]);
    else if (k === KIND.DATA) ui.output(c.bytes());
    else if (k === KIND.CLOSED) ui.ended(`the session ended: ${c.text() || 'exited'}`);
  };
  ws.onclose = (e) => ui.ended(e.reason || 'the watch ended');
  return ws;
}

/** "10m" and friends. */
export function span(secs) {
  if (!secs) return 'a while';
  if (secs % 3600 === 0) return `${secs / 3600}h`;
  if (secs % 60 === 0) return `${secs / 60}m`;
  return `${secs}s`;
}

export { b64 };
