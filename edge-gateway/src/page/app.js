// The live page: every game with its latest results, kept current over WebTransport, WebSocket
// or SSE through datastream.js, with per-protocol latency and the connection's state.
//
// One Datastream per game type (a handful of connections for all games). At start the page
// reads the catalog and each game's latest round over REST, then subscribes from a little
// before the newest of those (`since`), so every card shows recent history at once and nothing
// committed between the REST calls and the subscriptions is missed.
//
// `window.__datastream` exposes the page's state for tests and the curious.

import { Datastream, PROTOCOLS, supports } from '/datastream.js';

const KEY_STORAGE = 'datastream.apiKey';
const PROTOCOL_STORAGE = 'datastream.protocol';
const BACKFILL = 120; // stream events replayed at start, over all games
const HISTORY = 16; // results kept per game
const FEED = 40; // rows in the live feed
const SAMPLES = 2000; // latency samples kept per protocol
const SEQ_LOG = 20000; // delivered seqs kept per type in the debug state
const NAMES = { webtransport: 'WebTransport', websocket: 'WebSocket', sse: 'SSE' };
const SHORT = { webtransport: 'WT', websocket: 'WS', sse: 'SSE' };
const FEATURED = ['crash', 'double', 'slot', 'dice', 'plinko', 'wall-street'];

const params = new URLSearchParams(location.search);
const $ = (selector) => document.querySelector(selector);

const debug = {
  ready: false,
  requested: 'auto',
  protocol: null,
  protocols: {},
  states: {},
  allOpen: false,
  delivered: 0,
  byProtocol: {},
  duplicates: 0,
  shownTwice: 0,
  resets: 0,
  reconnects: 0,
  gamesWithResults: 0,
  games: {},
  seqs: {},
  wt: { datagrams: 0, stream: 0 },
  latency: {},
  errors: [],
  auth: 'unknown',
};
window.__datastream = debug;

const page = {
  apiKey: sessionStorage.getItem(KEY_STORAGE) || '',
  requested: pickProtocol(),
  games: new Map(), // slug → card model
  streams: new Map(), // type → Datastream
  samples: Object.fromEntries(PROTOCOLS.map((p) => [p, []])),
  last: Object.fromEntries(PROTOCOLS.map((p) => [p, null])),
  received: [], // arrival times of live rounds, for the rate
  total: 0,
  dirty: new Set(),
  feedRows: [],
  frame: 0,
};

function pickProtocol() {
  const wanted = params.get('protocol') || localStorage.getItem(PROTOCOL_STORAGE) || 'auto';
  return wanted === 'auto' || (PROTOCOLS.includes(wanted) && supports(wanted)) ? wanted : 'auto';
}

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'style') el.style.cssText = value;
    else el.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Trusted, constant SVG markup (never data from the network). */
function svg(markup, cls = 'icon') {
  const span = h('span', { class: cls, 'aria-hidden': 'true' });
  span.innerHTML = markup;
  return span;
}

const SYMBOLS = {
  cherry:
    '<svg viewBox="0 0 32 32"><path d="M16 5c-2 6-6 9-8 13M16 5c1 6 4 10 8 13" stroke="#4ade80" stroke-width="2.2" fill="none" stroke-linecap="round"/><path d="M16 5c3-1 6 0 8 2" stroke="#4ade80" stroke-width="2.2" fill="none" stroke-linecap="round"/><circle cx="9" cy="22" r="6" fill="#f43f5e"/><circle cx="23" cy="22" r="6" fill="#e11d48"/><circle cx="7" cy="20" r="1.6" fill="#fff" opacity=".6"/><circle cx="21" cy="20" r="1.6" fill="#fff" opacity=".6"/></svg>',
  lemon:
    '<svg viewBox="0 0 32 32"><ellipse cx="16" cy="17" rx="12" ry="9" transform="rotate(-25 16 17)" fill="#facc15"/><ellipse cx="12" cy="14" rx="3" ry="1.6" transform="rotate(-25 12 14)" fill="#fff" opacity=".45"/></svg>',
  orange:
    '<svg viewBox="0 0 32 32"><circle cx="16" cy="18" r="11" fill="#fb923c"/><path d="M16 7c2-3 6-3 8-2-2 3-5 3-8 2z" fill="#4ade80"/><circle cx="12" cy="14" r="2.2" fill="#fff" opacity=".35"/></svg>',
  bell:
    '<svg viewBox="0 0 32 32"><path d="M16 4c-6 0-9 5-9 11v5l-3 4h24l-3-4v-5c0-6-3-11-9-11z" fill="#fbbf24"/><circle cx="16" cy="26.5" r="3" fill="#f59e0b"/><path d="M11 12c1-3 3-4 5-4" stroke="#fff" stroke-width="2" opacity=".5" fill="none" stroke-linecap="round"/></svg>',
  seven:
    '<svg viewBox="0 0 32 32"><path d="M7 6h18l-9 21h-6l8-16H7z" fill="#ef4444"/><path d="M7 6h18l-1.5 3.5H7z" fill="#fca5a5" opacity=".5"/></svg>',
  dragon:
    '<svg viewBox="0 0 32 32"><path d="M16 3c2 5 9 7 9 15a9 9 0 0 1-18 0c0-4 2-6 4-8 0 3 1 5 3 5-1-5 0-9 2-12z" fill="#10b981"/><path d="M16 14c1 3 4 4 4 8a4 4 0 0 1-8 0c0-2 1-3 2-4 0 1 1 2 2 2 0-2-1-4 0-6z" fill="#a7f3d0"/></svg>',
};

