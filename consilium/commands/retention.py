"""`consilium retention run`: apply the retention periods now, on a running server with an
admin's token (the same policy and audit as in the browser)."""

from __future__ import annotations

import argparse

from rich.console import Console

from consilium.commands.client import Client, add_server_options, with_client


def cmd_retention_run(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Shred every recording whose retention has ended (not those under legal hold)."""
    shredded = client.job("applying retention", "/api/retention/run", console)["shredded"]
    for recording_id in shredded:
        console.print(f"shredded: {recording_id}")
    console.print(f"{len(shredded)} recording(s) shredded")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium retention run`."""
    retention = sub.add_parser("retention", help="apply the retention periods now")
    ret_sub = retention.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    run = ret_sub.add_parser("run", help="shred what has expired (legal holds are kept)")
    add_server_options(run)
    run.set_defaults(func=with_client(cmd_retention_run))
