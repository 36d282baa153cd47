// What the Node.js samples share: command-line options, the token request, and printing.

import { parseArgs } from 'node:util';

export function options(description) {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: process.env.DATASTREAM_HOST ?? 'http://localhost:3000' },
      game: { type: 'string' },
      type: { type: 'string' },
      'api-key': { type: 'string', default: process.env.DATASTREAM_API_KEY },
      count: { type: 'string', default: '0' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(`${description}
  --host URL       the gateway (default http://localhost:3000, or DATASTREAM_HOST)
  --game SLUG      a game, e.g. crash (the default)   --type TYPE   a game type, e.g. multiplier
  --api-key KEY    when the gateway requires one (or DATASTREAM_API_KEY)
  --count N        stop after N rounds (default: run until Ctrl-C)`);
    process.exit(0);
  }
  if (values.game && values.type) throw new Error('give --game or --type, not both');
  return {
    host: values.host.replace(/\/+$/, ''),
    topic: values.type ? `type/${encodeURIComponent(values.type)}` : encodeURIComponent(values.game ?? 'crash'),
    apiKey: values['api-key'],
    count: Number(values.count) || 0,
  };
}

/** A 30-second token for WebSocket clients: POST /api/auth/token with the key. */
export async function fetchToken(opts) {
  const response = await fetch(`${opts.host}/api/auth/token`, {
    method: 'POST',
    headers: { 'X-API-Key': opts.apiKey },
  });
  if (response.status === 401) throw new Error('the gateway rejected the API key (401)');
  if (!response.ok) throw new Error(`token request failed: HTTP ${response.status}`);
  return (await response.json()).token;
}

/** Prints one round; returns its seq (the resume cursor). */
export function show(text) {
  const round = JSON.parse(text);
  const latency = Date.now() - round.timestamp;
  console.log(`[${round.game_slug}] round ${round.round_id}  seq ${round.seq}  ${round.extras}  latency ${latency} ms`);
  return round.seq;
}