const ARROW_UP =
  '<svg viewBox="0 0 24 24"><path d="M12 4l8 10h-5v6H9v-6H4z" fill="currentColor"/></svg>';
const ARROW_DOWN =
  '<svg viewBox="0 0 24 24"><path d="M12 20l8-10h-5V4H9v6H4z" fill="currentColor"/></svg>';

// ---------------------------------------------------------------- results, per kind of game

function kindOf(extras) {
  if (Array.isArray(extras.reels)) return 'slot';
  if (extras.point != null) return 'crash';
  if (extras.color != null) return 'double';
  if (Array.isArray(extras.dice)) return 'dice';
  if (extras.slot != null && extras.multiplier != null) return 'plinko';
  if (extras.trending != null) return 'trend';
  return 'other';
}

function multiplierTier(value) {
  if (!(value >= 1.5)) return 'low';
  if (value < 2) return 'mid';
  if (value < 10) return 'good';
  if (value < 100) return 'great';
  return 'epic';
}

function fmtMultiplier(raw) {
  const n = Number(raw);
  return Number.isFinite(n) ? `${n.toFixed(2)}×` : String(raw);
}

const PIPS = {
  1: [5],
  2: [1, 9],
  3: [1, 5, 9],
  4: [1, 3, 7, 9],
  5: [1, 3, 5, 7, 9],
  6: [1, 3, 4, 6, 7, 9],
};

function die(value) {
  const face = h('span', { class: 'die', 'aria-label': `die ${value}` });
  for (let cell = 1; cell <= 9; cell += 1) {
    face.append(h('i', { class: (PIPS[value] ?? []).includes(cell) ? 'pip' : '' }));
  }
  return face;
}

/** The big result of a round. */
function renderResult(round, extras, model) {
  switch (kindOf(extras)) {
    case 'crash': {
      const value = Number(extras.point);
      return h('div', { class: `result crash tier-${multiplierTier(value)}` },
        h('span', { class: 'big' }, fmtMultiplier(extras.point)),
        h('span', { class: 'caption' }, value <= 1 ? 'instant crash' : 'crash point'));
    }
    case 'slot': {
      const win = Number(extras.multiplier) > 0;
      return h('div', { class: `result slot ${win ? 'win' : ''}` },
        h('div', { class: 'reels' }, extras.reels.map((name) =>
          h('span', { class: 'reel', title: String(name) },
            SYMBOLS[name] ? svg(SYMBOLS[name], 'symbol') : h('b', {}, String(name).slice(0, 3))))),
        h('span', { class: 'caption' }, win ? `win ${fmtMultiplier(extras.multiplier)}` : 'no win'));
    }
    case 'double': {
      const color = String(extras.color);
      return h('div', { class: 'result double' },
        h('span', { class: `tile color-${color}` }, String(extras.number ?? '')),
        h('span', { class: 'caption' }, color));
    }
    case 'dice': {
      const sum = extras.sum ?? extras.dice.reduce((a, b) => a + Number(b), 0);
      return h('div', { class: 'result dice' },
        h('div', { class: 'dice-row' }, extras.dice.map((d) => die(Number(d))),
          h('span', { class: 'sum' }, `= ${sum}`)));
    }
    case 'plinko': {
      const buckets = Number(extras.rows) + 1 || 9;
      const middle = (buckets - 1) / 2;
      const row = h('div', { class: 'buckets' });
      for (let i = 0; i < buckets; i += 1) {
        const heat = Math.abs(i - middle) / middle;
        row.append(h('span', {
          class: i === Number(extras.slot) ? 'bucket hit' : 'bucket',
          style: `--heat:${heat.toFixed(2)}`,
        }));
      }
      return h('div', { class: 'result plinko' },
        h('span', { class: `big tier-${multiplierTier(Number(extras.multiplier))}` },
          fmtMultiplier(extras.multiplier)),
        row);
    }
    case 'trend': {
      const up = String(extras.trending) === 'up';
      return h('div', { class: `result trend ${up ? 'up' : 'down'}` },
        h('div', { class: 'trend-row' },
          svg(up ? ARROW_UP : ARROW_DOWN, 'arrow'),
          h('span', { class: 'big' }, up ? 'UP' : 'DOWN')),
        trendLine(model));
    }
    default:
      return h('div', { class: 'result other' }, h('code', {}, JSON.stringify(extras)));
  }
}

