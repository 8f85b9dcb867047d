// The console in a real browser (Debian's Chromium, headless, driven by
// playwright-core): run by tests/tests/web.rs against a real relay and agent.
// Env: SESAME_LOGIN (a `sesame web` link), SESAME_TARGET, SESAME_HIDDEN (a
// target this user may not see), SESAME_ARTIFACTS (where screenshots go).
// Each step prints what it checked; the first failure exits non-zero.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import net from 'node:net';

const relay = new URL(process.env.SESAME_LOGIN);
const target = process.env.SESAME_TARGET;
const hidden = process.env.SESAME_HIDDEN || '';
const artifacts = process.env.SESAME_ARTIFACTS;
mkdirSync(artifacts, { recursive: true });

// The browser reaches the relay through this TCP proxy, so that the test can cut
// its network: every connection reset, new ones refused, for a while.
const sockets = new Set();
let down = false;
const proxy = net.createServer((c) => {
  if (down) { c.destroy(); return; }
  const u = net.connect(Number(relay.port), relay.hostname);
  for (const s of [c, u]) {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => { c.destroy(); u.destroy(); sockets.delete(s); });
  }
  c.pipe(u);
  u.pipe(c);
});
await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
const origin = `https://127.0.0.1:${proxy.address().port}`;
const login = `${origin}${relay.pathname}${relay.hash}`;
function cut(ms) {
  down = true;
  for (const s of sockets) s.destroy();
  setTimeout(() => { down = false; }, ms);
}

function check(ok, what) {
  if (!ok) throw new Error(`FAILED: ${what}`);
  console.log(`ok: ${what}`);
}

