// datastream.js: a small client for Datastream's live round events (docs/client.md).
//
// One `Datastream` follows one topic (a game or a game type) over the best protocol available:
// WebTransport, else WebSocket, else Server-Sent Events (read with fetch). It reconnects with
// exponential backoff and jitter, resumes from the last `seq` it delivered, so a reconnect or a
// protocol switch neither misses nor repeats a round, and drops anything it has already
// delivered as a safety net. No dependencies; works in browsers and in Node.js 22+.

/** Protocols in order of preference. */
export const PROTOCOLS = Object.freeze(['webtransport', 'websocket', 'sse']);

/** Close code the gateway uses when a resume cursor is outside the stream. */
const CLOSE_CURSOR_RESET = 4010;
/** Close code the gateway uses when the API key was revoked during the connection. */
const CLOSE_KEY_REVOKED = 4001;
/** How many datagram-delivered seqs are remembered ahead of the reliable cursor. */
const MAX_AHEAD = 4096;

const DEFAULTS = Object.freeze({
  protocol: 'auto',
  connectTimeout: 10_000,
  backoff: Object.freeze({ initial: 500, max: 30_000 }),
  stableAfter: 5_000,
});

/** An error reported on the `error` event. `fatal` errors stop reconnection. */
export class DatastreamError extends Error {
  constructor(code, message, { status, protocol, fatal = false } = {}) {
    super(message);
    this.name = 'DatastreamError';
    this.code = code;
    this.status = status;
    this.protocol = protocol;
    this.fatal = fatal;
  }
}

/** Whether this environment can speak `protocol` at all. */
export function supports(protocol) {
  switch (protocol) {
    case 'webtransport':
      return typeof globalThis.WebTransport === 'function';
    case 'websocket':
      return typeof globalThis.WebSocket === 'function';
    case 'sse':
      return typeof globalThis.fetch === 'function' && typeof globalThis.TextDecoder === 'function';
    default:
      return false;
  }
}

/** A round's `extras` (a JSON-encoded string in the published format) as an object. */
export function parseExtras(round) {
  if (round == null) return {};
  if (typeof round.extras !== 'string') return round.extras ?? {};
  try {
    return JSON.parse(round.extras);
  } catch {
    return {};
  }
}

const tokenCache = new Map();

/**
 * A short-lived token for `apiKey` from `POST {base}/api/auth/token`, cached until shortly
 * before it expires. `null` when the gateway has no token endpoint (authentication off).
 */
export async function fetchToken(base, apiKey) {
  const key = `${base}\n${apiKey}`;
  const cached = tokenCache.get(key);
  if (cached && cached.expiresAt > Date.now()) return cached.token;
  // Connections starting together share one request.
  const request = requestToken(base, apiKey, key);
  tokenCache.set(key, { token: request, expiresAt: Date.now() + 5_000 });
  try {
    return await request;
  } catch (err) {
    tokenCache.delete(key);
    throw err;
  }
}

async function requestToken(base, apiKey, key) {
  const response = await fetch(new URL('/api/auth/token', base), {
    method: 'POST',
    headers: { 'X-API-Key': apiKey },
    cache: 'no-store',
  });
  if (response.status === 404) return null;
  if (!response.ok) throw httpError(response.status, 'token request', null);
  const body = await response.json();
  if (typeof body.token !== 'string') {
    throw new DatastreamError('bad-token', 'the token endpoint answered without a token');
  }
  const lifetime = Number(body.expires_in) > 0 ? Number(body.expires_in) * 1000 : 30_000;
  // Half the lifetime: a token is only needed at the handshake, so it is never used near expiry.
  tokenCache.set(key, { token: body.token, expiresAt: Date.now() + lifetime / 2 });
  return body.token;
}

