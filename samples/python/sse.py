"""Datastream over Server-Sent Events, in Python (requests + sseclient-py).

    python3 samples/python/sse.py --host http://localhost:3000 --game double
    python3 samples/python/sse.py --type dice --api-key sk_...

Prints every round (the `initial` event with the latest, then each `message`). On a lost
connection it reconnects with `Last-Event-ID`, so it neither misses nor repeats a round.
"""

import time

import requests
import sseclient

from common import options, show, topic_path


def main():
    args = options("Print Datastream rounds received over Server-Sent Events.")
    received, last_id, delay = 0, None, 0.5
    while True:
        headers = {"Accept": "text/event-stream"}
        if args.api_key:
            headers["X-API-Key"] = args.api_key  # or ?api_key= in the URL
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            response = requests.get(f"{args.host}/sse/{topic_path(args)}", headers=headers,
                                    stream=True, timeout=(10, 60))
            if response.status_code in (401, 403, 404):
                raise SystemExit(f"refused with HTTP {response.status_code}: {response.text}")
            response.raise_for_status()
            delay = 0.5
            # Chunks as they arrive: a fixed chunk size would hold an event back until more bytes come.
            for event in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
                if event.event == "reset":
                    last_id = None  # the cursor is outside the stream; the latest follows
                    continue
                if event.event not in ("initial", "message") or not event.data:
                    continue
                show(event.data)
                last_id = event.id or last_id
                received += 1
                if args.count and received >= args.count:
                    response.close()
                    return
            print("the stream ended; reconnecting", flush=True)
        except requests.RequestException as err:
            print(f"connection lost ({err}); reconnecting", flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 15)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
