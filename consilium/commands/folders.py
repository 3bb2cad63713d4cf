"""The data and key folders the local commands read: flag, environment variable, default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_DATA_DIR = "./consilium-data"


def data_dir(args: argparse.Namespace) -> Path:
    """The node's data folder: --data-dir, CONSILIUM_DATA_DIR, or ./consilium-data."""
    return Path(args.data_dir or os.environ.get("CONSILIUM_DATA_DIR") or DEFAULT_DATA_DIR)


def key_dir(args: argparse.Namespace) -> Path:
    """The node's key folder: --key-dir, CONSILIUM_KEY_DIR, or `<data folder>/keys`."""
    chosen = getattr(args, "key_dir", None) or os.environ.get("CONSILIUM_KEY_DIR")
    return Path(chosen) if chosen else data_dir(args) / "keys"