function httpError(status, what, protocol) {
  const reasons = {
    401: ['unauthorized', 'the API key is missing or not valid'],
    403: ['forbidden', 'the API key does not allow this game or type'],
    404: ['not-found', 'unknown game or game type'],
  };
  const [code, text] = reasons[status] ?? ['http', `HTTP ${status}`];
  return new DatastreamError(code, `${what}: ${text} (HTTP ${status})`, {
    status,
    protocol,
    fatal: status === 401 || status === 403 || status === 404,
  });
}

/**
 * A live subscription to one topic.
 *
 *   const stream = new Datastream({ game: 'crash' });
 *   stream.on('round', (round, info) => console.log(round.round_id, info.latency));
 *   stream.start();
 */
export class Datastream {
  #opts;
  #listeners = new Map();
  #conn = null;
  #cursor = null;
  #ahead = new Set();
  #attempt = 0;
  #candidate = 0;
  #timer = null;
  #stableTimer = null;
  #state = 'idle';
  #protocol = null;
  #stopped = true;
  #everOpened = false;

  /**
   * @param {object} options
   * @param {string} [options.game] game slug to follow (or `type`)
   * @param {string} [options.type] game type to follow (or `game`)
   * @param {string} [options.url] the gateway's HTTP base URL (default: the page's origin)
   * @param {'auto'|'webtransport'|'websocket'|'sse'} [options.protocol] default `auto`
   * @param {string} [options.apiKey] API key, when the gateway requires one
   * @param {number} [options.since] resume after this `seq` (default: start with the latest)
   * @param {object} [options.webtransport] `{ url, port, certificateHash }`
   * @param {object} [options.backoff] `{ initial, max }` in milliseconds
   * @param {number} [options.connectTimeout] milliseconds before a handshake is given up
   */
  constructor(options = {}) {
    if (!options.game === !options.type) {
      throw new TypeError('Datastream needs exactly one of `game` or `type`');
    }
    const base = options.url ?? globalThis.location?.origin;
    if (!base) throw new TypeError('Datastream needs `url` outside a browser page');
    this.#opts = {
      ...DEFAULTS,
      ...options,
      url: String(base).replace(/\/+$/, ''),
      backoff: { ...DEFAULTS.backoff, ...options.backoff },
      webtransport: { ...options.webtransport },
    };
    this.#cursor = Number.isSafeInteger(options.since) && options.since >= 0 ? options.since : null;
    /** Counters for dashboards and tests. */
    this.stats = {
      delivered: 0,
      duplicates: 0,
      reconnects: 0,
      resets: 0,
      byProtocol: { webtransport: 0, websocket: 0, sse: 0 },
      datagrams: 0,
      streamEvents: 0,
    };
  }

  /** The topic's path below the protocol prefix: `crash` or `type/multiplier`. */
  get topic() {
    return this.#opts.game
      ? encodeURIComponent(this.#opts.game)
      : `type/${encodeURIComponent(this.#opts.type)}`;
  }

  /** The `seq` after which a reconnect resumes (`null`: none yet). */
  get cursor() {
    return this.#cursor;
  }

  /** `idle`, `connecting`, `open`, `reconnecting`, `failed` or `closed`. */
  get state() {
    return this.#state;
  }

  /** The protocol of the current (or last) connection. */
  get protocol() {
    return this.#protocol;
  }

  /** The protocol asked for: `auto` or one of {@link PROTOCOLS}. */
  get requestedProtocol() {
    return this.#opts.protocol;
  }

  /** Adds a listener for `round`, `state` or `error`; returns a function that removes it. */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /** Connects (no-op when already running). */
  start() {
    if (!this.#stopped) return this;
    this.#stopped = false;
    this.#attempt = 0;
    this.#candidate = 0;
    this.#connect();
    return this;
  }

  /** Disconnects for good (until `start()` again). */
  close() {
    this.#stopped = true;
    this.#drop();
    this.#setState('closed', { protocol: this.#protocol });
  }

  /** Switches protocol (`auto` or one of {@link PROTOCOLS}); resumes from the cursor at once. */
  setProtocol(protocol) {
    if (protocol !== 'auto' && !PROTOCOLS.includes(protocol)) {
      throw new TypeError(`unknown protocol ${protocol}`);
    }
    this.#opts.protocol = protocol;
    this.#restart();
  }

  /** Uses another API key (or none) from now on and reconnects. */
  setApiKey(apiKey) {
    this.#opts.apiKey = apiKey || undefined;
    this.#restart();
  }

  /** Reconnects now, also after a fatal error. */
  retry() {
    this.#restart();
  }

  #restart() {
    if (this.#stopped && this.#state !== 'failed') return;
    this.#stopped = false;
    this.#drop();
    this.#attempt = 0;
    this.#candidate = 0;
    this.#connect();
  }

  #emit(event, ...args) {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        listener(...args);
      } catch (err) {
        // A listener's bug must not break the stream; surface it where developers look.
        console.error(`datastream: a '${event}' listener threw`, err);
      }
    }
  }

  #setState(state, details = {}) {
    this.#state = state;
    this.#emit('state', { state, ...details });
  }

  #candidates() {
    const wanted = this.#opts.protocol === 'auto' ? PROTOCOLS : [this.#opts.protocol];
    return wanted.filter(supports);
  }

  #drop() {
    clearTimeout(this.#timer);
    clearTimeout(this.#stableTimer);
    this.#timer = null;
    const conn = this.#conn;
    this.#conn = null;
    if (conn) {
      conn.active = false;
      conn.close();
    }
  }

  async #connect() {
    this.#timer = null;
    const candidates = this.#candidates();
    if (candidates.length === 0) {
      this.#fail(
        new DatastreamError(
          'protocol-unavailable',
          `${this.#opts.protocol} is not available in this environment`,
          { fatal: true },
        ),
      );
      return;
    }
    const protocol = candidates[this.#candidate % candidates.length];
    const conn = {
      protocol,
      active: true,
      opened: false,
      startedAt: Date.now(),
      close: () => {},
    };
    this.#conn = conn;
    this.#protocol = protocol;
    this.#setState('connecting', { protocol, attempt: this.#attempt, cursor: this.#cursor });
    try {
      const token =
        this.#opts.apiKey && protocol !== 'sse'
          ? await fetchToken(this.#opts.url, this.#opts.apiKey)
          : null;
      if (!conn.active) return;
      const open = {
        webtransport: () => this.#openWebTransport(conn, token),
        websocket: () => this.#openWebSocket(conn, token),
        sse: () => this.#openSse(conn),
      }[protocol];
      await open();
    } catch (err) {
      this.#closed(conn, { error: err });
    }
  }

  #url(prefix, params) {
    const url = new URL(`${this.#opts.url}/${prefix}/${this.topic}`);
    for (const [name, value] of Object.entries(params)) {
      if (value != null) url.searchParams.set(name, String(value));
    }
    return url;
  }

  #guard(conn, ms, what) {
    const timer = setTimeout(() => {
      if (conn.active && !conn.opened) {
        this.#closed(conn, { error: new DatastreamError('timeout', `${what} timed out`) });
      }
    }, ms);
    return () => clearTimeout(timer);
  }

  #openWebSocket(conn, token) {
    const url = this.#url('ws', { since: this.#cursor });
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = token ? new WebSocket(url, [token]) : new WebSocket(url);
    const cancel = this.#guard(conn, this.#opts.connectTimeout, 'WebSocket handshake');
    conn.close = () => {
      cancel();
      try {
        ws.close(1000, 'client closing');
      } catch {
        // already closing
      }
    };
    ws.onopen = () => {
      cancel();
      this.#opened(conn);
    };
    ws.onmessage = (event) => {
      if (typeof event.data === 'string') this.#receive(conn, event.data, 'frame');
    };
    ws.onclose = (event) => {
      cancel();
      this.#closed(conn, { code: event.code, reason: event.reason });
    };
  }

  async #openSse(conn) {
    const url = this.#url('sse', { last_event_id: this.#cursor });
    const abort = new AbortController();
    conn.close = () => abort.abort();
    const headers = { Accept: 'text/event-stream' };
    if (this.#opts.apiKey) headers['X-API-Key'] = this.#opts.apiKey;
    const cancel = this.#guard(conn, this.#opts.connectTimeout, 'SSE request');
    let response;
    try {
      response = await fetch(url, { headers, signal: abort.signal, cache: 'no-store' });
    } finally {
      cancel();
    }
    if (!conn.active) return;
    if (!response.ok || !response.body) {
      response.body?.cancel().catch(() => {});
      this.#closed(conn, {
        status: response.status,
        retryAfter: Number(response.headers.get('Retry-After')) || 0,
      });
      return;
    }
    this.#opened(conn);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { type: 'message', data: [] };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || !conn.active) break;
        buffer += value;
        // Lines end with \n, \r\n or \r; a trailing \r may be half of a \r\n still to come.
        const lines = buffer.split(/\r\n|\r(?!$)|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === '') {
            if (event.data.length > 0) this.#sseEvent(conn, event.type, event.data.join('\n'));
            event = { type: 'message', data: [] };
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'event') event.type = value;
          else if (field === 'data') event.data.push(value);
        }
      }
      this.#closed(conn, { reason: 'the event stream ended' });
    } catch (err) {
      this.#closed(conn, { error: err });
    }
  }

  #sseEvent(conn, type, data) {
    if (type === 'reset') {
      let reason = 'cursor outside the stream';
      try {
        reason = JSON.parse(data).reason ?? reason;
      } catch {
        // keep the generic reason
      }
      this.#reset(reason);
      return;
    }
    if (type === 'initial' || type === 'message') this.#receive(conn, data, 'sse');
  }

  async #openWebTransport(conn, token) {
    const wt = this.#opts.webtransport;
    const options = {};
    const { hash, port } = await this.#certificate(wt.certificateHash);
    if (!conn.active) return;
    if (hash) options.serverCertificateHashes = [{ algorithm: 'sha-256', value: hash }];
    const base =
      wt.url ?? `https://${new URL(this.#opts.url).hostname}:${wt.port ?? port ?? 4433}`;
    const url = new URL(`${base.replace(/\/+$/, '')}/wt/${this.topic}`);
    if (this.#cursor != null) url.searchParams.set('since', String(this.#cursor));
    if (token) url.searchParams.set('token', token);
    const session = new WebTransport(url, options);
    const cancel = this.#guard(conn, this.#opts.connectTimeout, 'WebTransport handshake');
    conn.close = () => {
      cancel();
      try {
        session.close({ closeCode: 0, reason: 'client closing' });
      } catch {
        // already closed
      }
    };
    session.closed.then(
      (info) => this.#closed(conn, { code: info?.closeCode, reason: info?.reason }),
      (err) => this.#closed(conn, { error: err }),
    );
    try {
      await session.ready;
    } finally {
      cancel();
    }
    if (!conn.active) return;
    this.#opened(conn);
    this.#readDatagrams(conn, session);
    this.#readStreams(conn, session);
  }

  async #readDatagrams(conn, session) {
    const reader = session.datagrams.readable.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || !conn.active) return;
        this.stats.datagrams += 1;
        this.#receive(conn, decoder.decode(value), 'datagram');
      }
    } catch {
      // the session's `closed` promise reports why
    }
  }

  async #readStreams(conn, session) {
    const streams = session.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value: stream, done } = await streams.read();
        if (done || !conn.active) return;
        this.#readLines(conn, stream);
      }
    } catch {
      // the session's `closed` promise reports why
    }
  }

  async #readLines(conn, stream) {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || !conn.active) return;
        buffer += value;
        const lines = buffer.split('\n');
        buffer = lines.pop();
        for (const line of lines) {
          if (line.trim() === '') continue;
          this.stats.streamEvents += 1;
          this.#receive(conn, line, 'stream');
        }
      }
    } catch {
      // the session's `closed` promise reports why
    }
  }

  /**
   * The certificate hash to trust, from `certificateHash`: bytes, a hex string, `'fetch'` (ask
   * the gateway, which also tells its WebTransport port) or nothing (a CA-signed certificate).
   */
  async #certificate(setting) {
    if (setting == null || setting === false) return { hash: null, port: null };
    if (setting instanceof Uint8Array) return { hash: setting, port: null };
    let hex = setting;
    let port = null;
    if (setting === 'fetch') {
      const response = await fetch(new URL('/api/wt/cert-hash', this.#opts.url), {
        cache: 'no-store',
      });
      if (!response.ok) {
        throw new DatastreamError(
          'webtransport-unavailable',
          `the gateway has no WebTransport certificate hash (HTTP ${response.status})`,
          { status: response.status, protocol: 'webtransport' },
        );
      }
      const body = await response.json();
      hex = isHex(body?.value) ? body.value : findHex(body);
      port = Number.isInteger(body?.port) ? body.port : null;
    }
    if (!isHex(hex)) {
      throw new DatastreamError('webtransport-unavailable', 'no SHA-256 certificate hash', {
        protocol: 'webtransport',
      });
    }
    const clean = hex.replace(/:/g, '');
    const hash = Uint8Array.from({ length: 32 }, (_, i) => parseInt(clean.slice(i * 2, i * 2 + 2), 16));
    return { hash, port };
  }

  #opened(conn) {
    if (!conn.active || conn.opened) return;
    conn.opened = true;
    this.#everOpened = true;
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      if (conn.active) this.#attempt = 0;
    }, this.#opts.stableAfter);
    this.#setState('open', { protocol: conn.protocol, cursor: this.#cursor });
  }

  #receive(conn, text, via) {
    if (!conn.active) return;
    let round;
    try {
      round = JSON.parse(text);
    } catch {
      this.#emit('error', new DatastreamError('bad-message', 'a message was not JSON', {
        protocol: conn.protocol,
      }));
      return;
    }
    const seq = round?.seq;
    if (!Number.isSafeInteger(seq)) {
      this.#emit('error', new DatastreamError('bad-message', 'a message had no seq', {
        protocol: conn.protocol,
      }));
      return;
    }
    const behind = this.#cursor != null && seq <= this.#cursor;
    if (via === 'datagram') {
      // Datagrams may be lost or reordered: deliver early, but only the reliable path moves the
      // cursor, so a resume never skips what a lost datagram did not bring.
      if (behind || this.#ahead.has(seq)) return;
      this.#ahead.add(seq);
      if (this.#ahead.size > MAX_AHEAD) this.#ahead.delete(this.#ahead.values().next().value);
    } else {
      if (behind) {
        this.stats.duplicates += 1;
        return;
      }
      this.#cursor = seq;
      const early = this.#ahead.delete(seq);
      if (this.#ahead.size > 0) {
        for (const s of this.#ahead) if (s <= seq) this.#ahead.delete(s);
      }
      if (early) return;
    }
    this.stats.delivered += 1;
    this.stats.byProtocol[conn.protocol] += 1;
    const now = Date.now();
    const timestamp = Number(round.timestamp);
    this.#emit('round', round, {
      protocol: conn.protocol,
      via,
      latency: Number.isFinite(timestamp) ? now - timestamp : null,
      // Committed after this connection began: a live event, not the latest or a replay.
      live: Number.isFinite(timestamp) && timestamp >= conn.startedAt,
      extras: parseExtras(round),
    });
  }

  #reset(reason) {
    this.#cursor = null;
    this.#ahead.clear();
    this.stats.resets += 1;
    this.#emit('error', new DatastreamError('cursor-reset', `resume impossible: ${reason}`));
  }

  #fail(error) {
    this.#drop();
    this.#stopped = true;
    this.#emit('error', error);
    this.#setState('failed', { protocol: this.#protocol, error });
  }

  async #closed(conn, info) {
    if (!conn.active) return;
    conn.active = false;
    conn.close();
    if (this.#conn === conn) this.#conn = null;
    clearTimeout(this.#stableTimer);
    if (this.#stopped) return;

    if (info.code === CLOSE_CURSOR_RESET) {
      this.#reset(info.reason || 'cursor outside the stream');
      this.#schedule(0, conn.protocol, info.reason);
      return;
    }
    let error = info.error instanceof DatastreamError ? info.error : null;
    if (!error && info.status) error = httpError(info.status, conn.protocol, conn.protocol);
    if (!error && info.code === CLOSE_KEY_REVOKED) {
      error = new DatastreamError('unauthorized', `${conn.protocol}: the API key was revoked`, {
        status: 401,
        protocol: conn.protocol,
        fatal: true,
      });
    }
    // Whether the next attempt (when choosing automatically) should use the next protocol.
    let advance = error?.code === 'webtransport-unavailable';
    if (!conn.opened && !error?.fatal && conn.protocol !== 'sse') {
      // Browsers hide why a WebSocket or WebTransport handshake failed: ask the same topic
      // over plain HTTP. 401, 403 or 404 is the answer; a success means this protocol is what
      // fails (a proxy, a firewall, no WebTransport listener), so another one is worth a try.
      const status = await this.#probe();
      if (this.#stopped || this.#conn) return;
      if (status === 401 || status === 403 || status === 404) {
        error = httpError(status, conn.protocol, conn.protocol);
      }
      advance ||= status >= 200 && status < 300;
    }
    if (error?.code === 'not-found' && this.#everOpened) {
      // This topic was served before: a gateway that is still loading its catalog (a restart
      // behind the same address) says 404 for a moment. Keep trying, with backoff.
      error.fatal = false;
    }
    if (error?.fatal) {
      this.#fail(error);
      return;
    }
    const reason =
      error?.message ??
      info.error?.message ??
      (info.code ? `closed ${info.code}${info.reason ? ` ${info.reason}` : ''}` : info.reason) ??
      'connection lost';
    this.#emit('error', new DatastreamError(error?.code ?? 'connection', reason, {
      status: info.status,
      protocol: conn.protocol,
    }));
    if (!conn.opened) {
      if (advance) this.#candidate += 1;
      this.#attempt += 1;
    }
    let delay = this.#delay();
    if (info.retryAfter) delay = Math.max(delay, info.retryAfter * 1000);
    this.#schedule(delay, conn.protocol, reason);
  }

  #delay() {
    const { initial, max } = this.#opts.backoff;
    if (this.#attempt === 0) return Math.random() * initial;
    const ceiling = Math.min(max, initial * 2 ** this.#attempt);
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  #schedule(delay, protocol, reason) {
    this.stats.reconnects += 1;
    this.#setState('reconnecting', {
      protocol,
      attempt: this.#attempt,
      delay: Math.round(delay),
      reason,
      cursor: this.#cursor,
    });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connect(), delay);
  }

  async #probe() {
    try {
      const headers = { Accept: 'text/event-stream' };
      if (this.#opts.apiKey) headers['X-API-Key'] = this.#opts.apiKey;
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), 5_000);
      const response = await fetch(this.#url('sse', {}), {
        headers,
        signal: abort.signal,
        cache: 'no-store',
      });
      clearTimeout(timer);
      abort.abort();
      return response.status;
    } catch {
      return 0;
    }
  }
}

/** Whether `value` is a SHA-256 digest in hex (colons between bytes allowed). */
function isHex(value) {
  return typeof value === 'string' && /^([0-9a-f]{2}:?){32}$/i.test(value);
}

/** The first SHA-256 hex string found in a JSON answer. */
function findHex(value) {
  if (isHex(value)) return value;
  if (value && typeof value === 'object') {
    for (const inner of Object.values(value)) {
      const found = findHex(inner);
      if (found) return found;
    }
  }
  return null;
}
