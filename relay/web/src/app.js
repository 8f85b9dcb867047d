// The console: login, targets, a shell per target, live sessions, recordings.
// Every call is the relay's JSON API with the browser session's cookie; the
// relay decides what this user may see and do (the same Cedar policies as the
// CLI's calls).

import '/assets/cssom.js';
import { Terminal } from '/assets/xterm.mjs';
import { FitAddon } from '/assets/addon-fit.mjs';
import { SearchAddon } from '/assets/addon-search.mjs';
import { SerializeAddon } from '/assets/addon-serialize.mjs';
import { UnicodeGraphemesAddon } from '/assets/addon-unicode-graphemes.mjs';
import { ClipboardAddon } from '/assets/addon-clipboard.mjs';
import { api, ShellLink, watch, b64 } from '/assets/client.js';

const main = document.getElementById('main');
const bar = document.getElementById('bar');
const modal = document.getElementById('modal');

/** An element: el('div.class', {attr}, ...children). */
function el(spec, attrs = {}, ...kids) {
  const [tag, ...classes] = spec.split('.');
  const e = document.createElement(tag || 'div');
  if (classes.length) e.className = classes.join(' ');
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function go(path) { landed = false; history.pushState(null, '', path); route(); }

document.addEventListener('click', (e) => {
  const a = e.target.closest('a[href^="/"]');
  if (a && !e.ctrlKey && !e.metaKey && !a.hasAttribute('download')) { e.preventDefault(); go(a.getAttribute('href')); }
});
window.addEventListener('popstate', () => { modal.hidden = true; modal.replaceChildren(); route(); });

let me = null;
let leave = null;
/** The page was loaded at this address (not reached by a click in it). */
let landed = true;

async function route() {
  if (leave) { leave(); leave = null; }
  const path = location.pathname;
  if (path === '/login') return loginPage();
  if (!me) {
    try { me = await api('GET', '/v1/web/me'); } catch (e) {
      if (e.status === 401) { go('/login'); return; }
      return fatal(e.message);
    }
  }
  bar.hidden = false;
  document.getElementById('who').textContent = me.user;
  for (const a of bar.querySelectorAll('[data-nav]')) {
    a.classList.toggle('on', (a.dataset.nav === 'targets' && (path === '/' || path.startsWith('/t/')))
      || path.startsWith(`/${a.dataset.nav}`));
  }
  let m;
  if (path === '/') return targetsPage();
  if ((m = path.match(/^\/t\/([^/]+)$/))) return shellPage(decodeURIComponent(m[1]));
  if (path === '/sessions') return sessionsPage();
  if (path === '/recordings') return recordingsPage();
  if ((m = path.match(/^\/watch\/([^/]+)$/))) return watchPage(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/play\/([^/]+)$/))) return playPage(decodeURIComponent(m[1]));
  fatal('no such page');
}

function fatal(text) { main.replaceChildren(el('p.error', { role: 'alert' }, text)); }

document.getElementById('logout').addEventListener('click', async () => {
  await api('POST', '/v1/web/logout').catch(() => {});
  me = null;
  sessionStorage.clear();
  go('/login');
});

// --- login -----------------------------------------------------------------

async function loginPage() {
  bar.hidden = true;
  const link = location.hash.slice(1);
  if (!link) return showLogin('');
  // The link's secret is in the fragment: it never reaches a server log. It is
  // used only on a click: a link someone else made would log this browser in as
  // them (and its shells would run, and be recorded, as them).
  history.replaceState(null, '', '/login');
  const now = await api('GET', '/v1/web/me').catch(() => null);
  const msg = el('p.error', { role: 'alert' });
  const use = el('button', {
    type: 'button',
    onclick: async () => {
      try {
        me = await api('POST', '/v1/web/login', { link });
        go('/');
      } catch (e) { msg.textContent = e.message; }
    },
  }, 'Log in with this link');
  main.replaceChildren(el('section.center', {}, el('div.login', {},
    el('h1', {}, 'sesame'),
    el('p.hint', {}, 'A one-time login link: it logs this browser in as the user who ran ', el('code', {}, 'sesame web'), '. Use it only if that was you.'),
    now ? el('p.hint', {}, `This browser is logged in as ${now.user}; the link replaces that.`) : null,
    use, msg)));
  use.focus();
}

