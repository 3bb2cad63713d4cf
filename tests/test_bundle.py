"""The evidence bundle: a real recorded room exported, packed with its records and signed; then
each way of tampering with the file is detected offline, and named."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path
from typing import Any

import av
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from consilium.cli import main
from recorder.bundle import (
    BUNDLE_FORMAT,
    BundleIntegrityError,
    build_bundle,
    public_key_fingerprint,
    verify_bundle,
)
from tests.fixtures.recordings import DATA_KEY, LiveRecording, ffprobe_path, live_recording

__all__ = ["live_recording"]  # the fixture, imported for this module

AUDIT = [
    {"seq": 1, "action": "recording_started", "room": "mdt-1", "recording": "live-export"},
    {"seq": 2, "action": "recording_stopped", "room": "mdt-1", "recording": "live-export"},
]

pytestmark = pytest.mark.skipif(ffprobe_path() is None, reason="ffprobe is not installed")


@pytest.fixture(scope="module")
def bundle(live_recording: LiveRecording, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of case 2 of the recorded room."""
    path = tmp_path_factory.mktemp("bundles") / "evidence.zip"
    seen: list[tuple[int, int]] = []
    build_bundle(live_recording.directory, DATA_KEY, path, signing_key=live_recording.key,
                 audit_entries=AUDIT, case=2,
                 progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)
    return path


def rewrite(source: Path, target: Path, *, replace: dict[str, bytes | None] | None = None,
            add: dict[str, bytes] | None = None) -> Path:  # fmt: skip
    """A well-formed ZIP with some members replaced (None: dropped) or added: what a forger
    would make, with correct ZIP checksums."""
    replace = replace or {}
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            content = replace.get(info.filename, old.read(info.filename))
            if content is not None:
                new.writestr(info, content)
        for name, content in (add or {}).items():
            new.writestr(name, content)
    return target


def problems(path: Path, key: Any = None) -> str:
    report = verify_bundle(path, key)
    assert not report.ok
    with pytest.raises(BundleIntegrityError):
        report.check()
    return "; ".join(report.problems)


def test_a_bundle_holds_the_export_and_its_records_and_verifies(
    bundle: Path, live_recording: LiveRecording, tmp_path: Path
) -> None:
    report = verify_bundle(bundle, live_recording.key.public_key()).check()
    assert report.format == BUNDLE_FORMAT and report.recording_id == "live-export"
    assert report.fingerprint == public_key_fingerprint(live_recording.key.public_key())
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        assert names == {
            "media/live-export-case2.webm", "annotations.json", "consent.json",
            "participants.json", "manifest.json", "audit.json", "bundle.json",
        }  # fmt: skip
        assert report.members_checked == len(names) - 1
        stored = (live_recording.directory / "manifest.json").read_bytes()
        assert archive.read("manifest.json") == stored
        assert json.loads(archive.read("audit.json")) == AUDIT
        assert {c["participant_id"] for c in json.loads(archive.read("consent.json"))} == {"a", "b"}
        index = json.loads(archive.read("bundle.json"))
        assert index["export"]["case"] == 2 and len(index["members"]) == 6
        media = tmp_path / "case2.webm"
        media.write_bytes(archive.read("media/live-export-case2.webm"))
    with av.open(str(media)) as container:
        assert next(container.decode(video=0)).width == 640


def test_a_flipped_byte_in_a_member_is_detected(bundle: Path, tmp_path: Path) -> None:
    raw = bytearray(bundle.read_bytes())
    with zipfile.ZipFile(bundle) as archive:
        info = archive.getinfo("media/live-export-case2.webm")
    raw[info.header_offset + 30 + len(info.filename) + 5000] ^= 0x01  # inside the stored media
    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(bytes(raw))
    assert "media/live-export-case2.webm: unreadable: Bad CRC-32" in problems(flipped)

    # A forger who also fixes the ZIP's checksums is caught by the signed SHA-256.
    fewer = json.dumps(AUDIT[:1]).encode()
    forged = rewrite(bundle, tmp_path / "forged.zip", replace={"audit.json": fewer})
    with zipfile.ZipFile(bundle) as archive:
        listed = archive.getinfo("audit.json").file_size
    assert problems(forged) == (
        f"audit.json: SHA-256 does not match bundle.json ({len(fewer)} bytes, {listed} listed)"
    )