/** A small chip for a past result. */
function renderChip(round, extras) {
  switch (kindOf(extras)) {
    case 'crash':
      return h('li', { class: `chip tier-${multiplierTier(Number(extras.point))}` },
        fmtMultiplier(extras.point));
    case 'slot':
      return h('li', { class: Number(extras.multiplier) > 0 ? 'chip tier-good' : 'chip tier-low' },
        Number(extras.multiplier) > 0 ? fmtMultiplier(extras.multiplier) : '—');
    case 'double':
      return h('li', { class: `chip square color-${extras.color}` }, String(extras.number ?? ''));
    case 'dice':
      return h('li', { class: 'chip' },
        String(extras.sum ?? extras.dice.reduce((a, b) => a + Number(b), 0)));
    case 'plinko':
      return h('li', { class: `chip tier-${multiplierTier(Number(extras.multiplier))}` },
        fmtMultiplier(extras.multiplier));
    case 'trend':
      return h('li', { class: `chip arrow-chip ${extras.trending === 'up' ? 'up' : 'down'}` },
        svg(extras.trending === 'up' ? ARROW_UP : ARROW_DOWN, 'arrow'));
    default:
      return h('li', { class: 'chip' }, `#${round.round_id}`);
  }
}

/** A one-line summary for the feed. */
function summary(extras) {
  switch (kindOf(extras)) {
    case 'crash':
      return fmtMultiplier(extras.point);
    case 'slot':
      return `${extras.reels.join(' · ')}${Number(extras.multiplier) > 0 ? ` → ${fmtMultiplier(extras.multiplier)}` : ''}`;
    case 'double':
      return `${extras.color} ${extras.number ?? ''}`;
    case 'dice':
      return `${extras.dice.join(' + ')} = ${extras.sum ?? ''}`;
    case 'plinko':
      return `slot ${extras.slot} → ${fmtMultiplier(extras.multiplier)}`;
    case 'trend':
      return extras.trending === 'up' ? 'trending up' : 'trending down';
    default:
      return JSON.stringify(extras);
  }
}

function trendLine(model) {
  const steps = model.history.slice().reverse().map((r) => (r.extras.trending === 'up' ? 1 : -1));
  let level = 0;
  const points = [0, ...steps.map((s) => (level += s))];
  const min = Math.min(...points);
  const max = Math.max(...points);
  const span = Math.max(1, max - min);
  const w = 120;
  const hgt = 28;
  const coords = points
    .map((p, i) => `${((i / Math.max(1, points.length - 1)) * w).toFixed(1)},${(hgt - 2 - ((p - min) / span) * (hgt - 4)).toFixed(1)}`)
    .join(' ');
  return svg(
    `<svg viewBox="0 0 ${w} ${hgt}" preserveAspectRatio="none"><polyline points="${coords}" fill="none" stroke="currentColor" stroke-width="2" vector-effect="non-scaling-stroke" stroke-linejoin="round"/></svg>`,
    'trendline',
  );
}

// ---------------------------------------------------------------- game cards