function showLogin(error) {
  const key = el('input', { type: 'password', name: 'key', autocomplete: 'off', placeholder: 'sk_…', required: true, 'aria-label': 'API key' });
  const msg = el('p.error', { role: 'alert' }, error);
  const form = el('form.login', {
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        me = await api('POST', '/v1/web/login', { key: key.value });
        key.value = '';
        go('/');
      } catch (err) { msg.textContent = err.message; }
    },
  },
  el('h1', {}, 'sesame'),
  el('p.hint', {}, 'Run ', el('code', {}, 'sesame web'), ' for a one-time login link, or paste an API key.'),
  key, el('button', { type: 'submit' }, 'Log in'), msg);
  main.replaceChildren(el('section.center', {}, form));
  key.focus();
}

// --- targets ---------------------------------------------------------------

async function targetsPage() {
  const search = el('input.search', { type: 'search', placeholder: 'Search by name or tag (site=lab)', 'aria-label': 'search' });
  const body = el('tbody');
  const table = el('table.targets', {}, el('thead', {}, el('tr', {}, el('th', {}, 'Target'), el('th', {}, 'State'), el('th', {}, 'Tags'), el('th', {}, 'Sessions'), el('th'))), body);
  main.replaceChildren(el('section', {}, el('div.toolbar', {}, search), table));
  let agents;
  try { agents = await api('GET', '/v1/agents'); } catch (e) { return fatal(e.message); }
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const shown = agents.filter((a) => !q || a.name.toLowerCase().includes(q)
      || Object.entries(a.tags).some(([k, v]) => `${k}=${v}`.toLowerCase().includes(q)));
    body.replaceChildren(...shown.map((a) => el('tr', { 'data-target': a.name },
      el('td.name', {}, a.name),
      el('td', {}, el(`span.state.${a.online ? 'online' : 'offline'}`, {}, a.online ? 'online' : 'offline')),
      el('td', {}, Object.entries(a.tags).map(([k, v]) => el('span.tag', {}, `${k}=${v}`))),
      el('td.num', {}, String(a.sessions)),
      el('td.go', {}, el('button.quiet', {
        type: 'button', disabled: !a.online, title: 'a shell as another account',
        onclick: () => chooseAccount(a.name, true),
      }, 'as…'), ' ', el('button', {
        type: 'button', disabled: !a.online,
        onclick: () => chooseAccount(a.name),
      }, 'Shell')))));
    if (!shown.length) body.append(el('tr', {}, el('td.empty', { colspan: 5 }, agents.length ? 'No target matches.' : 'No target you may use.')));
  };
  search.addEventListener('input', draw);
  draw();
}

/** A shell on `target`: at once as the only account the policies allow there,
 *  or as the one chosen among several (or typed). */
async function chooseAccount(target, always = false) {
  const open = (as) => go(`/t/${encodeURIComponent(target)}${as ? `?as=${encodeURIComponent(as)}` : ''}`);
  const here = location.pathname;
  let known;
  try { known = await api('GET', `/v1/agents/${encodeURIComponent(target)}/accounts`); } catch { known = { accounts: [] }; }
  if (location.pathname !== here) return;
  if (!always && known.accounts.length === 1) return open(known.accounts[0] === known.default ? '' : known.accounts[0]);
  if (!always && known.accounts.length === 0) return open('');
  const done = () => { modal.hidden = true; modal.replaceChildren(); };
  const other = el('input', { type: 'text', placeholder: 'another account', 'aria-label': 'another account', autocomplete: 'off' });
  modal.replaceChildren(el('div.dialog', { role: 'dialog', 'aria-label': 'choose an account' },
    el('h2', {}, `Shell on ${target} as`),
    el('div.choices', {}, known.accounts.map((a) => el('button', {
      type: 'button', 'data-account': a, onclick: () => { done(); open(a === known.default ? '' : a); },
    }, a === known.default ? `${a} (default)` : a))),
    el('form.actions', { onsubmit: (e) => { e.preventDefault(); if (other.value.trim()) { done(); open(other.value.trim()); } } },
      other, el('button.quiet', { type: 'submit' }, 'Open'), el('button.quiet', { type: 'button', onclick: done }, 'Cancel'))));
  modal.hidden = false;
  modal.onkeydown = (e) => { if (e.key === 'Escape') done(); };
  modal.querySelector('.choices button').focus();
}

