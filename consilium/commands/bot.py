"""`consilium bot`: headless participants for smoke and load tests. The parser is
`bot.command`'s, each bot `bot.runner`'s; this module hands it the development identity provider
to mint tokens."""

from __future__ import annotations

import argparse

from bot.command import add_bot_parser
from signaling.devidp import DevelopmentIdP


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium bot`, minting its tokens (for --count) with the development IdP."""
    # The bot mints development tokens through this callable: bot never imports signaling.
    add_bot_parser(sub, mint=DevelopmentIdP.load_or_create)