function gameOrder(a, b) {
  const rank = (slug) => {
    const i = FEATURED.indexOf(slug);
    return i < 0 ? FEATURED.length : i;
  };
  return rank(a.slug) - rank(b.slug) || a.name.localeCompare(b.name);
}

function addGame(game) {
  if (page.games.has(game.slug)) return page.games.get(game.slug);
  const el = h('article', { class: 'game empty', 'data-slug': game.slug },
    h('header', {},
      h('h3', {}, game.name || game.slug),
      h('span', { class: 'type' }, game.type)),
    h('div', { class: 'body' }, h('div', { class: 'result waiting' }, h('span', { class: 'caption' }, 'waiting for a round…'))),
    h('footer', {},
      h('span', { class: 'round' }, ''),
      h('span', { class: 'ago' }, '')),
    h('ol', { class: 'history', 'aria-label': 'previous results' }));
  const model = { game, el, latest: null, history: [], count: 0, seqs: new Map(), flashAt: 0 };
  page.games.set(game.slug, model);
  return model;
}

function placeCards() {
  const grid = $('#games');
  const models = [...page.games.values()].sort((a, b) => gameOrder(a.game, b.game));
  grid.replaceChildren(...models.map((m) => m.el));
}

function applyRound(round, extras, fresh) {
  let model = page.games.get(round.game_slug);
  if (!model) {
    model = addGame({ slug: round.game_slug, name: round.game_slug, type: round.game_type });
    placeCards();
  }
  const known = model.seqs.get(round.seq);
  if (known) {
    // The REST latest comes again from the stream's backfill: expected, shown once. The same
    // round twice from the stream would be a bug the test looks for.
    if (fresh && known.fromStream) debug.shownTwice += 1;
    known.fromStream ||= fresh;
    return;
  }
  const entry = { round, extras, fromStream: fresh };
  model.seqs.set(round.seq, entry);
  model.history.push(entry);
  model.history.sort((a, b) => b.round.seq - a.round.seq);
  for (const dropped of model.history.splice(HISTORY)) model.seqs.delete(dropped.round.seq);
  if (!model.latest || round.seq > model.latest.round.seq) {
    model.latest = entry;
    model.flashAt = fresh ? performance.now() : 0;
  }
  model.count += 1;
  debug.games[round.game_slug] = {
    round_id: model.latest.round.round_id,
    seq: model.latest.round.seq,
    count: model.count,
  };
  debug.gamesWithResults = Object.keys(debug.games).length;
  page.dirty.add(model);
  schedule();
}

function renderCard(model) {
  const { el, latest } = model;
  if (!latest) return;
  el.classList.remove('empty');
  el.dataset.kind = kindOf(latest.extras);
  el.querySelector('.body').replaceChildren(renderResult(latest.round, latest.extras, model));
  el.querySelector('.round').textContent = `#${latest.round.round_id}`;
  el.querySelector('.history').replaceChildren(
    ...model.history.slice(1).map((e) => renderChip(e.round, e.extras)));
  if (model.flashAt) {
    el.classList.remove('flash');
    void el.offsetWidth; // restart the animation
    el.classList.add('flash');
  }
  updateAgo(model);
}

function updateAgo(model) {
  if (!model.latest) return;
  const finished = Date.parse(model.latest.round.finished_at);
  const seconds = Math.max(0, Math.round((Date.now() - finished) / 1000));
  const text = Number.isFinite(finished)
    ? seconds < 60 ? `${seconds}s ago` : seconds < 3600 ? `${Math.floor(seconds / 60)}m ago` : new Date(finished).toLocaleTimeString()
    : '';
  const ago = model.el.querySelector('.ago');
  if (ago.textContent !== text) ago.textContent = text;
}

// ---------------------------------------------------------------- feed, latency, throughput

function addFeedRow(round, extras, info) {
  const model = page.games.get(round.game_slug);
  const time = new Date(Number(round.timestamp) || Date.now()).toLocaleTimeString([], { hour12: false });
  const row = h('li', { class: info.live ? 'live' : 'replayed' },
    h('time', {}, time),
    h('b', {}, model?.game.name || round.game_slug),
    h('span', { class: 'what' }, summary(extras)),
    h('span', { class: 'meta' },
      h('span', { class: `proto p-${info.protocol}` }, SHORT[info.protocol]),
      info.live && info.latency != null ? `${info.latency} ms` : 'replay'));
  page.feedRows.unshift(row);
  page.feedRows.length = Math.min(page.feedRows.length, FEED);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index];
}