// --- a shell -----------------------------------------------------------------

function terminal(host, opts = {}) {
  const term = new Terminal({
    allowProposedApi: true,
    cursorBlink: true,
    scrollback: 10000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    theme: { background: '#0d1117', foreground: '#e6edf3', cursor: '#58a6ff', selectionBackground: '#264f78' },
    ...opts,
  });
  const fit = new FitAddon();
  const search = new SearchAddon();
  const serialize = new SerializeAddon();
  term.loadAddon(fit);
  term.loadAddon(search);
  term.loadAddon(serialize);
  term.loadAddon(new UnicodeGraphemesAddon());
  term.unicode.activeVersion = '15-graphemes';
  // OSC 52 from the program: it may put text on the clipboard (vim, tmux), but
  // never read it (a hostile line of output would type the clipboard into the
  // shell). Synchronous, so the terminal's parser never waits on it.
  term.loadAddon(new ClipboardAddon(undefined, {
    readText: () => '',
    writeText: (where, text) => {
      if (where === 'c' || where === '') navigator.clipboard.writeText(text).catch(() => {});
    },
  }));
  // A read (`OSC 52 ; c ; ?`) gets no answer at all: the addon would answer with
  // an escape sequence typed into the shell. This handler, registered after the
  // addon's, runs first and swallows reads; writes go on to the addon.
  term.parser.registerOscHandler(52, (data) => data.split(';')[1] === '?');
  term.open(host);
  // WebGL draws faster; without it (no GPU, a lost context) the DOM renderer does.
  import('/assets/addon-webgl.mjs').then(({ WebglAddon }) => {
    try {
      const gl = new WebglAddon();
      gl.onContextLoss(() => gl.dispose());
      term.loadAddon(gl);
      host.dataset.renderer = 'webgl';
    } catch { host.dataset.renderer = 'dom'; }
  }).catch(() => { host.dataset.renderer = 'dom'; });
  return { term, fit, search, serialize };
}

function confirmPaste(text) {
  const lines = text.replace(/(\r\n|\r|\n)$/, '').split(/\r\n|\r|\n/);
  return new Promise((resolve) => {
    const done = (ok) => { modal.hidden = true; modal.replaceChildren(); resolve(ok); };
    const ok = el('button', { type: 'button', onclick: () => done(true) }, 'Paste');
    const cancel = el('button.quiet', { type: 'button', onclick: () => done(false) }, 'Cancel');
    modal.replaceChildren(el('div.dialog', { role: 'dialog', 'aria-label': 'confirm paste' },
      el('h2', {}, `Paste ${lines.length} lines?`),
      el('pre.preview', {}, lines.slice(0, 8).join('\n') + (lines.length > 8 ? '\n…' : '')),
      el('div.actions', {}, cancel, ok)));
    modal.hidden = false;
    modal.onkeydown = (e) => { if (e.key === 'Escape') done(false); };
    // An Enter typed on after the paste keys must not confirm it.
    cancel.focus();
  });
}

