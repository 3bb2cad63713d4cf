"""`consilium recordings`, `consilium retention` and `consilium keys rotate`: the archive from a
terminal, through a running server's REST API with the caller's own token (an archivist's for
recordings, an admin's for keys and retention), so the same policy and audit apply as in the
browser. `recordings verify-bundle` alone works offline, on an exported bundle.

Long jobs (export, verify, rotation) show a progress bar (rich) on a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

DEFAULT_SERVER = "http://127.0.0.1:8443"
CHUNK = 256 * 1024


class ApiError(Exception):
    """The server refused or could not be reached; the message says why, in words."""


class Client:
    """A REST client of one server, with one token."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.server = (args.server or os.environ.get("CONSILIUM_SERVER") or DEFAULT_SERVER).rstrip(
            "/"
        )
        token = args.token or os.environ.get("CONSILIUM_TOKEN")
        if not token:
            raise ApiError("give --token or set CONSILIUM_TOKEN (your own token)")
        self.token = token
        self.context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None

    def open(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600
    ) -> Any:
        """The response object (caller closes it); `ApiError` on HTTP errors."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.server + path, data=data, headers=headers, method=method
        )
        try:
            return urllib.request.urlopen(request, timeout=timeout, context=self.context)
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            try:
                message = json.loads(raw).get("message", raw)
            except ValueError:
                message = raw
            raise ApiError(f"HTTP {exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach {self.server}: {exc.reason}") from None

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON request and its JSON answer."""
        with self.open(method, path, body) as response:
            return json.loads(response.read())

    def job(self, what: str, path: str, console: Console) -> Any:
        """POST to a long server-side job (verify, retention, rotation) under a spinner; its
        JSON answer."""
        with _bar(console) as progress:
            progress.add_task(what, total=None)
            return self.json("POST", path)

    def download(self, path: str, out: Path, console: Console) -> int:
        """Stream a response to `out` (written to a temp file, renamed at the end) with a
        progress bar; returns the bytes written."""
        temp = out.with_name(f".{out.name}.partial")
        written = 0
        with self.open("GET", path, timeout=3600) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _bar(console, download=True) as progress, open(temp, "wb") as file:
                task = progress.add_task(out.name, total=total)
                written = _copy(response, file, lambda n: progress.advance(task, n))
        os.replace(temp, out)
        return written


def _copy(source: Any, target: BinaryIO, advance: Callable[[int], None]) -> int:
    written = 0
    while chunk := source.read(CHUNK):
        target.write(chunk)
        written += len(chunk)
        advance(len(chunk))
    return written


def _bar(console: Console, *, download: bool = False) -> Progress:
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if download:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console, transient=not console.is_terminal)