function fmtMs(ms) {
  if (ms == null) return '—';
  return ms < 10 ? ms.toFixed(0) : ms < 1000 ? ms.toFixed(0) : `${(ms / 1000).toFixed(1)}k`;
}

function renderLatency() {
  for (const protocol of PROTOCOLS) {
    const card = document.querySelector(`.latency[data-protocol="${protocol}"]`);
    const samples = page.samples[protocol];
    const sorted = samples.slice().sort((a, b) => a - b);
    const stats = {
      count: samples.length,
      now: page.last[protocol],
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
    };
    debug.latency[protocol] = stats;
    const inUse = [...page.streams.values()].some((s) => s.protocol === protocol && s.state === 'open');
    card.classList.toggle('active', inUse);
    card.classList.toggle('unsupported', !supports(protocol));
    const recent = samples.slice(-60);
    const max = Math.max(10, ...recent);
    const points = recent
      .map((v, i) => `${((i / Math.max(1, recent.length - 1)) * 100).toFixed(1)},${(30 - (v / max) * 28).toFixed(1)}`)
      .join(' ');
    card.replaceChildren(
      h('h2', {}, NAMES[protocol],
        inUse ? h('span', { class: 'badge' }, 'in use') : null,
        !supports(protocol) ? h('span', { class: 'badge off' }, 'not in this browser') : null),
      h('div', { class: 'figures' },
        h('div', {}, h('b', {}, fmtMs(stats.now)), h('span', {}, 'now ms')),
        h('div', {}, h('b', {}, fmtMs(stats.p50)), h('span', {}, 'p50 ms')),
        h('div', {}, h('b', {}, fmtMs(stats.p99)), h('span', {}, 'p99 ms'))),
      recent.length > 1
        ? svg(`<svg viewBox="0 0 100 30" preserveAspectRatio="none"><polyline points="${points}" fill="none" stroke="currentColor" stroke-width="1.5" vector-effect="non-scaling-stroke" stroke-linejoin="round"/></svg>`, 'spark')
        : h('div', { class: 'spark empty' }, samples.length ? '' : 'no live rounds over this protocol yet'),
      h('p', { class: 'hint' }, `${stats.count} live rounds measured`));
  }
}

function renderThroughput() {
  const now = performance.now();
  while (page.received.length && page.received[0] < now - 10_000) page.received.shift();
  $('#rate').textContent = (page.received.length / 10).toFixed(1);
  $('#total').textContent = String(page.total);
  $('#live-games').textContent = `${debug.gamesWithResults}/${page.games.size}`;
}

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(flush);
}

function flush() {
  scheduled = false;
  for (const model of page.dirty) renderCard(model);
  page.dirty.clear();
  const feed = $('#feed');
  if (page.feedRows.length === 0) {
    if (!feed.firstChild) feed.append(h('li', { class: 'placeholder' }, 'Rounds appear here as they finish.'));
  } else if (feed.firstChild !== page.feedRows[0]) {
    feed.replaceChildren(...page.feedRows);
  }
  $('#feed-count').textContent = page.total ? `${page.total}` : '';
}

// ---------------------------------------------------------------- connection state

function setBanner(message, kind = 'error') {
  const banner = $('#banner');
  banner.hidden = !message;
  banner.dataset.kind = kind;
  banner.textContent = message || '';
}

function showKeyForm(show) {
  $('#key-form').hidden = !show;
  $('#key-button').setAttribute('aria-expanded', String(show));
  if (show) $('#key-input').focus();
}

