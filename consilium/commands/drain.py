"""`consilium drain`: stop a node the way a rolling upgrade wants, its rooms moved to other
nodes first, through `POST /api/node/drain` on that node, from its own host
(`signaling.http.drain`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

STOPPED_POLL_S = 0.5


def _answers(url: str) -> bool:
    """Whether the node at `url` still answers `/healthz` at all (any status)."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (503 while stopping)
    except (urllib.error.URLError, OSError):
        return False


def cmd_drain(args: argparse.Namespace) -> int:
    """Ask the node to drain and stop; with `--wait`, until it has stopped."""
    server = args.server.rstrip("/")
    request = urllib.request.Request(server + "/api/node/drain", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        print(f"error: HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {server}: {exc.reason}", file=sys.stderr)
        return 1
    print(f"node {answer.get('node', '?')} is draining: its rooms move to the other nodes")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while _answers(server):
        if time.monotonic() > deadline:
            print(f"error: still running after {args.timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(STOPPED_POLL_S)
    print("drained and stopped")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium drain [--server URL] [--wait]`."""
    drain = sub.add_parser(
        "drain",
        help="stop a node for an upgrade: its rooms move to the other nodes first",
        description="Drain the node at --server (from its own host): it turns unready, moves "
        "the media of every room it hosts to the other nodes (everyone's media sessions reopen "
        "there), closes its own connections (their clients join again through another node) "
        "and stops. The same as sending it SIGTERM.",
    )
    drain.add_argument(
        "--server",
        default="http://127.0.0.1:8443",
        help="the node's URL on this host (default http://127.0.0.1:8443)",
    )
    drain.add_argument("--wait", action="store_true", help="return once the node has stopped")
    drain.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="with --wait: give up after this many seconds (default 120)",
    )
    drain.set_defaults(func=cmd_drain)
