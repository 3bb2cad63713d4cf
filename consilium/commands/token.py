"""`consilium token`: mint a token with the development identity provider."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from consilium.commands.folders import DEFAULT_DATA_DIR, data_dir
from signaling.devidp import DevelopmentIdP
from signaling.policy import ROLES


def _split(values: Sequence[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or ():
        out.extend(item.strip() for item in value.split(",") if item.strip())
    return out


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a token with the development identity provider (development mode only)."""
    if args.role not in ROLES:
        print(f"error: unknown role {args.role!r}; one of {', '.join(ROLES)}", file=sys.stderr)
        return 2
    idp = DevelopmentIdP.load_or_create(data_dir(args))
    amr = ["pwd"] if args.no_mfa else _split(args.amr) or ["pwd", "otp"]
    token = idp.mint(
        sub=args.sub,
        role=args.role,
        depts=_split(args.dept),
        rooms=_split(args.room),
        name=args.name or args.sub,
        org=args.org or "",
        amr=amr,
        ttl_s=args.ttl,
    )
    if args.link:
        rooms = _split(args.room)
        if not rooms:
            print("error: --link needs --room", file=sys.stderr)
            return 2
        # The built-in media test page until the web client's /join/<room> page exists.
        print(f"{args.link.rstrip('/')}/test.html#token={token}&room={rooms[0]}")
    else:
        print(token)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium token` and its claims as flags."""
    token = sub.add_parser("token", help="mint a development token (development IdP only)")
    token.add_argument("--data-dir", help=f"data folder of the server (default {DEFAULT_DATA_DIR})")
    token.add_argument("--sub", required=True, help="subject (user id)")
    token.add_argument("--role", required=True, help="role, e.g. chair, specialist, auditor")
    token.add_argument("--dept", action="append", help="department(s), comma-separated or repeated")
    token.add_argument("--room", action="append", help="room id(s) granted")
    token.add_argument("--name", help="display name (default: the sub)")
    token.add_argument("--org", help="institution")
    token.add_argument("--amr", action="append", help="authentication methods (default pwd,otp)")
    token.add_argument("--no-mfa", action="store_true", help="leave out the second factor")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.add_argument(
        "--link", metavar="URL", help="print a link to the media test page on this server instead"
    )
    token.set_defaults(func=cmd_token)