function renderConnection() {
  const streams = [...page.streams.entries()];
  const states = streams.map(([, s]) => s.state);
  const protocols = streams.map(([, s]) => s.protocol).filter(Boolean);
  const inUse = mostCommon(protocols);
  debug.states = Object.fromEntries(streams.map(([t, s]) => [t, s.state]));
  debug.protocols = Object.fromEntries(streams.map(([t, s]) => [t, s.protocol]));
  debug.protocol = inUse;
  debug.allOpen = streams.length > 0 && states.every((s) => s === 'open');
  debug.requested = page.requested;

  let level = 'wait';
  let text = 'Connecting…';
  if (states.includes('failed')) {
    level = 'error';
    text = debug.auth === 'required' || debug.auth === 'rejected' ? 'API key needed' : 'Stopped';
  } else if (debug.allOpen) {
    level = 'live';
    const mixed = new Set(protocols).size > 1;
    const narrow = window.matchMedia('(max-width: 760px)').matches;
    text = `Live · ${mixed ? 'mixed' : narrow ? SHORT[inUse] : NAMES[inUse]}`;
  } else if (states.includes('reconnecting')) {
    level = 'warn';
    const soonest = Math.min(...streams.map(([, s]) => s.nextAttemptAt ?? Infinity));
    const wait = Number.isFinite(soonest) ? Math.max(0, (soonest - Date.now()) / 1000) : 0;
    text = `Reconnecting${wait > 0.3 ? ` in ${wait.toFixed(1)} s` : '…'}`;
  }
  const pill = $('#connection');
  pill.dataset.level = level;
  pill.querySelector('span').textContent = text;
  pill.title = streams.map(([t, s]) => `${t}: ${s.state} (${s.protocol ?? '—'}, cursor ${s.cursor ?? '—'})`).join('\n');

  for (const button of document.querySelectorAll('#protocols button')) {
    const protocol = button.dataset.protocol;
    const active = page.requested === protocol || (page.requested === 'auto' && inUse === protocol);
    button.classList.toggle('active', active);
    button.classList.toggle('auto', page.requested === 'auto' && active);
    button.setAttribute('aria-checked', String(active));
    button.disabled = !supports(protocol);
    button.title = supports(protocol)
      ? page.requested === 'auto' && active ? 'chosen automatically' : `switch to ${NAMES[protocol]}`
      : `${NAMES[protocol]} is not available in this browser or context`;
  }
  const cursors = streams.map(([t, s]) => `${t} ${s.cursor ?? '—'}`).join(' · ');
  $('#footer-state').textContent = streams.length ? `resume cursors: ${cursors}` : '';
  renderLatency();
}

function mostCommon(values) {
  const counts = new Map();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = null;
  for (const [v, n] of counts) if (best == null || n > counts.get(best)) best = v;
  return best;
}

function recordError(err, type) {
  debug.errors.push({ type, code: err.code, status: err.status ?? null, protocol: err.protocol ?? null, message: err.message, at: Date.now() });
  if (debug.errors.length > 50) debug.errors.shift();
  if (err.code === 'unauthorized') {
    debug.auth = page.apiKey ? 'rejected' : 'required';
    setBanner(page.apiKey
      ? 'The gateway rejected this API key (401). Paste another key to connect.'
      : 'This gateway requires an API key (401). Paste one to see live rounds.');
    showKeyForm(true);
  } else if (err.code === 'forbidden') {
    debug.auth = 'forbidden';
    setBanner(`This API key may not read ${type} rounds (403). Use a key with a wider scope.`);
    showKeyForm(true);
  } else if (err.fatal) {
    setBanner(`${type}: ${err.message}`);
  }
}

// ---------------------------------------------------------------- start-up

async function api(path) {
  const headers = page.apiKey ? { 'X-API-Key': page.apiKey } : {};
  const response = await fetch(path, { headers, cache: 'no-store' });
  if (response.status === 401 || response.status === 403) {
    const err = new Error(`HTTP ${response.status}`);
    err.code = response.status === 401 ? 'unauthorized' : 'forbidden';
    err.status = response.status;
    throw err;
  }
  if (!response.ok) return null;
  return response.json();
}