async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e.message; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`FAILED: timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

// Nothing here may hang the test run.
setTimeout(() => { console.log('FAILED: the browser checks took over 240 s'); process.exit(1); }, 240000).unref();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 760 } });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
// Every Content-Security-Policy violation, on every page of every tab.
const violations = [];
await context.exposeBinding('__cspReport', (_, v) => { violations.push(v); });
await context.addInitScript(() => {
  document.addEventListener('securitypolicyviolation', (e) => window.__cspReport(`${location.pathname}: ${e.violatedDirective} ${e.blockedURI}`));
});
const page = await context.newPage();
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => { if (m.type() === 'error') console.log(`  (console) ${m.text()}`); });

/** The terminal's lines, trimmed. */
const lines = () => page.evaluate(() => {
  const b = window.sesameShell.term.buffer.active;
  const out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out;
});
const live = () => page.waitForSelector('.term[data-state="live"]', { timeout: 20000 });
const type = async (text) => { await page.keyboard.type(text, { delay: 5 }); };

try {
  // Log in with the one-time link: the targets page, only what the policy allows.
  await page.goto(login);
  await page.click('button:has-text("Log in with this link")');
  await page.waitForSelector(`tr[data-target="${target}"]`);
  const shown = await page.$$eval('tr[data-target]', (rows) => rows.map((r) => r.dataset.target));
  check(shown.includes(target), `the targets page lists ${target}`);
  if (hidden) check(!shown.includes(hidden), `it does not list ${hidden}, which the policy hides (${shown.join(', ')})`);
  check(await page.$eval(`tr[data-target="${target}"] .state`, (e) => e.textContent) === 'online', `${target} shows online`);
  await page.fill('input.search', 'no-such-thing');
  check(await page.$$eval('tr[data-target]', (r) => r.length) === 0, 'search hides what does not match');
  await page.fill('input.search', '');
  await page.screenshot({ path: `${artifacts}/targets.png` });
  const cookies = await context.cookies();
  const cookie = cookies.find((c) => c.name === '__Host-sesame');
  check(cookie && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict' && cookie.expires > Date.now() / 1000,
    'the session cookie is HttpOnly, Secure, SameSite=Strict and expires');
  const reused = await page.evaluate(async () => (await fetch('/v1/web/me')).status);
  check(reused === 200, 'the cookie authenticates the API');

  // A shell: the accounts the policy allows here are offered; 6*7.
  await page.click(`tr[data-target="${target}"] button:text-is("Shell")`);
  await page.waitForSelector('[role="dialog"] .choices');
  const offered = await page.$$eval('[role="dialog"] .choices button', (b) => b.map((x) => x.dataset.account));
  check(offered.includes('sesame-user') && offered.includes('root') && !offered.includes('daemon'),
    `the accounts offered are those the policy allows (${offered.join(', ')}; not daemon)`);
  await page.click('[role="dialog"] button[data-account="sesame-user"]');
  await live();
  await type('echo $((6*7))\n');
  await until('42 in the terminal', async () => (await lines()).includes('42'));
  check(true, 'a shell in the page answers echo $((6*7)) with 42');

  // Resize follows the window.
  const termSize = () => page.evaluate(() => [window.sesameShell.term.rows, window.sesameShell.term.cols]);
  const before = await termSize();
  await page.setViewportSize({ width: 800, height: 500 });
  const size = await until('the terminal to fit the new window', async () => {
    const s = await termSize();
    return s[0] < before[0] && s[1] < before[1] ? s : null;
  });
  await type('stty size\n');
  await until(`stty size to say ${size.join(' ')}`, async () => (await lines()).includes(size.join(' ')));
  check(true, `stty size on the target follows the window (${size.join(' ')})`);

  // Ctrl-C reaches the program.
  await type('sleep 100\n');
  await page.waitForTimeout(500);
  await page.keyboard.press('Control+c');
  await type('echo after$((1+1))\n');
  await until('the prompt back after Ctrl-C', async () => (await lines()).includes('after2'), 5000);
  check(true, 'Ctrl-C interrupts sleep 100');

  // Wide characters take two cells each: the bar is in column 6.
  await type("printf '\\346\\274\\242\\345\\255\\227\\360\\237\\231\\202|\\n'\n");
  const col = await until('the wide characters', () => page.evaluate(() => {
    const b = window.sesameShell.term.buffer.active;
    for (let i = 0; i < b.length; i++) {
      const l = b.getLine(i);
      if (l.translateToString(true).startsWith('漢字')) {
        for (let x = 0; x < l.length; x++) if (l.getCell(x).getChars() === '|') return { x, text: l.translateToString(true) };
      }
    }
    return null;
  }));
  check(col.x === 6, `'漢字🙂|': the bar is in column 6 (${col.x}: ${col.text})`);

  // A multi-line paste is confirmed first, then arrives intact.
  await page.evaluate(() => navigator.clipboard.writeText('echo one$((0+1))\necho two$((1+1))\n'));
  await page.keyboard.press('Control+Shift+V');
  await page.waitForSelector('[role="dialog"]');
  check((await page.textContent('[role="dialog"] h2')).includes('2 lines'), 'a multi-line paste asks first');
  await page.click('[role="dialog"] button:has-text("Paste")');
  // bash takes a bracketed paste into its line whole, to run on Enter.
  await page.waitForTimeout(300);
  await page.keyboard.press('Enter');
  await until('both pasted lines to run', async () => { const l = await lines(); return l.includes('one1') && l.includes('two2'); });
  check(true, 'the paste arrives intact after confirmation');
  // OSC 52: the program may write the clipboard, never read it.
  await type("printf '\\033]52;c;%s\\a' $(printf from-remote | base64)\n");
  await until('the clipboard written by the program', () => page.evaluate(() => navigator.clipboard.readText().then((t) => t === 'from-remote')));
  check(true, 'a program can put text on the clipboard (OSC 52)');
  await page.evaluate(() => navigator.clipboard.writeText('SECRET-IN-CLIPBOARD'));
  await type("printf '\\033]52;c;?\\a'; echo osc$((1+1))\n");
  await until('the line after the read', async () => (await lines()).includes('osc2'));
  await page.waitForTimeout(500);
  const typedBack = (await lines()).filter((l) => l.includes('52;') && !l.includes('printf') || l.includes('U0VDUkVU'));
  check(typedBack.length === 0, `a program cannot read the clipboard: nothing is typed back (${typedBack.join(' | ')})`);
  await page.screenshot({ path: `${artifacts}/shell.png` });
  console.log(`  (the terminal draws with ${await page.getAttribute('.term', 'data-renderer')})`);

  // Search the scrollback.
  await page.keyboard.press('Control+Shift+F');
  await page.fill('input.find', 'after2');
  await page.press('input.find', 'Enter');
  check(await page.evaluate(() => window.sesameShell.term.getSelection()) === 'after2', 'Ctrl+Shift+F finds text in the scrollback');
  await page.press('input.find', 'Escape');

  // Reload mid-session: the same shell, its output intact, nothing twice.
  await type('export MARK=same$((2+3))\n');
  await type('for i in 1 2 3; do echo line$i; sleep 0.3; done\n');
  await page.waitForTimeout(400);
  const pid = await page.evaluate(() => window.sesameShell.link.id);
  await page.reload();
  await live();
  check(await page.evaluate(() => window.sesameShell.link.id) === pid, 'after a reload the page has the same session');
  await until('the loop to finish', async () => (await lines()).includes('line3'));
  await type('echo $MARK\n');
  await until('the shell to know MARK', async () => (await lines()).includes('same5'));
  const after = await lines();
  const count = (s) => after.filter((l) => l === s).length;
  check(count('42') === 1 && count('line1') === 1 && count('line2') === 1 && count('line3') === 1,
    `the output before and across the reload is there once (42: ${count('42')}, line1-3: ${count('line1')} ${count('line2')} ${count('line3')})`);
  check(true, 'the same shell goes on after a reload (it knows MARK)');

  // The network goes for 3 s mid-output, and something is typed meanwhile.
  await type('for i in 1 2 3 4 5; do echo net$i; sleep 0.4; done\n');
  await until('the loop to start', async () => (await lines()).includes('net1'));
  cut(3000);
  await page.waitForSelector('.term[data-state="wait"]', { timeout: 10000 });
  check((await page.textContent('.status')).includes('reconnecting'), 'the page says it is reconnecting');
  await type('echo typed$((4+4))\n');
  await live();
  await until('the loop and the typed line', async () => { const l = await lines(); return l.includes('net5') && l.includes('typed8'); }, 20000);
  const net = await lines();
  const once = (x) => net.filter((l) => l === x).length === 1;
  check(['net1', 'net2', 'net3', 'net4', 'net5', 'typed8'].every(once),
    'after a network cut the shell goes on: its output once each, what was typed meanwhile run once');

  // Someone watches read-only, in another tab; then the session is ended from the page.
  const id = await page.evaluate(() => window.sesameShell.link.id);
  const watcher = await context.newPage();
  watcher.on('pageerror', (e) => problems.push(`watch page error: ${e.message}`));
  await watcher.goto(`${origin}/watch/${id}`);
  await watcher.waitForFunction(() => window.sesameShell?.term);
  await type('echo watched$((3*3))\n');
  await until('the watcher to see it', () => watcher.evaluate(() => {
    const b = window.sesameShell.term.buffer.active;
    for (let i = 0; i < b.length; i++) if (b.getLine(i).translateToString(true) === 'watched9') return true;
    return false;
  }));
  check(true, 'a read-only watch in another tab sees the shell live');
  await watcher.screenshot({ path: `${artifacts}/watch.png` });

  await page.goto(`${origin}/sessions`);
  await page.waitForSelector(`tr[data-session="${id}"] button.danger`);
  await page.click(`tr[data-session="${id}"] button.danger`);
  await until('the session to be over', async () => (await page.textContent(`tr[data-session="${id}"]`)).includes('terminated'));
  check(true, 'Terminate on the sessions page ends the session');
  await until('the watcher to hear the end', () => watcher.evaluate(() => document.querySelector('.term').dataset.state === 'over'));
  check(true, 'the watch ends with the session');
  await watcher.close();

  // Its recording plays in the page, with seek.
  await page.goto(`${origin}/play/${id}`);
  await page.waitForSelector('.ap-player', { timeout: 15000 });
  await page.evaluate(() => window.sesamePlayer.seek(1e6));
  const screen = await until('the player to show the shell', () => page.evaluate(() => document.querySelector('.ap-player').textContent.includes('watched9')));
  check(screen, 'the recording plays in the page (seeked to its end, it shows watched9)');
  await page.click('button[data-speed="2"]');
  await until('the player at twice the speed', () => page.evaluate(() => document.querySelector('button[data-speed="2"]').classList.contains('on') && !!document.querySelector('.ap-player')));
  check(true, 'its speed can be changed (2×)');
  await page.screenshot({ path: `${artifacts}/player.png` });

  check(violations.length === 0, `no Content-Security-Policy violation on any page so far (${violations.join('; ')})`);
  check(problems.length === 0, `no page error (${problems.join('; ')})`);

  // A request with a foreign Origin is refused, cookie or not.
  const foreign = await context.request.post(`${origin}/v1/sessions`, {
    headers: { origin: 'https://evil.example' },
    data: { target, kind: 'shell' },
  });
  check(foreign.status() === 403, `a request from a foreign Origin is refused (${foreign.status()})`);

  // A shell left open in a tab, then log out: the cookie opens nothing any more,
  // and the shell it opened ends.
  const shellTab = await context.newPage();
  await shellTab.goto(`${origin}/`);
  await shellTab.click(`tr[data-target="${target}"] button:text-is("Shell")`);
  await shellTab.click('[role="dialog"] button[data-account="root"]');
  await shellTab.waitForSelector('.term[data-state="live"]', { timeout: 20000 });
  await shellTab.keyboard.type('id -un\n');
  await until('id -un in the other tab', () => shellTab.evaluate(() => {
    const b = window.sesameShell.term.buffer.active;
    for (let i = 0; i < b.length; i++) if (b.getLine(i).translateToString(true) === 'root') return true;
    return false;
  }));
  check(true, 'a shell opened as the account chosen (root) runs as root');
  const left = await shellTab.evaluate(() => window.sesameShell.link.id);
  const old = (await context.cookies()).find((c) => c.name === '__Host-sesame').value;
  await page.click('#logout');
  await page.waitForURL('**/login');
  const stale = await context.request.get(`${origin}/v1/web/me`, { headers: { cookie: `__Host-sesame=${old}` } });
  check(stale.status() === 401, `after logout the old cookie is refused (${stale.status()})`);
  await shellTab.waitForSelector('.term[data-state="over"]', { timeout: 10000 });
  check((await shellTab.textContent('.status')).includes('logged out'), `the shell open in another tab ended with the logout (${await shellTab.textContent('.status')})`);

  // Logging in with an API key pasted works too.
  await page.fill('input[name="key"]', process.env.SESAME_KEY);
  await page.click('button[type="submit"]');
  await page.waitForSelector(`tr[data-target="${target}"]`);
  await page.goto(`${origin}/sessions`);
  await page.waitForSelector(`tr[data-session="${left}"]`);
  check((await page.textContent(`tr[data-session="${left}"]`)).includes('logged out'), 'a pasted API key logs in; the sessions page shows that shell ended by the logout');
  check(violations.length === 0, `no Content-Security-Policy violation on any page (${violations.join('; ')})`);

  // Without WebGL the DOM renderer draws: the one that makes <style> elements,
  // so the strict policy matters most here.
  const plain = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-webgl', '--disable-3d-apis'],
  });
  const ctx2 = await plain.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 600 } });
  const seen2 = [];
  await ctx2.exposeBinding('__cspReport', (_, v) => { seen2.push(v); });
  await ctx2.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => window.__cspReport(`${location.pathname}: ${e.violatedDirective} ${e.blockedURI}`));
  });
  const p2 = await ctx2.newPage();
  await p2.goto(`${origin}/login`);
  await p2.fill('input[name="key"]', process.env.SESAME_KEY);
  await p2.click('button[type="submit"]');
  await p2.click(`tr[data-target="${target}"] button:text-is("Shell")`);
  await p2.click('[role="dialog"] button[data-account="sesame-user"]');
  await p2.waitForSelector('.term[data-state="live"]', { timeout: 20000 });
  await p2.keyboard.type('echo dom$((20+1))\n', { delay: 5 });
  await until('output drawn by the DOM renderer', () => p2.evaluate(() => document.querySelector('.xterm-rows')?.textContent.includes('dom21')));
  const renderer = await p2.getAttribute('.term', 'data-renderer');
  check(renderer === 'dom', `without WebGL the terminal draws with the DOM renderer (${renderer}), and its text shows`);
  await p2.screenshot({ path: `${artifacts}/shell-dom.png` });
  check(seen2.length === 0, `no Content-Security-Policy violation with the DOM renderer (${seen2.slice(0, 3).join('; ')})`);
  await plain.close();
  console.log('all browser checks passed');
} catch (e) {
  console.log(e.message);
  await page.screenshot({ path: `${artifacts}/failure.png` }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
// The proxy's server would keep node running.
process.exit(0);