def test_an_added_member_is_detected(bundle: Path, tmp_path: Path) -> None:
    added = rewrite(bundle, tmp_path / "added.zip", add={"notes.txt": b"inserted later"})
    assert problems(added) == "notes.txt: a member bundle.json does not list"


def test_a_dropped_member_is_detected(bundle: Path, tmp_path: Path) -> None:
    dropped = rewrite(bundle, tmp_path / "dropped.zip", replace={"consent.json": None})
    assert problems(dropped) == "consent.json: missing (listed in bundle.json)"


def test_an_edited_index_is_detected(bundle: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(bundle) as archive:
        index = json.loads(archive.read("bundle.json"))
    index["export"]["case"] = 1
    edited = rewrite(bundle, tmp_path / "edited.zip",
                     replace={"bundle.json": json.dumps(index).encode()})  # fmt: skip
    assert "bundle.json: signature is not valid" in problems(edited)

    # A forger who drops the audit trail and re-signs with a key of their own makes a bundle
    # that is consistent on its own, but not one the node signed.
    index["members"] = [m for m in index["members"] if m["name"] != "audit.json"]
    forged_index = resign(index, Ed25519PrivateKey.generate())
    resigned = rewrite(bundle, tmp_path / "resigned.zip",
                       replace={"audit.json": None, "bundle.json": forged_index})  # fmt: skip
    assert verify_bundle(resigned).ok
    assert "not the expected key" in problems(resigned, signer(bundle))


def test_without_a_key_verify_bundle_says_authenticity_is_not_established(
    bundle: Path, live_recording: LiveRecording, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle rewritten and re-signed with a forger's key is whole on its own: without the
    hospital's key the command must not say OK, and must name the key that signed it."""
    with zipfile.ZipFile(bundle) as archive:
        index = json.loads(archive.read("bundle.json"))
    index["members"] = [m for m in index["members"] if m["name"] != "audit.json"]
    forger = Ed25519PrivateKey.generate()
    replace: dict[str, bytes | None] = {"audit.json": None, "bundle.json": resign(index, forger)}
    resigned = rewrite(bundle, tmp_path / "resigned.zip", replace=replace)
    assert not verify_bundle(resigned).authenticated

    assert main(["recordings", "verify-bundle", str(resigned)]) == 3
    out = capsys.readouterr().out
    assert "AUTHENTICITY NOT ESTABLISHED" in out and "OK" not in out
    assert public_key_fingerprint(forger.public_key()) in out

    hospital_key = tmp_path / "audit-ed25519.pub.pem"
    hospital_key.write_bytes(
        live_recording.key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert (
        main(["recordings", "verify-bundle", str(resigned), "--public-key", str(hospital_key)]) == 1
    )
    assert "not the expected key" in capsys.readouterr().out
    assert (
        main(["recordings", "verify-bundle", str(bundle), "--public-key", str(hospital_key)]) == 0
    )
    assert "OK" in capsys.readouterr().out
    assert verify_bundle(bundle, live_recording.key.public_key()).authenticated


def test_an_unusable_public_key_file_is_a_clear_error(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A swapped or wrong key file is reported in words, never a traceback."""
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    for path in (rsa_key, garbage, tmp_path / "absent.pem"):
        assert main(["recordings", "verify-bundle", str(bundle), "--public-key", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err


def test_the_wrong_expected_key_is_named(bundle: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    message = problems(bundle, other)
    assert message.startswith("bundle.json: signed by key SHA256:")
    assert public_key_fingerprint(other) in message


def test_a_file_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.zip"
    path.write_bytes(b"not a zip at all")
    assert problems(path).startswith("not a readable ZIP file")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("media/x.webm", b"x")
    assert problems(empty) == "bundle.json: missing"


def resign(index: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The index signed by `key` the way `build_bundle` signs (what a forger with a key of
    their own could do)."""
    body = {k: v for k, v in index.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    public = key.public_key()
    body["signature"] = {
        "alg": "Ed25519",
        "public_key": base64.b64encode(
            public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).decode(),
        "fingerprint": public_key_fingerprint(public),
        "value": base64.b64encode(key.sign(canonical.encode())).decode(),
    }
    return json.dumps(body).encode()


def signer(bundle: Path) -> Ed25519PublicKey:
    """The public key a bundle states it was signed with."""
    with zipfile.ZipFile(bundle) as archive:
        index = json.loads(archive.read("bundle.json"))
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(index["signature"]["public_key"]))
