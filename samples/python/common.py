"""What the Python samples share: command-line options, the token request, and printing."""

import argparse
import json
import os
import time
from urllib.parse import quote

import requests


def options(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=os.environ.get("DATASTREAM_HOST", "http://localhost:3000"),
                        help="the gateway's base URL (default: %(default)s)")
    topic = parser.add_mutually_exclusive_group()
    topic.add_argument("--game", help="a game's slug, e.g. crash (the default)")
    topic.add_argument("--type", help="a game type, e.g. multiplier")
    parser.add_argument("--api-key", default=os.environ.get("DATASTREAM_API_KEY"),
                        help="API key, when the gateway requires one (or DATASTREAM_API_KEY)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many rounds (default: run until Ctrl-C)")
    args = parser.parse_args()
    if not args.type and not args.game:
        args.game = "crash"
    args.host = args.host.rstrip("/")
    return args


def topic_path(args):
    """`crash` or `type/multiplier`: what follows /ws/ or /sse/."""
    return f"type/{quote(args.type)}" if args.type else quote(args.game)


def fetch_token(args):
    """A 30-second token for WebSocket clients: POST /api/auth/token with the key."""
    response = requests.post(f"{args.host}/api/auth/token", headers={"X-API-Key": args.api_key},
                             timeout=10)
    if response.status_code == 401:
        raise SystemExit("the gateway rejected the API key (401)")
    response.raise_for_status()
    return response.json()["token"]


def show(text):
    """Prints one round; returns its seq (the resume cursor)."""
    round_ = json.loads(text)
    extras = round_.get("extras")
    latency = int(time.time() * 1000) - int(round_.get("timestamp", 0))
    print(f"[{round_['game_slug']}] round {round_['round_id']}  seq {round_['seq']}  "
          f"{extras}  latency {latency} ms", flush=True)
    return round_["seq"]
