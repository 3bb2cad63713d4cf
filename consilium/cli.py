"""`consilium`: the one command every user of Consilium starts from."""

from __future__ import annotations

import argparse
import gc
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.runner import add_bot_parser
from consilium.recordings import add_archive_parsers
from core import __version__
from core.errors import ConfigError
from signaling.devidp import DevelopmentIdP

DEFAULT_DATA_DIR = "./consilium-data"


class UsageError(Exception):
    """A command-line value that cannot be used; printed, exit status 2."""


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("CONSILIUM_DATA_DIR") or DEFAULT_DATA_DIR)


def _key_dir(args: argparse.Namespace) -> Path:
    """The node's key folder: --key-dir, CONSILIUM_KEY_DIR, or `<data folder>/keys`."""
    chosen = getattr(args, "key_dir", None) or os.environ.get("CONSILIUM_KEY_DIR")
    return Path(chosen) if chosen else _data_dir(args) / "keys"


# -- serve ------------------------------------------------------------------------------------


GC_GEN0_THRESHOLD = 50_000
"""Container allocations between two young-generation collections (CPython's default: 700)."""


def _tune_gc() -> None:
    """Collect cycles less often in a long-running server: the startup objects (modules,
    policy, keys) move to the permanent generation and young collections run every 50,000
    allocations instead of 700. Measured with bench/forwarding.py: at default settings about a
    tenth of the SFU's CPU went to the collector while forwarding, nearly none after."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run a node: HTTP(S) + signalling WebSocket + web client."""
    from aiohttp import web

    from signaling import logs
    from signaling.server import NODE, build_node, create_app
    from signaling.settings import is_loopback, load_settings

    flags: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "key_dir": args.key_dir,
        "redis": args.redis,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "public_url": args.public_url,
        "allowed_origins": args.allowed_origin,
        "policy_file": args.policy,
        "node_id": args.node_id,
        "log_level": args.log_level,
    }
    settings = load_settings(flags, config_file=args.config)
    logs.configure(settings.log_level)
    ssl_context = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ssl_context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS certificate/key: {exc}") from None
    node = build_node(settings)
    app = create_app(settings, node)
    _tune_gc()

    async def on_shutdown(app: web.Application) -> None:
        await app[NODE].rooms.close_all()

    app.on_shutdown.append(on_shutdown)

    url = settings.own_origin + "/"
    print(f"Consilium {__version__} serving on {url}", flush=True)
    if not settings.tls and is_loopback(settings.host):
        print(
            "warning: plain HTTP on loopback only; use --tls-cert/--tls-key for anything else",
            flush=True,
        )
    if node.dev_idp is not None:
        print(
            "DEVELOPMENT MODE: tokens are signed by a development identity provider whose key is "
            f"in {settings.data_dir / 'dev-idp'}.\n"
            "  Not for patient data. Set CONSILIUM_JWKS (or CONSILIUM_OIDC_ISSUER) and "
            "CONSILIUM_JWT_ISSUER to use the hospital identity provider.\n"
            "  Mint a token:  consilium token --data-dir "
            f"{settings.data_dir} --sub dr-li --role chair --dept cardiology --room mdt-1\n"
            "  Media test page (two tabs see each other): add --link "
            f"{settings.own_origin} to that command and open the link it prints.\n"
            f"  Or open {url}dev in a browser on this machine to mint links for any role.",
            flush=True,
        )
    print(f"Open {url}", flush=True)
    from signaling.logs import AccessLogger

    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        ssl_context=ssl_context,
        access_log_class=AccessLogger,
        print=None,
        shutdown_timeout=5.0,
    )
    return 0


# -- token ------------------------------------------------------------------------------------


