"""Datastream over WebSocket, in Python (websockets).

    python3 samples/python/ws.py --host http://localhost:3000 --game crash
    python3 samples/python/ws.py --type multiplier --api-key sk_...

Prints every round. On a lost connection it reconnects with `?since=<last seq>`, so it neither
misses nor repeats a round.
"""

import asyncio

import requests
import websockets

from common import fetch_token, options, show, topic_path


async def main():
    args = options("Print Datastream rounds received over WebSocket.")
    base = "ws" + args.host[len("http"):] if args.host.startswith("http") else args.host
    received, since, delay = 0, None, 0.5
    while True:
        url = f"{base}/ws/{topic_path(args)}" + (f"?since={since}" if since is not None else "")
        # The token travels as the WebSocket sub-protocol; the gateway echoes it.
        subprotocols = [fetch_token(args)] if args.api_key else None
        try:
            async with websockets.connect(url, subprotocols=subprotocols) as ws:
                delay = 0.5
                async for message in ws:
                    since = show(message)
                    received += 1
                    if args.count and received >= args.count:
                        return
            print("the gateway closed the connection; reconnecting", flush=True)
        except websockets.ConnectionClosed as closed:
            if closed.rcvd and closed.rcvd.code == 4010:
                since = None  # the cursor is outside the stream: start again from the latest
            print(f"connection closed ({closed}); reconnecting", flush=True)
        except websockets.InvalidStatus as refused:
            status = refused.response.status_code
            if status in (401, 403, 404):
                raise SystemExit(f"refused with HTTP {status}: {refused.response.body!r}")
            print(f"refused with HTTP {status}; retrying", flush=True)
        except (OSError, requests.RequestException) as err:
            print(f"cannot connect ({err}); retrying", flush=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 15)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
