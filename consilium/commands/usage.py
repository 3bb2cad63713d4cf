"""The error a command raises for a value it cannot use; `consilium.cli.main` prints it."""

from __future__ import annotations


class UsageError(Exception):
    """A command-line value that cannot be used; printed, exit status 2."""