def _split(values: Sequence[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or ():
        out.extend(item.strip() for item in value.split(",") if item.strip())
    return out


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a token with the development identity provider (development mode only)."""
    from signaling.devidp import DevelopmentIdP
    from signaling.policy import ROLES

    if args.role not in ROLES:
        print(f"error: unknown role {args.role!r}; one of {', '.join(ROLES)}", file=sys.stderr)
        return 2
    idp = DevelopmentIdP.load_or_create(_data_dir(args))
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


# -- audit ------------------------------------------------------------------------------------


AUDIT_NOT_AUTHENTICATED = 3
"""`audit verify`'s exit status for a log that is intact under the key found beside it, when
no --public-key was given: who signed it is not established (0 intact under the given key,
1 tampering found, 2 usage or configuration error)."""


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit log's hash chain and signed checkpoints (and, with --witness, that it
    still holds every checkpoint the witness received); exit 1 on any tampering."""
    from signaling.audit import PUBLIC_KEY_FILE, compare_with_witness, load_public_key, verify_log
    from signaling.witness import parse_witness

    data_dir = _data_dir(args)
    key_path = Path(args.public_key) if args.public_key else _key_dir(args) / PUBLIC_KEY_FILE
    try:
        public_key = load_public_key(key_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = verify_log(data_dir / "audit", public_key)
    failed = not report.ok
    if report.ok:
        print(f"log: {report.detail}")
    else:
        print(f"FAILED: {report.first_bad}", file=sys.stderr)
        print(report.detail, file=sys.stderr)
    if args.witness:
        try:
            witnessed = list(parse_witness(Path(args.witness)))
        except OSError as exc:
            print(f"error: cannot read the witness file: {exc}", file=sys.stderr)
            return 2
        compared = compare_with_witness(data_dir / "audit", public_key, witnessed)
        for problem in compared.problems:
            print(f"FAILED: witness: {problem}", file=sys.stderr)
        failed = failed or not compared.ok
        if compared.ok:
            print(
                f"witness: the log holds all {compared.matched} witnessed checkpoint(s); "
                f"{compared.unwitnessed} entries after the last one are not witnessed yet"
            )
    if failed:
        return 1
    fingerprint = _fingerprint(key_path)
    if args.public_key:
        print(f"OK: intact, signed by the given key {fingerprint}")
        return 0
    print(
        f"INTACT, AUTHENTICITY NOT ESTABLISHED: checked with the key found at {key_path} "
        f"({fingerprint}), which whoever can rewrite the log may have replaced too; run again "
        "with --public-key <the audit public key kept apart from this server>"
    )
    return AUDIT_NOT_AUTHENTICATED


def _time(value: str | None) -> datetime | None:
    from signaling.audit import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_audit_show(args: argparse.Namespace) -> int:
    """List audit entries, filtered."""
    from dataclasses import asdict

    from signaling.audit import iter_entries

    count = 0
    for entry in iter_entries(
        _data_dir(args) / "audit",
        sub=args.sub,
        room=args.room,
        action=args.action,
        since=_time(args.since),
        until=_time(args.until),
    ):
        if args.json:
            print(json.dumps(asdict(entry), ensure_ascii=False))
        else:
            extra = " ".join(f"{k}={v}" for k, v in entry.fields.items() if v is not None)
            print(
                f"{entry.seq:>7} {entry.ts} {entry.action:<18} {entry.outcome:<5} "
                f"sub={entry.sub or '-'} room={entry.room or '-'} "
                f"reason={entry.reason or '-'} {extra}".rstrip()
            )
        count += 1
        if args.limit and count >= args.limit:
            break
    return 0


# -- keys -------------------------------------------------------------------------------------


def _fingerprint(pem_path: Path) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(pem_path.read_bytes())
    raw = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List this node's keys (public parts only)."""
    data_dir = _data_dir(args)
    rows: list[tuple[str, str, str]] = []
    audit_pub = _key_dir(args) / "audit-ed25519.pub.pem"
    if audit_pub.exists():
        rows.append(("audit-signing", str(audit_pub), _fingerprint(audit_pub)))
    jwks = data_dir / "dev-idp" / "jwks.json"
    if jwks.exists():
        for key in json.loads(jwks.read_text()).get("keys", []):
            rows.append(("dev-idp-signing", str(jwks), f"kid={key.get('kid', '?')}"))
    for kek_file in sorted(_key_dir(args).glob("kek*.json")):
        try:
            kek_id = str(json.loads(kek_file.read_text()).get("key_id", "?"))
        except (OSError, ValueError):
            kek_id = "unreadable"
        rows.append(("key-encryption", str(kek_file), f"key_id={kek_id}"))
    # Data keys: how many each KEK wraps (entries name their KEK; no key material is read).
    wrapped: dict[str, int] = {}
    for entry in sorted((data_dir / "keyring").glob("[!.]*.key.json")):
        try:
            kek_id = str(json.loads(entry.read_text()).get("kek_id", "?"))
        except (OSError, ValueError):
            kek_id = "unreadable"
        wrapped[kek_id] = wrapped.get(kek_id, 0) + 1
    if not rows:
        print(f"no keys under {data_dir} yet (they are created by `consilium serve`)")
        return 0
    for purpose, path, fingerprint in rows:
        print(f"{purpose:<16} {fingerprint}  {path}")
    for kek_id, count in sorted(wrapped.items()):
        print(f"{'data-keys':<16} {count} wrapped by key_id={kek_id}  {data_dir / 'keyring'}")
    return 0


def cmd_keys_export_audit_public(args: argparse.Namespace) -> int:
    """Print the audit public key (PEM) so it can be kept apart from the server."""
    path = _key_dir(args) / "audit-ed25519.pub.pem"
    if not path.exists():
        print(f"error: no audit key at {path}", file=sys.stderr)
        return 2
    sys.stdout.write(path.read_text())
    return 0


# -- revoke -----------------------------------------------------------------------------------


def cmd_revoke(args: argparse.Namespace) -> int:
    """Call `POST /api/revocations` on a running server."""
    token = args.token or os.environ.get("CONSILIUM_TOKEN")
    if not token:
        print(
            "error: give --token or set CONSILIUM_TOKEN (a token allowed to revoke)",
            file=sys.stderr,
        )
        return 2
    body: dict[str, Any] = {"reason": args.reason or ""}
    if args.jti:
        body["jti"] = args.jti
    else:
        body["sub"] = args.sub
    request = urllib.request.Request(
        args.server.rstrip("/") + "/api/revocations",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"error: HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {args.server}: {exc.reason}", file=sys.stderr)
        return 1


# -- policy -----------------------------------------------------------------------------------


def cmd_policy_show(args: argparse.Namespace) -> int:
    """Print the policy table in force (or a file's), after validating it."""
    from signaling.policy import Policy

    policy = Policy.load(Path(args.file) if args.file else None)
    print(policy.describe())
    return 0


# -- watermark --------------------------------------------------------------------------------


def cmd_watermark_identify(args: argparse.Namespace) -> int:
    """Name the viewer, room and time hidden in a served image; exit 1 if it carries no mark."""
    from imaging.sniff import DEFAULT_LIMITS, ImageTooLarge, UnsupportedImage
    from imaging.watermark import identify, load_watermark_key

    key = load_watermark_key(_data_dir(args))  # never created here: a new key finds nothing
    try:
        with open(args.file, "rb") as image:
            data = image.read(DEFAULT_LIMITS.max_bytes + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc}") from None
    if len(data) > DEFAULT_LIMITS.max_bytes:
        raise UsageError(f"{args.file} is larger than any image Consilium serves")
    try:
        mark = identify(data, key)
    except (UnsupportedImage, ImageTooLarge) as exc:
        raise UsageError(f"{args.file}: {exc.message}") from None
    if mark is None:
        if args.json:
            print(json.dumps({"found": False}))
        else:
            print(f"no watermark found in {args.file} (under this server's key)", file=sys.stderr)
        return 1
    found = {
        "found": True,
        "viewer": mark.viewer,
        "room": mark.room,
        "time": mark.time.isoformat().replace("+00:00", "Z"),
        "truncated": mark.truncated,
    }
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
    else:
        cut = " (cut short)" if mark.truncated else ""
        print(f"viewer: {mark.viewer}{cut}\nroom:   {mark.room}\ntime:   {found['time']}")
    return 0


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="consilium",
        description="Consilium: self-hosted audio/video for multidisciplinary consultations.",
    )
    parser.add_argument("--version", action="version", version=f"consilium {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (signalling, API, web client)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8443)")
    serve.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    serve.add_argument("--key-dir", help="key folder, apart from the data (default <data>/keys)")
    serve.add_argument("--redis", metavar="URL", help="Redis URL for shared state across nodes")
    serve.add_argument("--tls-cert", help="PEM certificate chain for HTTPS")
    serve.add_argument("--tls-key", help="PEM private key for HTTPS")
    serve.add_argument("--public-url", help="the URL users open, if not host:port")
    serve.add_argument(
        "--allowed-origin", action="append", help="browser origin allowed to connect (repeat)"
    )
    serve.add_argument("--policy", help="policy table (TOML); default: the packaged one")
    serve.add_argument("--node-id", help="stable node name in a cluster")
    serve.add_argument("--config", type=Path, help="TOML settings file (or CONSILIUM_CONFIG)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

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
        "--witness", metavar="FILE", help="the witness's copy of the checkpoints (syslog file)"
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

    keys = sub.add_parser("keys", help="list and export this node's keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    klist = keys_sub.add_parser("list", help="list keys with fingerprints")
    klist.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    klist.add_argument("--key-dir", help="the node's key folder (default <data folder>/keys)")
    klist.set_defaults(func=cmd_keys_list)
    kexport = keys_sub.add_parser(
        "export-audit-public", help="print the audit public key to keep it off this server"
    )
    kexport.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    kexport.add_argument("--key-dir", help="the node's key folder (default <data folder>/keys)")
    kexport.set_defaults(func=cmd_keys_export_audit_public)

    revoke = sub.add_parser("revoke", help="revoke a token (jti) or an identity (sub) everywhere")
    revoke.add_argument("--server", required=True, help="server URL, e.g. https://mdt.hospital")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--jti", help="token id to revoke")
    target.add_argument("--sub", help="identity to revoke")
    revoke.add_argument("--reason", help="why (goes to the audit log)")
    revoke.add_argument("--token", help="your token (or CONSILIUM_TOKEN)")
    revoke.add_argument("--cacert", help="CA bundle to trust for the server's certificate")
    revoke.set_defaults(func=cmd_revoke)

    policy = sub.add_parser("policy", help="show or check a policy table")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    pshow = policy_sub.add_parser("show", help="validate and print a policy table")
    pshow.add_argument("--file", help="TOML policy file (default: the packaged one)")
    pshow.set_defaults(func=cmd_policy_show)

    mark = sub.add_parser("watermark", help="find out whom a leaked image was shown to")
    mark_sub = mark.add_subparsers(dest="watermark_command", required=True, metavar="ACTION")
    midentify = mark_sub.add_parser(
        "identify", help="print the viewer, room and time hidden in a served image"
    )
    midentify.add_argument("file", type=Path, help="the PNG or JPEG image")
    midentify.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    midentify.add_argument("--json", action="store_true", help="print one JSON object")
    midentify.set_defaults(func=cmd_watermark_identify)

    add_archive_parsers(sub, keys_sub)

    # The bot mints development tokens through this callable: sfu never imports signaling.
    add_bot_parser(sub, mint=DevelopmentIdP.load_or_create)
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
