"""`consilium recordings`: the archive from a terminal (list, show, verify, export, bundle, hold,
release), through a running server's REST API with the caller's own token (an archivist's), so
the same policy and audit apply as in the browser. `recordings verify-bundle` alone works
offline, on an exported bundle.

Long jobs (export, verify) show a progress bar (rich) on a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from consilium.commands.client import Client, add_server_options, query, with_client
from core.errors import ConfigError
from signaling.audit import load_public_key

if TYPE_CHECKING:  # recorder.bundle pulls in av; see cmd_bundle
    from recorder.bundle import BundleReport


def _quote(recording_id: str) -> str:
    return urllib.parse.quote(recording_id, safe="")


def cmd_list(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Search the archive."""
    found_query = query(room=args.room, since=args.since, until=args.until,
                        participant=args.participant, department=args.department, case=args.case,
                        status=args.status)  # fmt: skip
    found = client.json("GET", "/api/recordings" + found_query)["recordings"]
    if args.json:
        for summary in found:
            print(json.dumps(summary, ensure_ascii=False))
        return 0
    table = Table("recording", "room", "started", "min", "status", "class", "cases", "held")
    for s in found:
        table.add_row(s["recording_id"], s["room_id"], s["started"] or "",
                      f"{s['duration_ms'] / 60000:.1f}", s["status"], s["recording_class"],
                      ", ".join(s["cases"]), "yes" if s["held"] else "")  # fmt: skip
    console.print(table)
    console.print(f"{len(found)} recording(s)")
    return 0


def cmd_show(args: argparse.Namespace, client: Client, console: Console) -> int:
    """One recording's details."""
    body = client.json("GET", f"/api/recordings/{_quote(args.recording)}")
    print(json.dumps(body, indent=1, ensure_ascii=False))
    return 0