async function loadCatalog() {
  for (let delay = 500; ; delay = Math.min(delay * 2, 5000)) {
    try {
      const games = await api('/api/games');
      if (Array.isArray(games)) return games;
    } catch (err) {
      if (err.code) {
        recordError(err, 'catalog');
        return null;
      }
    }
    setBanner('The gateway is not answering yet; retrying…', 'info');
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

async function start() {
  const games = await loadCatalog();
  if (!games) return;
  setBanner('');
  for (const game of games) addGame(game);
  placeCards();

  const latest = await Promise.allSettled(
    games.map((g) => api(`/api/games/${encodeURIComponent(g.slug)}/latest`)));
  let newest = 0;
  for (const result of latest) {
    const round = result.status === 'fulfilled' ? result.value : null;
    if (round && Number.isSafeInteger(round.seq)) {
      newest = Math.max(newest, round.seq);
      applyRound(round, parseJson(round.extras), false);
    }
  }
  const since = newest > 0 ? Math.max(0, newest - BACKFILL) : undefined;
  const types = [...new Set(games.map((g) => g.type))].sort();
  for (const type of types) subscribe(type, since);
  debug.ready = true;
  renderConnection();
}

function parseJson(text) {
  try {
    return typeof text === 'string' ? JSON.parse(text) : text ?? {};
  } catch {
    return {};
  }
}

function subscribe(type, since) {
  const stream = new Datastream({
    type,
    since,
    protocol: page.requested,
    apiKey: page.apiKey || undefined,
    webtransport: {
      port: Number(params.get('wt_port')) || undefined,
      // A gateway without TLS_CERT serves WebTransport with a short-lived self-signed
      // certificate, trusted through its hash; a page on https has a real certificate.
      certificateHash: params.get('wt_cert') ?? (location.protocol === 'http:' ? 'fetch' : undefined),
    },
  });
  debug.seqs[type] = [];
  stream.on('round', (round, info) => {
    const seqs = debug.seqs[type];
    seqs.push(round.seq);
    if (seqs.length > SEQ_LOG) seqs.splice(0, seqs.length - SEQ_LOG);
    debug.delivered += 1;
    page.total += 1;
    if (info.live && info.latency != null) {
      const samples = page.samples[info.protocol];
      samples.push(info.latency);
      if (samples.length > SAMPLES) samples.shift();
      page.last[info.protocol] = info.latency;
      page.received.push(performance.now());
    }
    syncStats();
    applyRound(round, info.extras, true);
    addFeedRow(round, info.extras, info);
  });
  stream.on('state', (event) => {
    stream.nextAttemptAt = event.state === 'reconnecting' ? Date.now() + event.delay : null;
    if (event.state === 'open' && (debug.auth === 'required' || debug.auth === 'rejected')) {
      debug.auth = 'ok';
      setBanner('');
      showKeyForm(false);
    }
    syncStats();
    renderConnection();
  });
  stream.on('error', (err) => {
    recordError(err, type);
    syncStats();
  });
  page.streams.set(type, stream);
  stream.start();
}

function syncStats() {
  let duplicates = 0;
  let resets = 0;
  let reconnects = 0;
  let datagrams = 0;
  let streamEvents = 0;
  const byProtocol = Object.fromEntries(PROTOCOLS.map((p) => [p, 0]));
  for (const s of page.streams.values()) {
    for (const p of PROTOCOLS) byProtocol[p] += s.stats.byProtocol[p];
    duplicates += s.stats.duplicates;
    resets += s.stats.resets;
    reconnects += s.stats.reconnects;
    datagrams += s.stats.datagrams;
    streamEvents += s.stats.streamEvents;
  }
  Object.assign(debug, { duplicates, resets, reconnects, byProtocol });
  debug.wt = { datagrams, stream: streamEvents };
}

function switchProtocol(protocol) {
  page.requested = protocol;
  localStorage.setItem(PROTOCOL_STORAGE, protocol);
  for (const stream of page.streams.values()) stream.setProtocol(protocol);
  renderConnection();
}

function useKey(key) {
  page.apiKey = key;
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  $('#key-button').textContent = key ? 'API key ✓' : 'API key';
  setBanner('');
  if (page.streams.size === 0) {
    start();
    return;
  }
  for (const stream of page.streams.values()) stream.setApiKey(key);
}

// ---------------------------------------------------------------- wiring

for (const button of document.querySelectorAll('#protocols button')) {
  button.addEventListener('click', () => switchProtocol(button.dataset.protocol));
}
$('#key-button').addEventListener('click', () => showKeyForm($('#key-form').hidden));
$('#key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  useKey($('#key-input').value.trim());
  $('#key-input').value = '';
  showKeyForm(false);
});
$('#key-forget').addEventListener('click', () => {
  useKey('');
  showKeyForm(false);
});
$('#key-button').textContent = page.apiKey ? 'API key ✓' : 'API key';

setInterval(() => {
  for (const model of page.games.values()) updateAgo(model);
  renderThroughput();
  renderConnection();
}, 1000);

window.__datastream.switchProtocol = switchProtocol;
renderConnection();
start();