async function shellPage(target) {
  const account = new URLSearchParams(location.search).get('as') || '';
  const status = el('span.status', { role: 'status' });
  const end = el('button.danger', { type: 'button' }, 'End session');
  const findBox = el('input.find', { type: 'search', placeholder: 'Find (Enter: next)', hidden: true, 'aria-label': 'find' });
  const host = el('div.term');
  main.replaceChildren(el('section.shell', {},
    el('div.shellbar', {}, el('strong', {}, target), account ? el('span.muted', {}, ` as ${account}`) : null, status, el('span.spacer'), findBox, end),
    host));
  main.classList.add('full');
  const { term, fit, search, serialize } = terminal(host);
  fit.fit();
  const ui = {
    output: (bytes, done) => term.write(bytes, done),
    status: (text, kind) => { status.textContent = text; status.dataset.kind = kind; host.dataset.state = kind; },
    notice: (text) => term.write(`\r\n\x1b[2msesame: ${text.replace(/[\x00-\x1f\x7f]/g, '?')}\x1b[0m\r\n`),
    ended: (text) => { status.textContent = text; status.dataset.kind = 'over'; host.dataset.state = 'over'; end.disabled = true; },
    size: () => ({ cols: term.cols, rows: term.rows }),
  };
  const link = new ShellLink(target, account, ui);
  window.sesameShell = { term, link };
  term.onData((d) => link.type(d));
  term.onBinary((d) => link.type(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({ cols, rows }) => link.resize(cols, rows));
  const resized = new ResizeObserver(() => fit.fit());
  resized.observe(host);
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== 'keydown' || !e.ctrlKey || !e.shiftKey) return true;
    const k = e.key.toLowerCase();
    if (k === 'c') { const s = term.getSelection(); if (s) navigator.clipboard.writeText(s).catch(() => {}); return false; }
    if (k === 'v') { navigator.clipboard.readText().then((t) => paste(t)).catch(() => {}); return false; }
    if (k === 'f') { findBox.hidden = false; findBox.focus(); return false; }
    return true;
  });
  const paste = async (text) => {
    if (!text) return;
    if (/\r|\n/.test(text.replace(/[\r\n]+$/, '')) && !(await confirmPaste(text))) { term.focus(); return; }
    term.paste(text);
    term.focus();
  };
  // A paste from the menu or the keyboard: asked about first when it has lines.
  host.addEventListener('paste', (e) => {
    e.preventDefault();
    e.stopImmediatePropagation();
    paste(e.clipboardData.getData('text/plain'));
  }, true);
  findBox.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') search.findNext(findBox.value);
    if (e.key === 'Escape') { findBox.hidden = true; search.clearDecorations(); term.focus(); }
  });
  end.addEventListener('click', () => link.close());
  const save = () => {
    link.detach(serialize.serialize({ scrollback: 2000 }));
  };
  window.addEventListener('pagehide', save);
  leave = () => {
    window.removeEventListener('pagehide', save);
    resized.disconnect();
    if (!link.over) link.close();
    term.dispose();
    main.classList.remove('full');
  };
  const saved = link.saved();
  if (!saved && landed) {
    // Opened from a link (or typed): a shell starts only on a click here, so that
    // a link elsewhere cannot open one.
    const open = el('button', { type: 'button' }, `Open a shell on ${target}${account ? ` as ${account}` : ''}`);
    ui.status('', 'wait');
    host.append(el('div.confirm', {}, open));
    await new Promise((resolve) => open.addEventListener('click', resolve, { once: true }));
    host.querySelector('.confirm').remove();
  }
  if (saved) {
    // The same shell as before the reload: its screen, then what came since.
    if (saved.screen) term.write(saved.screen);
    if (saved.tail) term.write(b64.from(saved.tail));
  }
  try { await link.start(saved); } catch (e) { ui.ended(e.message); }
  term.focus();
}

// --- sessions ------------------------------------------------------------------

function when(t) { return t ? new Date(t * 1000).toLocaleString() : ''; }

async function sessionsPage() {
  const all = el('input', { type: 'checkbox', id: 'all' });
  const body = el('tbody');
  main.replaceChildren(el('section', {},
    el('div.toolbar', {}, el('h1', {}, 'Sessions'), el('span.spacer'), el('label', {}, all, ' everyone\'s')),
    el('table.sessions', {}, el('thead', {}, el('tr', {}, ...['Session', 'User', 'Target', 'Kind', 'Account', 'Started', 'State', ''].map((h) => el('th', {}, h)))), body)));
  const draw = async () => {
    let rows;
    try { rows = await api('GET', `/v1/sessions?limit=200${all.checked ? '&all=true' : ''}`); } catch (e) { return fatal(e.message); }
    body.replaceChildren(...rows.map((s) => el('tr', { 'data-session': s.id },
      el('td.mono', {}, s.id), el('td', {}, s.user), el('td', {}, s.target), el('td', {}, s.kind), el('td', {}, s.run_as),
      el('td', {}, when(s.started_at || s.created_at)),
      el('td', {}, s.live ? el('span.state.online', {}, 'live') : el('span.muted', {}, s.exit || 'ended')),
      el('td.actions', {},
        s.live && s.kind === 'shell' && s.recorded ? el('a.button', { href: `/watch/${s.id}` }, 'Watch') : null,
        s.live ? el('button.danger', { type: 'button', onclick: async () => {
          try { await api('POST', `/v1/sessions/${s.id}/terminate`, {}); } catch (e) { alertLine(e.message); }
          draw();
        } }, 'Terminate') : null,
        !s.live && s.recorded && s.kind === 'shell' ? el('a.button', { href: `/play/${s.id}` }, 'Play') : null))));
    if (!rows.length) body.append(el('tr', {}, el('td.empty', { colspan: 8 }, 'No sessions.')));
  };
  all.addEventListener('change', draw);
  await draw();
  const timer = setInterval(draw, 5000);
  leave = () => clearInterval(timer);
}

