"""A signed evidence bundle: one file holding an exported recording and everything needed to
show, offline and years later, that it is what the hospital recorded.

The bundle is a **ZIP** file. ZIP rather than tar because a court's or a solicitor's office
opens a ZIP with what every operating system ships, and because its central directory lets a
verifier list and hash each member without unpacking to disk. The media member is stored
(already compressed), the JSON members deflated. Members:

    media/<name>.webm        the export (`recorder.export`): remuxed, never re-encoded
    annotations.json         the export's sidecar: annotation and chat events, cases, consent
    consent.json             the manifest's consent records
    participants.json        the manifest's participants
    manifest.json            the recording's signed manifest, byte for byte as stored
    audit.json               the meeting's audit entries, as the caller took them from the log
    images/<id>-frame<N>.png the shared images the annotations were drawn on, as stored
    bundle.json              the index, signed: every other member's SHA-256 and size

`bundle.json` is signed with the node's Ed25519 audit key over its canonical JSON (sorted keys,
no spaces, without the `signature` field) and carries the public key and its fingerprint
(`SHA256:` and the hex SHA-256 of the key's DER SubjectPublicKeyInfo, as `consilium keys list`
prints it). `verify_bundle` checks all of it with nothing but the file: every hash and size, no
member missing or added, the signature, and (given one) that the signer was the expected key.

The key inside the bundle only shows the file is whole: whoever rewrites a bundle can re-sign it
with a key of their own. Only a comparison with the hospital's audit public key, kept apart from
the server, shows who signed it; a report says which of the two was established
(`BundleReport.authenticated`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.canonical import canonical_json, stamp_s
from core.errors import IntegrityError
from recorder.export import ExportResult, ProgressCallback, export_recording
from recorder.manifest import (
    IMAGES_STREAM,
    MANIFEST_NAME,
    RecordingManifest,
    load_manifest,
    read_manifest,
)
from recorder.verify import iter_packets

BUNDLE_FORMAT = "consilium-evidence-bundle/1"
"""Names the bundle's layout; a verifier refuses any other."""
INDEX_NAME = "bundle.json"
"""The signed index's member name."""
_READ_SIZE = 1 << 20


class BundleIntegrityError(IntegrityError):
    """An evidence bundle failed verification; the message lists what failed."""


def public_key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """`SHA256:<hex>` of the key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"


@dataclass
class BundleResult:
    """What `build_bundle` wrote."""

    path: Path
    """The bundle file."""
    members: dict[str, str]
    """Every member but the index: name → hex SHA-256."""
    fingerprint: str
    """The signing key's fingerprint."""
    export: ExportResult
    """The export inside it."""


@dataclass
class BundleReport:
    """The outcome of `verify_bundle`."""

    path: Path
    """The bundle checked."""
    format: str | None = None
    """Its index's format, None if the index could not be read."""
    recording_id: str | None = None
    """The recording it holds, as its index says."""
    fingerprint: str | None = None
    """The signing key's fingerprint, as its index states it."""
    members_checked: int = 0
    """Members whose hash and size matched."""
    authenticated: bool = False
    """Whether the signer was checked against an expected key given by the caller (and was
    it). False without one: the bundle may be intact, but who signed it is not established."""
    problems: list[str] = field(default_factory=list)
    """Every failure found, one sentence each; empty when the bundle is intact."""

    @property
    def ok(self) -> bool:
        """Whether nothing failed."""
        return not self.problems

    def check(self) -> BundleReport:
        """Raise `BundleIntegrityError` naming every problem, if there is one."""
        if self.problems:
            raise BundleIntegrityError(
                f"bundle {self.path.name} failed verification: " + "; ".join(self.problems)
            )
        return self


def _image_members(
    directory: Path, data_key: bytes, manifest: RecordingManifest
) -> list[tuple[str, Path | bytes]]:
    """The shared images stored with the recording, one member per frame (as stored)."""
    if not manifest.streams.get(IMAGES_STREAM):
        return []
    found: dict[str, bytes] = {}
    for record in iter_packets(directory, data_key, None, without_track=IMAGES_STREAM):
        header, _, data = record.data.partition(b"\n")
        try:
            meta = json.loads(header)
            extension = "jpg" if meta.get("media_type") == "image/jpeg" else "png"
            name = f"images/{meta['image_id']}-frame{int(meta['frame'])}.{extension}"
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"images record at {record.arrival_ms} ms: {error}") from None
        found[name] = data
    return list(found.items())


