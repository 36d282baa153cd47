// Drives the live page in Debian's Chromium (playwright-core, never a downloaded browser) and
// reports what it saw as one JSON line for tests/e2e/tests/browser.rs, which checks it against
// the NATS stream.
//
//   node tests/browser/page.mjs --url http://127.0.0.1:3000/ --out target/artifacts \
//       [--auth-url http://127.0.0.1:3001/ --api-key KEY]
//
// Phases (each waits with a deadline and fails naming what it waited for):
//   1. the page connects over WebSocket and at least 3 games show new results;
//   2. switch to SSE, then to WebTransport (by clicking), rounds arrive on each;
//      over WebTransport both as datagrams and on the stream;
//   3. prints `PHASE restart-gateway` and waits for a line on stdin: the harness restarts the
//      gateway meanwhile; the page reconnects (backoff) and resumes by cursor;
//   4. screenshots (desktop and phone widths);
//   5. with --auth-url: the page asks for a key on 401, refuses a wrong one, works with the
//      right one over WebSocket, SSE and WebTransport.
// The last line is `RESULT {...}`; the exit status is 0 only if every phase passed.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    out: { type: 'string', default: 'target/artifacts' },
    'auth-url': { type: 'string' },
    'api-key': { type: 'string' },
    'no-restart': { type: 'boolean', default: false },
  },
});
if (!args.url) throw new Error('--url is required');

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const started = Date.now();
const result = { phases: [], console: [] };
const log = (message) => console.error(`[page.mjs +${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
const profile = mkdtempSync(join(tmpdir(), 'datastream-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: FLAGS,
  viewport: { width: 1440, height: 1000 },
});

// ------------------------------------------------------------------------------------------

async function newPage(url) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') result.console.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (err) => result.console.push(`pageerror: ${err.message}`));
  await page.goto(url);
  return page;
}

const state = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.__datastream)));

/** Polls the page's state until `check(state)` is truthy. */
async function until(page, what, check, seconds = 20) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  for (;;) {
    last = await state(page);
    const value = check(last);
    if (value) return last;
    if (Date.now() > deadline) {
      const brief = {
        protocol: last.protocol,
        states: last.states,
        byProtocol: last.byProtocol,
        wt: last.wt,
        errors: last.errors.slice(-5),
        auth: last.auth,
      };
      throw new Error(`timed out after ${seconds}s waiting for ${what}; page state: ${JSON.stringify(brief)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The round id each game card shows. */
const shownRounds = (page) =>
  page.$$eval('.game', (cards) =>
    Object.fromEntries(cards.map((c) => [c.dataset.slug, c.querySelector('.round')?.textContent ?? ''])));

async function phase(name, body) {
  const t0 = Date.now();
  log(`${name}…`);
  const details = await body();
  result.phases.push({ name, seconds: (Date.now() - t0) / 1000, ...details });
}

async function switchTo(page, protocol) {
  const before = (await state(page)).byProtocol[protocol] ?? 0;
  await page.click(`#protocols button[data-protocol="${protocol}"]`);
  const after = await until(page, `rounds over ${protocol}`, (s) =>
    s.requested === protocol &&
    s.allOpen &&
    Object.values(s.protocols).every((p) => p === protocol) &&
    (s.byProtocol[protocol] ?? 0) >= before + 5);
  return { delivered: after.byProtocol[protocol] - before };
}

async function livePage() {
  const url = new URL(args.url);
  url.searchParams.set('protocol', 'websocket');
  const page = await newPage(url.href);

  await phase('websocket: live results for at least 3 games', async () => {
    await until(page, 'every stream open over WebSocket', (s) =>
      s.ready && s.allOpen && s.protocol === 'websocket');
    const first = await shownRounds(page);
    let changed = [];
    const deadline = Date.now() + 20_000;
    while (changed.length < 3) {
      if (Date.now() > deadline) throw new Error(`only ${changed.length} games showed a new round`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      const now = await shownRounds(page);
      changed = Object.keys(now).filter((slug) => now[slug] && now[slug] !== first[slug]);
    }
    const rendered = await page.$$eval('.game:not(.empty) .result:not(.waiting)', (r) => r.length);
    return { gamesUpdated: changed.length, cardsWithResults: rendered };
  });

  await phase('switch to SSE', () => switchTo(page, 'sse'));
  await phase('switch to WebTransport', async () => {
    const before = (await state(page)).wt;
    const details = await switchTo(page, 'webtransport');
    const after = await until(page, 'WebTransport datagrams and stream events', (s) =>
      s.wt.datagrams > before.datagrams && s.wt.stream > before.stream);
    return { ...details, datagrams: after.wt.datagrams, streamEvents: after.wt.stream };
  });

  if (!args['no-restart']) {
    await phase('gateway restart: reconnect and resume', async () => {
      const before = await state(page);
      console.log('PHASE restart-gateway');
      const answer = await lines.next();
      if (answer.done || answer.value.trim() !== 'restarted') throw new Error('the harness did not restart the gateway');
      const after = await until(page, 'rounds after the gateway restart', (s) =>
        s.allOpen &&
        s.reconnects > before.reconnects &&
        s.byProtocol.webtransport >= before.byProtocol.webtransport + 5, 30);
      return { reconnects: after.reconnects - before.reconnects };
    });
  }

  await phase('screenshots', async () => {
    mkdirSync(args.out, { recursive: true });
    await page.screenshot({ path: join(args.out, 'page.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: join(args.out, 'page-phone.png'), fullPage: true });
    await page.setViewportSize({ width: 1440, height: 1000 });
    return { files: ['page.png', 'page-phone.png'] };
  });

  const final = await state(page);
  result.live = {
    seqs: final.seqs,
    delivered: final.delivered,
    byProtocol: final.byProtocol,
    duplicates: final.duplicates,
    shownTwice: final.shownTwice,
    resets: final.resets,
    reconnects: final.reconnects,
    wt: final.wt,
    gamesWithResults: final.gamesWithResults,
    latency: final.latency,
    errors: final.errors,
  };
  await page.close();
}

async function authPage() {
  const url = new URL(args['auth-url']);
  url.searchParams.set('protocol', 'websocket');
  const page = await newPage(url.href);
  const banner = () => page.$eval('#banner', (b) => (b.hidden ? '' : b.textContent));

  await phase('auth: the page asks for a key', async () => {
    await until(page, 'the key prompt', (s) => s.auth === 'required');
    if (!(await page.isVisible('#key-form'))) throw new Error('the key form is hidden');
    const text = await banner();
    if (!text.includes('401')) throw new Error(`banner without 401: ${text}`);
    return { banner: text };
  });

  await phase('auth: a wrong key is refused', async () => {
    await page.fill('#key-input', 'sk_wrong_key_for_the_test');
    await page.click('#key-form button[type="submit"]');
    await until(page, 'the rejection', (s) => s.auth === 'rejected');
    return { banner: await banner() };
  });

  await phase('auth: the right key works over every protocol', async () => {
    await page.fill('#key-input', args['api-key']);
    await page.click('#key-form button[type="submit"]');
    const open = await until(page, 'rounds with the key over WebSocket', (s) =>
      s.auth === 'ok' && s.allOpen && s.protocol === 'websocket' && s.byProtocol.websocket >= 5);
    const stored = await page.evaluate(() => sessionStorage.getItem('datastream.apiKey'));
    if (stored !== args['api-key']) throw new Error('the key is not kept in sessionStorage');
    const sse = await switchTo(page, 'sse');
    const wt = await switchTo(page, 'webtransport');
    if ((await banner()) !== '') throw new Error(`banner still shown: ${await banner()}`);
    return { websocket: open.byProtocol.websocket, sse: sse.delivered, webtransport: wt.delivered };
  });

  const final = await state(page);
  result.auth = { seqs: final.seqs, duplicates: final.duplicates, shownTwice: final.shownTwice };
  await page.screenshot({ path: join(args.out, 'page-auth.png') });
  await page.close();
}

// ------------------------------------------------------------------------------------------

try {
  await livePage();
  if (args['auth-url']) await authPage();
  result.ok = true;
} catch (err) {
  result.ok = false;
  result.error = String(err?.stack ?? err);
  log(`FAILED: ${err?.message ?? err}`);
} finally {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  stdin.close();
}
result.seconds = (Date.now() - started) / 1000;
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(result.ok ? 0 : 1);