function alertLine(text) {
  main.prepend(el('p.error', { role: 'alert' }, text));
}

async function recordingsPage() {
  const body = el('tbody');
  main.replaceChildren(el('section', {}, el('div.toolbar', {}, el('h1', {}, 'Recordings')),
    el('table.sessions', {}, el('thead', {}, el('tr', {}, ...['Session', 'User', 'Target', 'Account', 'Started', 'Ended', ''].map((h) => el('th', {}, h)))), body)));
  let rows;
  try { rows = await api('GET', '/v1/sessions?limit=200&all=true'); } catch (e) { return fatal(e.message); }
  rows = rows.filter((s) => s.recorded && s.kind === 'shell');
  body.replaceChildren(...rows.map((s) => el('tr', { 'data-session': s.id },
    el('td.mono', {}, s.id), el('td', {}, s.user), el('td', {}, s.target), el('td', {}, s.run_as),
    el('td', {}, when(s.started_at || s.created_at)), el('td', {}, s.live ? 'live' : when(s.ended_at)),
    el('td.actions', {}, el('a.button', { href: `/play/${s.id}` }, 'Play')))));
  if (!rows.length) body.append(el('tr', {}, el('td.empty', { colspan: 7 }, 'No recordings you may play.')));
}

async function watchPage(id) {
  const status = el('span.status', { role: 'status' }, 'read-only');
  const host = el('div.term');
  main.replaceChildren(el('section.shell', {}, el('div.shellbar', {}, el('strong', {}, `Watching ${id}`), status), host));
  main.classList.add('full');
  const { term } = terminal(host, { disableStdin: true, cursorBlink: false });
  const ws = await watch(id, {
    resize: (cols, rows) => term.resize(cols, rows),
    output: (bytes) => term.write(bytes),
    ended: (text) => { status.textContent = text; host.dataset.state = 'over'; },
  });
  window.sesameShell = { term };
  leave = () => { ws.close(1000); term.dispose(); main.classList.remove('full'); };
}

function loadPlayer() {
  if (window.AsciinemaPlayer) return Promise.resolve();
  return new Promise((resolve, reject) => {
    if (!document.querySelector('link[href="/assets/asciinema-player.css"]')) {
      document.head.append(el('link', { rel: 'stylesheet', href: '/assets/asciinema-player.css' }));
    }
    document.head.append(el('script', { src: '/assets/asciinema-player.min.js', onload: resolve, onerror: reject }));
  });
}

async function playPage(id) {
  const host = el('div.player');
  const speeds = el('span.speeds', { role: 'group', 'aria-label': 'speed' });
  main.replaceChildren(el('section', {}, el('div.toolbar', {}, el('h1', {}, `Recording of ${id}`), el('span.spacer'), speeds), host));
  try {
    await loadPlayer();
    const r = await fetch(`/v1/sessions/${encodeURIComponent(id)}/recording`, { credentials: 'same-origin' });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `recording: ${r.status}`);
    const cast = await r.text();
    // The player's speed is set when it is made: a new one, at the same place.
    const play = async (speed, at = 0) => {
      window.sesamePlayer?.dispose();
      host.replaceChildren();
      const p = window.AsciinemaPlayer.create({ data: cast }, host, { controls: true, speed, idleTimeLimit: 2, fit: 'width', startAt: at });
      window.sesamePlayer = p;
      for (const b of speeds.children) b.classList.toggle('on', Number(b.dataset.speed) === speed);
      if (at) await p.play();
    };
    for (const speed of [0.5, 1, 2, 4]) {
      speeds.append(el('button.quiet', {
        type: 'button', 'data-speed': speed,
        onclick: async () => play(speed, await window.sesamePlayer.getCurrentTime()),
      }, `${speed}×`));
    }
    await play(1);
  } catch (e) { fatal(e.message); }
}

route();
