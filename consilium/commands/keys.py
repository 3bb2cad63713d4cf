"""`consilium keys`: this node's keys. `list` and `export-audit-public` read the key folder
(public parts only); `rotate` and `data` ask a running server, with an admin's token."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from rich.console import Console
from rich.table import Table

from consilium.commands.client import Client, add_server_options, with_client
from consilium.commands.folders import DEFAULT_DATA_DIR, data_dir, key_dir


def fingerprint(pem_path: Path) -> str:
    """`SHA256:<hex>` of a PEM public key's DER SubjectPublicKeyInfo."""
    key = serialization.load_pem_public_key(pem_path.read_bytes())
    raw = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List this node's keys (public parts only)."""
    data = data_dir(args)
    rows: list[tuple[str, str, str]] = []
    audit_pub = key_dir(args) / "audit-ed25519.pub.pem"
    if audit_pub.exists():
        rows.append(("audit-signing", str(audit_pub), fingerprint(audit_pub)))
    jwks = data / "dev-idp" / "jwks.json"
    if jwks.exists():
        for key in json.loads(jwks.read_text()).get("keys", []):
            rows.append(("dev-idp-signing", str(jwks), f"kid={key.get('kid', '?')}"))
    for kek_file in sorted(key_dir(args).glob("kek*.json")):
        try:
            kek_id = str(json.loads(kek_file.read_text()).get("key_id", "?"))
        except (OSError, ValueError):
            kek_id = "unreadable"
        rows.append(("key-encryption", str(kek_file), f"key_id={kek_id}"))
    # Data keys: how many each KEK wraps (entries name their KEK; no key material is read).
    wrapped: dict[str, int] = {}
    for entry in sorted((data / "keyring").glob("[!.]*.key.json")):
        try:
            kek_id = str(json.loads(entry.read_text()).get("kek_id", "?"))
        except (OSError, ValueError):
            kek_id = "unreadable"
        wrapped[kek_id] = wrapped.get(kek_id, 0) + 1
    if not rows:
        print(f"no keys under {data} yet (they are created by `consilium serve`)")
        return 0
    for purpose, path, key_fingerprint in rows:
        print(f"{purpose:<16} {key_fingerprint}  {path}")
    for kek_id, count in sorted(wrapped.items()):
        print(f"{'data-keys':<16} {count} wrapped by key_id={kek_id}  {data / 'keyring'}")
    return 0


def cmd_keys_export_audit_public(args: argparse.Namespace) -> int:
    """Print the audit public key (PEM) so it can be kept apart from the server."""
    path = key_dir(args) / "audit-ed25519.pub.pem"
    if not path.exists():
        print(f"error: no audit key at {path}", file=sys.stderr)
        return 2
    sys.stdout.write(path.read_text())
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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium keys list`, `export-audit-public`, `rotate` and `data`."""
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

    rotate = keys_sub.add_parser("rotate", help="re-wrap every data key under a new KEK")
    add_server_options(rotate)
    rotate.set_defaults(func=with_client(cmd_keys_rotate))
    data = keys_sub.add_parser("data", help="list the wrapped data keys on a server")
    add_server_options(data)
    data.set_defaults(func=with_client(cmd_keys_data))