class _Stages:
    """One (done, total) progress over the export's records and then the bundle's members."""

    def __init__(self, callback: ProgressCallback | None, members: int) -> None:
        self.callback = callback
        self.members = members
        self.export_total = 0

    def export(self, done: int, total: int) -> None:
        self.export_total = total
        if self.callback is not None:
            self.callback(done, total + self.members)

    def member(self, index: int) -> None:
        if self.callback is not None:
            self.callback(self.export_total + index, self.export_total + self.members)


def build_bundle(
    directory: Path,
    data_key: bytes,
    out_path: Path,
    *,
    signing_key: Ed25519PrivateKey,
    audit_entries: list[dict[str, Any]],
    manifest_public_key: Ed25519PublicKey | None = None,
    case: int | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: ProgressCallback | None = None,
) -> BundleResult:
    """Export the recording in `directory` (or one case, or a range: see `export_recording`)
    and write it with its records into a signed bundle at `out_path`.

    `signing_key` is the node's audit key; the manifest is checked against
    `manifest_public_key` (default: the signing key's public half, the key that signs
    manifests). Raises `IntegrityError` if the recording fails its checks.
    """
    manifest_key = manifest_public_key or signing_key.public_key()
    manifest = load_manifest(directory, manifest_key)
    _, _, manifest_raw = read_manifest(directory)
    stages = _Stages(progress, 7)
    name = f"{manifest.recording_id}" + (f"-case{case}" if case is not None else "")
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out_path.parent) as scratch:
        media = Path(scratch) / f"{name}.webm"
        exported = export_recording(directory, data_key, media, public_key=manifest_key,
                                    case=case, start_ms=start_ms, end_ms=end_ms,
                                    progress=stages.export)  # fmt: skip
        if exported.container != "webm":
            renamed = media.with_suffix(".mkv")
            media.rename(renamed)
            media = renamed
        members: list[tuple[str, Path | bytes]] = [
            (f"media/{media.name}", media),
            ("annotations.json", exported.annotations_path.read_bytes()),
            ("consent.json", _json_bytes([asdict(c) for c in manifest.consent])),
            ("participants.json", _json_bytes([asdict(p) for p in manifest.participants])),
            (MANIFEST_NAME, manifest_raw),
            ("audit.json", _json_bytes(audit_entries)),
            *_image_members(directory, data_key, manifest),
        ]
        stages.members = len(members) + 1
        temp = out_path.with_name(f".{out_path.name}.partial")
        digests: dict[str, str] = {}
        listing: list[dict[str, Any]] = []
        try:
            with zipfile.ZipFile(temp, "x") as archive:
                for index, (member, content) in enumerate(members, 1):
                    digest, size = _write_member(archive, member, content)
                    digests[member] = digest
                    listing.append({"name": member, "sha256": digest, "size": size})
                    stages.member(index)
                public = signing_key.public_key()
                index_body: dict[str, Any] = {
                    "format": BUNDLE_FORMAT,
                    "recording_id": manifest.recording_id,
                    "room_id": manifest.room_id,
                    "created": stamp_s(datetime.now(UTC)),
                    "export": {"case": case, "start_ms": exported.start_ms,
                               "end_ms": exported.end_ms, "container": exported.container},
                    "members": listing,
                }  # fmt: skip
                index_body["signature"] = {
                    "alg": "Ed25519",
                    "public_key": base64.b64encode(
                        public.public_bytes(Encoding.Raw, PublicFormat.Raw)
                    ).decode(),
                    "fingerprint": public_key_fingerprint(public),
                    "value": base64.b64encode(
                        signing_key.sign(canonical_json(_unsigned(index_body)))
                    ).decode(),
                }
                _write_member(archive, INDEX_NAME, _json_bytes(index_body))
                stages.member(len(members) + 1)
            with open(temp, "rb") as file:
                os.fsync(file.fileno())
            os.replace(temp, out_path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    return BundleResult(out_path, digests, public_key_fingerprint(signing_key.public_key()),
                        exported)  # fmt: skip


def _unsigned(index: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in index.items() if k != "signature"}


def _write_member(archive: zipfile.ZipFile, name: str, content: Path | bytes) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    media = isinstance(content, Path)
    info = zipfile.ZipInfo(name, date_time=datetime.now(UTC).timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED if media else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    with archive.open(info, "w", force_zip64=True) as out:
        if isinstance(content, Path):
            with open(content, "rb") as file:
                while chunk := file.read(_READ_SIZE):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        else:
            digest.update(content)
            size = len(content)
            out.write(content)
    return digest.hexdigest(), size


def verify_bundle(
    path: Path,
    expected_public_key: Ed25519PublicKey | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> BundleReport:
    """Check a bundle offline: its index's signature (and, given `expected_public_key`, that
    it was that key), and every member's SHA-256 and size, with none missing or added."""
    report = BundleReport(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        report.problems.append(f"not a readable ZIP file: {error}")
        return report
    with archive:
        names = [info.filename for info in archive.infolist()]
        for name in sorted({n for n in names if names.count(n) > 1}):
            report.problems.append(f"{name}: present more than once")
        index = _read_index(archive, report)
        if index is None:
            return report
        _check_signature(index, expected_public_key, report)
        listed = {m["name"]: m for m in index["members"]}
        for name in sorted(set(names) - set(listed) - {INDEX_NAME}):
            report.problems.append(f"{name}: a member bundle.json does not list")
        for done, (name, entry) in enumerate(sorted(listed.items()), 1):
            if name not in names:
                report.problems.append(f"{name}: missing (listed in bundle.json)")
                continue
            _check_member(archive, name, entry, report)
            if progress is not None:
                progress(done, len(listed))
    return report


def signer_fingerprint(path: Path) -> str | None:
    """The fingerprint of the key a bundle's index is signed with, without checking members
    (to tell the user which key to check it against); None if the index is unreadable."""
    report = BundleReport(path)
    try:
        with zipfile.ZipFile(path) as archive:
            index = _read_index(archive, report)
    except (OSError, zipfile.BadZipFile):
        return None
    if index is not None:
        _check_signature(index, None, report)
    return report.fingerprint


def _read_index(archive: zipfile.ZipFile, report: BundleReport) -> dict[str, Any] | None:
    try:
        index = json.loads(archive.read(INDEX_NAME))
    except KeyError:
        report.problems.append(f"{INDEX_NAME}: missing")
        return None
    except (ValueError, zipfile.BadZipFile, OSError) as error:
        report.problems.append(f"{INDEX_NAME}: unreadable: {error}")
        return None
    if not isinstance(index, dict):
        report.problems.append(f"{INDEX_NAME}: not a JSON object")
        return None
    report.format = index.get("format")
    report.recording_id = index.get("recording_id")
    if report.format != BUNDLE_FORMAT:
        report.problems.append(f"{INDEX_NAME}: unknown format {report.format!r}")
        return None
    members = index.get("members")
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) for m in members
    ):
        report.problems.append(f"{INDEX_NAME}: members list is malformed")
        return None
    return index


def _check_signature(
    index: dict[str, Any], expected: Ed25519PublicKey | None, report: BundleReport
) -> None:
    signature = index.get("signature")
    try:
        assert isinstance(signature, dict)
        raw_key = base64.b64decode(signature["public_key"], validate=True)
        value = base64.b64decode(signature["value"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw_key)
    except (AssertionError, KeyError, TypeError, ValueError):
        report.problems.append(f"{INDEX_NAME}: signature block is missing or malformed")
        return
    fingerprint = public_key_fingerprint(public)
    report.fingerprint = fingerprint
    if signature.get("fingerprint") != fingerprint:
        report.problems.append(
            f"{INDEX_NAME}: stated fingerprint {signature.get('fingerprint')!r} is not its "
            f"key's ({fingerprint})"
        )
    try:
        public.verify(value, canonical_json(_unsigned(index)))
    except (InvalidSignature, ValueError):  # ValueError: NaN, or not UTF-8, in the index
        report.problems.append(
            f"{INDEX_NAME}: signature is not valid: the index was edited after signing"
        )
    if expected is None:
        return
    if public_key_fingerprint(expected) != fingerprint:
        report.problems.append(
            f"{INDEX_NAME}: signed by key {fingerprint}, not the expected key "
            f"{public_key_fingerprint(expected)}"
        )
    else:
        report.authenticated = True


def _check_member(
    archive: zipfile.ZipFile, name: str, entry: dict[str, Any], report: BundleReport
) -> None:
    digest = hashlib.sha256()
    size = 0
    try:
        with archive.open(name) as member:
            while chunk := member.read(_READ_SIZE):
                digest.update(chunk)
                size += len(chunk)
    except (zipfile.BadZipFile, OSError) as error:  # the ZIP's own CRC fails first, often
        report.problems.append(f"{name}: unreadable: {error}")
        return
    if digest.hexdigest() != entry.get("sha256") or size != entry.get("size"):
        report.problems.append(
            f"{name}: SHA-256 does not match bundle.json ({size} bytes, {entry.get('size')} listed)"
        )
        return
    report.members_checked += 1
