"""`consilium`: the one command every user of Consilium starts from. Each subcommand is a module
of `consilium.commands`; this module builds the command line from them and dispatches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from consilium.commands import (
    audit,
    bot,
    doctor,
    drain,
    keys,
    policy,
    recordings,
    retention,
    revoke,
    serve,
    token,
    watermark,
)
from consilium.commands.usage import UsageError
from core import __version__
from core.errors import ConfigError

COMMANDS = (
    serve,
    token,
    audit,
    keys,
    revoke,
    policy,
    watermark,
    recordings,
    retention,
    bot,
    doctor,
    drain,
)
"""The subcommand modules, in the order `consilium --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="consilium",
        description="Consilium: self-hosted audio/video for multidisciplinary consultations.",
    )
    parser.add_argument("--version", action="version", version=f"consilium {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `consilium` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
