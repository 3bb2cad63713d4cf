"""`consilium revoke`: revoke a token (jti) or an identity (sub) on every node, through
`POST /api/revocations` on a running server."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any


def cmd_revoke(args: argparse.Namespace) -> int:
    """Call `POST /api/revocations` on a running server."""
    token = args.token or os.environ.get("CONSILIUM_TOKEN")
    if not token:
        print(
            "error: give --token or set CONSILIUM_TOKEN (a token allowed to revoke)",
            file=sys.stderr,
        )
        return 2
    body: dict[str, Any] = {"reason": args.reason or ""}
    if args.jti:
        body["jti"] = args.jti
    else:
        body["sub"] = args.sub
    request = urllib.request.Request(
        args.server.rstrip("/") + "/api/revocations",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"error: HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {args.server}: {exc.reason}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium revoke --jti ... | --sub ...`."""
    revoke = sub.add_parser("revoke", help="revoke a token (jti) or an identity (sub) everywhere")
    revoke.add_argument("--server", required=True, help="server URL, e.g. https://mdt.hospital")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--jti", help="token id to revoke")
    target.add_argument("--sub", help="identity to revoke")
    revoke.add_argument("--reason", help="why (goes to the audit log)")
    revoke.add_argument("--token", help="your token (or CONSILIUM_TOKEN)")
    revoke.add_argument("--cacert", help="CA bundle to trust for the server's certificate")
    revoke.set_defaults(func=cmd_revoke)