def _query(**params: Any) -> str:
    kept = {k: v for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(kept) if kept else ""


def _quote(recording_id: str) -> str:
    return urllib.parse.quote(recording_id, safe="")


# -- the commands ---------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Search the archive."""
    query = _query(room=args.room, since=args.since, until=args.until,
                   participant=args.participant, department=args.department, case=args.case,
                   status=args.status)  # fmt: skip
    found = client.json("GET", "/api/recordings" + query)["recordings"]
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
    elif report["ok"] and report.get("status") == "failed":
        at = report.get("stopped_at_ms") or 0
        console.print(
            f"FAILED AT {at // 60000:02d}:{at // 1000 % 60:02d}.{at % 1000:03d} "
            f"({report.get('failure') or 'unknown'}): {args.recording}: the recording stopped "
            f"there by itself; the {report['segments_checked']} segments before it verified, "
            "manifest signed and in the audit log"
        )
    elif report["ok"]:
        note = " (interrupted: closed by crash recovery)" if report["interrupted"] else ""
        console.print(
            f"OK: {args.recording}: {report['segments_checked']} segments verified, manifest "
            f"signed and in the audit log{note}"
        )
    else:
        console.print(f"FAILED: {args.recording}")
        for problem in report["problems"]:
            console.print(f"  - {problem}")
    return 0 if report["ok"] else 1


def cmd_export(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Export a case or the whole meeting to a media file, with its annotations beside it."""
    query = _query(case=args.case, start_ms=args.start_ms, end_ms=args.end_ms)
    base = f"/api/recordings/{_quote(args.recording)}"
    size = client.download(f"{base}/export{query}", args.out, console)
    sidecar = args.out.with_name(args.out.name + ".annotations.json")
    client.download(f"{base}/annotations{query}", sidecar, console)
    console.print(f"wrote {args.out} ({size} bytes) and {sidecar}")
    return 0


def cmd_bundle(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Export a signed evidence bundle (media, annotations, consent, participants, audit)."""
    query = _query(case=args.case)
    size = client.download(
        f"/api/recordings/{_quote(args.recording)}/bundle{query}", args.out, console
    )
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


def cmd_verify_bundle(args: argparse.Namespace, console: Console) -> int:
    """Check a bundle offline: every member's hash, the signature, and (with --public-key)
    the signer. Exit 0 authentic and whole, 1 failed, 3 whole but the signer not checked."""
    from core.errors import ConfigError
    from recorder.bundle import verify_bundle
    from signaling.audit import load_public_key

    expected = None
    if args.public_key:
        try:
            expected = load_public_key(Path(args.public_key))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    report = verify_bundle(args.bundle, expected_public_key=expected)
    if not report.ok:
        console.print(f"FAILED: {args.bundle}")
        for problem in report.problems:
            console.print(f"  - {problem}")
        return 1
    if report.authenticated:
        console.print(
            f"OK: {args.bundle}: every member matches and it is signed by the expected key "
            f"{report.fingerprint}"
        )
        return 0
    console.print(
        f"INTACT, AUTHENTICITY NOT ESTABLISHED: {args.bundle}: every member matches the index, "
        f"signed by the key the bundle carries, {report.fingerprint}. Anyone who rewrites a "
        "bundle can re-sign it with a key of their own: compare that fingerprint with the "
        "hospital's audit key, or run again with --public-key <the audit public key PEM>."
    )
    return VERIFY_BUNDLE_NOT_AUTHENTICATED


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


def cmd_retention_run(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Shred every recording whose retention has ended (not those under legal hold)."""
    shredded = client.job("applying retention", "/api/retention/run", console)["shredded"]
    for recording_id in shredded:
        console.print(f"shredded: {recording_id}")
    console.print(f"{len(shredded)} recording(s) shredded")
    return 0


def cmd_keys_rotate(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Re-wrap every data key under a new key-encryption key (media untouched)."""
    result = client.job("re-wrapping data keys", "/api/keys/rotate", console)
    console.print(
        f"rotated: {result['old_kek_id']} -> {result['kek_id']}: {result['rewrapped']} re-wrapped, "
        f"{result['already_current']} already current"
    )
    return 0


def cmd_keys_data(args: argparse.Namespace, client: Client, console: Console) -> int:
    """The wrapped data keys (ids and KEKs; never key material)."""
    body = client.json("GET", "/api/keys")
    console.print(f"current KEK: {body['kek_id']}")
    table = Table("data key", "wrapped by", "created")
    for key in body["keys"]:
        table.add_row(key["id"], key["kek_id"], key["created"])
    console.print(table)
    return 0


def _run(command: Callable[[argparse.Namespace, Client, Console], int]) -> Any:
    def run(args: argparse.Namespace) -> int:
        console = Console(stderr=False)
        try:
            return command(args, Client(args), console)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help=f"server URL (or CONSILIUM_SERVER; {DEFAULT_SERVER})")
    parser.add_argument("--token", help="your token (or CONSILIUM_TOKEN)")
    parser.add_argument("--cacert", help="CA bundle to trust for the server's certificate")


def add_archive_parsers(sub: Any, keys_sub: Any) -> None:
    """`recordings ...`, `retention run`, and `keys rotate` / `keys data` on the parser."""
    rec = sub.add_parser("recordings", help="search, verify, export and hold recordings")
    rec_sub = rec.add_subparsers(dest="recordings_command", required=True, metavar="ACTION")

    lst = rec_sub.add_parser("list", help="search the archive (every criterion optional)")
    for name in ("room", "since", "until", "participant", "department", "case", "status"):
        lst.add_argument(f"--{name}")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    _server_options(lst)
    lst.set_defaults(func=_run(cmd_list))

    show = rec_sub.add_parser("show", help="one recording's tracks, cases and consent")
    show.add_argument("recording")
    _server_options(show)
    show.set_defaults(func=_run(cmd_show))

    verify = rec_sub.add_parser("verify", help="check every segment, the signature, the audit")
    verify.add_argument("recording")
    verify.add_argument("--json", action="store_true")
    _server_options(verify)
    verify.set_defaults(func=_run(cmd_verify))

    export = rec_sub.add_parser("export", help="a case or the meeting as WebM/Matroska")
    export.add_argument("recording")
    export.add_argument("--case", type=int, help="the case number (1, 2, ...) alone")
    export.add_argument("--start-ms", type=int)
    export.add_argument("--end-ms", type=int)
    export.add_argument("--out", type=Path, required=True, help="the media file to write")
    _server_options(export)
    export.set_defaults(func=_run(cmd_export))

    bundle = rec_sub.add_parser("bundle", help="a signed evidence bundle for a court")
    bundle.add_argument("recording")
    bundle.add_argument("--case", type=int)
    bundle.add_argument("--out", type=Path, required=True)
    _server_options(bundle)
    bundle.set_defaults(func=_run(cmd_bundle))

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
    # Fingerprints and paths are printed whole, never wrapped or cut to the terminal's width.
    vbundle.set_defaults(func=lambda args: cmd_verify_bundle(args, Console(soft_wrap=True)))

    hold = rec_sub.add_parser("hold", help="put a recording under legal hold")
    hold.add_argument("recording")
    hold.add_argument("--reason", required=True, help="matter or complaint reference")
    _server_options(hold)
    hold.set_defaults(func=_run(cmd_hold))

    release = rec_sub.add_parser("release", help="release a legal hold")
    release.add_argument("recording")
    _server_options(release)
    release.set_defaults(func=_run(cmd_release))

    retention = sub.add_parser("retention", help="apply the retention periods now")
    ret_sub = retention.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    run = ret_sub.add_parser("run", help="shred what has expired (legal holds are kept)")
    _server_options(run)
    run.set_defaults(func=_run(cmd_retention_run))

    rotate = keys_sub.add_parser("rotate", help="re-wrap every data key under a new KEK")
    _server_options(rotate)
    rotate.set_defaults(func=_run(cmd_keys_rotate))
    data = keys_sub.add_parser("data", help="list the wrapped data keys on a server")
    _server_options(data)
    data.set_defaults(func=_run(cmd_keys_data))
