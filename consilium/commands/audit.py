"""`consilium audit verify` and `consilium audit show`: the tamper-evident audit log, read
offline from the node's data folder."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from consilium.commands.folders import DEFAULT_DATA_DIR, data_dir, key_dir
from consilium.commands.keys import fingerprint
from consilium.commands.usage import UsageError
from core.errors import ConfigError
from signaling.audit import PUBLIC_KEY_FILE, iter_entries, load_public_key, parse_time
from signaling.auditformat import AuditEntry
from signaling.auditverify import compare_with_witness, verify_log
from signaling.siem import parse_witnessed_entries
from signaling.witness import parse_witness

AUDIT_NOT_AUTHENTICATED = 3
"""`audit verify`'s exit status for a log that is intact under the key found beside it, when
no --public-key was given: who signed it is not established (0 intact under the given key,
1 tampering found, 2 usage or configuration error)."""


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit log's hash chain and signed checkpoints (and, with --witness, that it
    still holds every checkpoint and entry the witness received); exit 1 on any tampering."""
    data = data_dir(args)
    key_path = Path(args.public_key) if args.public_key else key_dir(args) / PUBLIC_KEY_FILE
    try:
        public_key = load_public_key(key_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = verify_log(data / "audit", public_key)
    failed = not report.ok
    if report.ok:
        print(f"log: {report.detail}")
    else:
        print(f"FAILED: {report.first_bad}", file=sys.stderr)
        print(report.detail, file=sys.stderr)
    if args.witness:
        try:
            witnessed = list(parse_witness(Path(args.witness)))
            siem_entries = list(parse_witnessed_entries(Path(args.witness)))
        except OSError as exc:
            print(f"error: cannot read the witness file: {exc}", file=sys.stderr)
            return 2
        compared = compare_with_witness(data / "audit", public_key, witnessed, siem_entries)
        for problem in compared.problems:
            print(f"FAILED: witness: {problem}", file=sys.stderr)
        failed = failed or not compared.ok
        if compared.ok:
            print(
                f"witness: the log holds all {compared.matched} witnessed checkpoint(s); "
                f"{compared.unwitnessed} entries after the last one are not witnessed yet; "
                f"it holds all {compared.entries_matched} entries the witness received"
            )
    if failed:
        return 1
    key_fingerprint = fingerprint(key_path)
    if args.public_key:
        print(f"OK: intact, signed by the given key {key_fingerprint}")
        return 0
    print(
        f"INTACT, AUTHENTICITY NOT ESTABLISHED: checked with the key found at {key_path} "
        f"({key_fingerprint}), which whoever can rewrite the log may have replaced too; run again "
        "with --public-key <the audit public key kept apart from this server>"
    )
    return AUDIT_NOT_AUTHENTICATED


def _time(value: str | None) -> datetime | None:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def entry_line(entry: AuditEntry) -> str:
    """One entry as `audit show` prints it: sequence, time, action, outcome, who, where, why,
    then its other fields (those without a value left out)."""
    extra = " ".join(f"{k}={v}" for k, v in entry.fields.items() if v is not None)
    return (
        f"{entry.seq:>7} {entry.ts} {entry.action:<18} {entry.outcome:<5} "
        f"sub={entry.sub or '-'} room={entry.room or '-'} "
        f"reason={entry.reason or '-'} {extra}".rstrip()
    )


def cmd_audit_show(args: argparse.Namespace) -> int:
    """List audit entries, filtered."""
    count = 0
    for entry in iter_entries(
        data_dir(args) / "audit",
        sub=args.sub,
        room=args.room,
        action=args.action,
        since=_time(args.since),
        until=_time(args.until),
    ):
        print(json.dumps(asdict(entry), ensure_ascii=False) if args.json else entry_line(entry))
        count += 1
        if args.limit and count >= args.limit:
            break
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium audit verify` and `consilium audit show`."""
    audit = sub.add_parser("audit", help="verify or read the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check the hash chain and signed checkpoints")
    verify.description = (
        "Exit status: 0 intact and signed by the --public-key key; 1 tampering found (or the "
        "log misses a witnessed checkpoint); 2 usage error; 3 intact, but without --public-key "
        "who signed it is not established."
    )
    verify.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    verify.add_argument("--key-dir", help="the node's key folder (default <data folder>/keys)")
    verify.add_argument(
        "--public-key", help="the audit public key (PEM) kept apart from the server"
    )
    verify.add_argument(
        "--witness",
        metavar="FILE",
        help="the witness's (SIEM's) copy of the checkpoints and entries (syslog file)",
    )
    verify.set_defaults(func=cmd_audit_verify)
    show = audit_sub.add_parser("show", help="list entries with filters")
    show.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    show.add_argument("--sub")
    show.add_argument("--room")
    show.add_argument("--action")
    show.add_argument("--since", help="ISO-8601 time with zone")
    show.add_argument("--until", help="ISO-8601 time with zone")
    show.add_argument("--limit", type=int, default=0)
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(func=cmd_audit_show)