def cmd_verify(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Verify a recording on the server: every segment, the signature, the audit log."""
    path = f"/api/recordings/{_quote(args.recording)}/verify"
    report = client.job(f"verifying {args.recording}", path, console)
    if args.json:
        print(json.dumps(report))
    else:
        for line in verify_verdict(args.recording, report):
            console.print(line)
    return 0 if report["ok"] else 1


def verify_verdict(recording_id: str, report: dict[str, Any]) -> list[str]:
    """What `recordings verify` tells a person about the server's verify report: a recording
    that stopped by itself (intact up to the failure, with where and why), an intact one
    (noting crash recovery), or the problems found."""
    if report["ok"] and report.get("status") == "failed":
        at = report.get("stopped_at_ms") or 0
        return [
            f"FAILED AT {at // 60000:02d}:{at // 1000 % 60:02d}.{at % 1000:03d} "
            f"({report.get('failure') or 'unknown'}): {recording_id}: the recording stopped "
            f"there by itself; the {report['segments_checked']} segments before it verified, "
            "manifest signed and in the audit log"
        ]
    if report["ok"]:
        note = " (interrupted: closed by crash recovery)" if report["interrupted"] else ""
        lines = [
            f"OK: {recording_id}: {report['segments_checked']} segments verified, manifest "
            f"signed and in the audit log{note}"
        ]
        continues = report.get("continues")
        if continues:
            why = "was lost" if continues["reason"] == "node_lost" else "was drained"
            lines.append(
                f"GAP: it continues recording {continues['recording_id']}, recorded on node "
                f"{continues['node']} until that node {why}: up to {continues['gap_max_s']} s "
                "of the meeting between the two were not recorded"
            )
        return lines
    return [f"FAILED: {recording_id}", *(f"  - {problem}" for problem in report["problems"])]


def cmd_export(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Export a case or the whole meeting to a media file, with its annotations beside it."""
    part = query(case=args.case, start_ms=args.start_ms, end_ms=args.end_ms)
    base = f"/api/recordings/{_quote(args.recording)}"
    size = client.download(f"{base}/export{part}", args.out, console)
    sidecar = args.out.with_name(args.out.name + ".annotations.json")
    client.download(f"{base}/annotations{part}", sidecar, console)
    console.print(f"wrote {args.out} ({size} bytes) and {sidecar}")
    return 0


def cmd_bundle(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Export a signed evidence bundle (media, annotations, consent, participants, audit)."""
    size = client.download(
        f"/api/recordings/{_quote(args.recording)}/bundle{query(case=args.case)}", args.out, console
    )
    # Imported here: recorder.bundle pulls in av, which `consilium --help` should not wait for.
    from recorder.bundle import signer_fingerprint

    signer = signer_fingerprint(args.out) or "unknown"
    console.print(
        f"wrote {args.out} ({size} bytes), signed by key {signer}. Check it anywhere against "
        "the hospital's audit public key (`consilium keys export-audit-public` on the server, "
        "kept apart from it):\n"
        f"  consilium recordings verify-bundle {args.out} --public-key audit-ed25519.pub.pem",
        soft_wrap=True,
    )
    return 0


VERIFY_BUNDLE_NOT_AUTHENTICATED = 3
"""`verify-bundle`'s exit status for a bundle that is whole but whose signer was not checked
(no --public-key): 0 is whole and signed by the given key, 1 is failed, 2 a usage error."""


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    """Check a bundle offline: every member's hash, the signature, and (with --public-key)
    the signer. Exit 0 authentic and whole, 1 failed, 3 whole but the signer not checked."""
    # Imported here: recorder.bundle pulls in av, which `consilium --help` should not wait for.
    from recorder.bundle import verify_bundle

    # Fingerprints and paths are printed whole, never wrapped or cut to the terminal's width.
    console = Console(soft_wrap=True)
    expected = None
    if args.public_key:
        try:
            expected = load_public_key(Path(args.public_key))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    status, lines = bundle_verdict(verify_bundle(args.bundle, expected_public_key=expected))
    for line in lines:
        console.print(line)
    return status


def bundle_verdict(report: BundleReport) -> tuple[int, list[str]]:
    """`verify-bundle`'s exit status and what it tells a person: failed (with every problem),
    whole and signed by the expected key, or whole with its signer not established."""
    if not report.ok:
        return 1, [f"FAILED: {report.path}", *(f"  - {problem}" for problem in report.problems)]
    if report.authenticated:
        return 0, [
            f"OK: {report.path}: every member matches and it is signed by the expected key "
            f"{report.fingerprint}"
        ]
    return VERIFY_BUNDLE_NOT_AUTHENTICATED, [
        f"INTACT, AUTHENTICITY NOT ESTABLISHED: {report.path}: every member matches the index, "
        f"signed by the key the bundle carries, {report.fingerprint}. Anyone who rewrites a "
        "bundle can re-sign it with a key of their own: compare that fingerprint with the "
        "hospital's audit key, or run again with --public-key <the audit public key PEM>."
    ]


def cmd_hold(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Put a recording under legal hold."""
    held = client.json(
        "POST", f"/api/recordings/{_quote(args.recording)}/hold", {"reason": args.reason}
    )
    console.print(f"held: {held['recording_id']} since {held['since']} ({held['reason']})")
    return 0


def cmd_release(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Release a legal hold."""
    client.json("DELETE", f"/api/recordings/{_quote(args.recording)}/hold")
    console.print(f"released: {args.recording} (retention applies again)")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium recordings ...`, each action but verify-bundle talking to a server."""
    rec = sub.add_parser("recordings", help="search, verify, export and hold recordings")
    rec_sub = rec.add_subparsers(dest="recordings_command", required=True, metavar="ACTION")

    lst = rec_sub.add_parser("list", help="search the archive (every criterion optional)")
    for name in ("room", "since", "until", "participant", "department", "case", "status"):
        lst.add_argument(f"--{name}")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    add_server_options(lst)
    lst.set_defaults(func=with_client(cmd_list))

    show = rec_sub.add_parser("show", help="one recording's tracks, cases and consent")
    show.add_argument("recording")
    add_server_options(show)
    show.set_defaults(func=with_client(cmd_show))

    verify = rec_sub.add_parser("verify", help="check every segment, the signature, the audit")
    verify.add_argument("recording")
    verify.add_argument("--json", action="store_true")
    add_server_options(verify)
    verify.set_defaults(func=with_client(cmd_verify))

    export = rec_sub.add_parser("export", help="a case or the meeting as WebM/Matroska")
    export.add_argument("recording")
    export.add_argument("--case", type=int, help="the case number (1, 2, ...) alone")
    export.add_argument("--start-ms", type=int)
    export.add_argument("--end-ms", type=int)
    export.add_argument("--out", type=Path, required=True, help="the media file to write")
    add_server_options(export)
    export.set_defaults(func=with_client(cmd_export))

    bundle = rec_sub.add_parser("bundle", help="a signed evidence bundle for a court")
    bundle.add_argument("recording")
    bundle.add_argument("--case", type=int)
    bundle.add_argument("--out", type=Path, required=True)
    add_server_options(bundle)
    bundle.set_defaults(func=with_client(cmd_bundle))

    vbundle = rec_sub.add_parser(
        "verify-bundle",
        help="check a bundle offline",
        description="Exit status: 0 whole and signed by the --public-key key; 1 failed; "
        "2 usage error; 3 whole, but without --public-key who signed it is not established.",
    )
    vbundle.add_argument("bundle", type=Path)
    vbundle.add_argument(
        "--public-key", help="the hospital's audit public key (PEM) the signer must match"
    )
    vbundle.set_defaults(func=cmd_verify_bundle)

    hold = rec_sub.add_parser("hold", help="put a recording under legal hold")
    hold.add_argument("recording")
    hold.add_argument("--reason", required=True, help="matter or complaint reference")
    add_server_options(hold)
    hold.set_defaults(func=with_client(cmd_hold))

    release = rec_sub.add_parser("release", help="release a legal hold")
    release.add_argument("recording")
    add_server_options(release)
    release.set_defaults(func=with_client(cmd_release))
