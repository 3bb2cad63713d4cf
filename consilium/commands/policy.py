"""`consilium policy show`: validate and print a policy table."""

from __future__ import annotations

import argparse
from pathlib import Path

from signaling.policy import Policy


def cmd_policy_show(args: argparse.Namespace) -> int:
    """Print the policy table in force (or a file's), after validating it."""
    policy = Policy.load(Path(args.file) if args.file else None)
    print(policy.describe())
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium policy show [--file ...]`."""
    policy = sub.add_parser("policy", help="show or check a policy table")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    pshow = policy_sub.add_parser("show", help="validate and print a policy table")
    pshow.add_argument("--file", help="TOML policy file (default: the packaged one)")
    pshow.set_defaults(func=cmd_policy_show)
