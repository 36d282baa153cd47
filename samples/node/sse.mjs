// Datastream over Server-Sent Events, in Node.js (eventsource).
//
//   node samples/node/sse.mjs --host http://localhost:3000 --game double
//   node samples/node/sse.mjs --type dice --api-key sk_...
//
// Prints every round: the `initial` event with the latest, then each `message`. EventSource
// reconnects by itself and sends `Last-Event-ID`, so nothing is missed or repeated.

import { EventSource } from 'eventsource';
import { options, show } from './common.mjs';

const opts = options('Print Datastream rounds received over Server-Sent Events.');
let received = 0;

const source = new EventSource(`${opts.host}/sse/${opts.topic}`, {
  // The key as a header (it could also go in the URL as ?api_key=).
  fetch: (input, init) =>
    fetch(input, {
      ...init,
      headers: { ...init.headers, ...(opts.apiKey ? { 'X-API-Key': opts.apiKey } : {}) },
    }),
});

function onRound(event) {
  show(event.data);
  received += 1;
  if (opts.count && received >= opts.count) {
    source.close();
    process.exit(0);
  }
}

source.addEventListener('initial', onRound);
source.addEventListener('message', onRound);
source.addEventListener('reset', (event) => console.error(`cursor reset: ${event.data}`));
source.addEventListener('error', (event) => {
  if (event.code === 401 || event.code === 403 || event.code === 404) {
    console.error(`refused with HTTP ${event.code}`);
    process.exit(1);
  }
  console.error(`connection lost (${event.message ?? 'no details'}); EventSource reconnects`);
});
