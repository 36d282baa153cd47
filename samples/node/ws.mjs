// Datastream over WebSocket, in Node.js (ws).
//
//   node samples/node/ws.mjs --host http://localhost:3000 --game crash
//   node samples/node/ws.mjs --type multiplier --api-key sk_...
//
// Prints every round. On a lost connection it reconnects with `?since=<last seq>`, so it neither
// misses nor repeats a round.

import WebSocket from 'ws';
import { fetchToken, options, show } from './common.mjs';

const opts = options('Print Datastream rounds received over WebSocket.');
const base = opts.host.replace(/^http/, 'ws');
let received = 0;
let since = null;
let delay = 500;

async function connect() {
  const url = `${base}/ws/${opts.topic}${since != null ? `?since=${since}` : ''}`;
  let ws;
  try {
    // The token travels as the WebSocket sub-protocol; the gateway echoes it.
    ws = opts.apiKey ? new WebSocket(url, [await fetchToken(opts)]) : new WebSocket(url);
  } catch (err) {
    console.error(`cannot connect: ${err.message}`);
    if (/401/.test(err.message)) process.exit(1);
    return retry();
  }
  ws.on('open', () => {
    delay = 500;
  });
  ws.on('message', (data) => {
    since = show(data.toString());
    received += 1;
    if (opts.count && received >= opts.count) {
      ws.close(1000);
      process.exit(0);
    }
  });
  ws.on('unexpected-response', (_req, res) => {
    console.error(`refused with HTTP ${res.statusCode}`);
    if ([401, 403, 404].includes(res.statusCode)) process.exit(1);
    ws.terminate();
  });
  ws.on('error', (err) => console.error(`connection error: ${err.message}`));
  ws.on('close', (code, reason) => {
    if (code === 4010) since = null; // the cursor is outside the stream: start from the latest
    console.error(`closed ${code} ${reason}; reconnecting`);
    retry();
  });
}

function retry() {
  setTimeout(connect, delay);
  delay = Math.min(delay * 2, 15_000);
}

connect();
