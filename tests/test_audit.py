"""The audit log: chained entries, signed checkpoints, a verifier that names the first bad entry."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import stat
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from signaling.audit import AuditLog, generate_audit_key, iter_entries, load_public_key
from signaling.auditformat import CHECKPOINTS_FILE, GENESIS_HASH, TOKEN_MARK
from signaling.auditverify import verify_log

KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = KEY.public_key()
T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)


class ManualClock:
    """A clock that shows whatever time the test set."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def canonical(value: Any) -> str:
    """The canonical JSON the spec prescribes, written out here independently of the module."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def segment(directory: Path, number: int = 1) -> Path:
    return directory / f"audit-{number:06d}.jsonl"


def read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def write_log(directory: Path, entries: int, **options: Any) -> None:
    """A closed log of `entries` joins, each with its own subject."""
    with AuditLog(directory, KEY, **options) as log:
        for index in range(entries):
            log.append("join", "allow", sub=f"user-{index}", room="mdt-7", jti=f"jti-{index}")


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def closed_log(audit_dir: Path) -> Path:
    """Ten entries, closed cleanly (so a final checkpoint covers all ten)."""
    write_log(audit_dir, 10)
    return audit_dir


def assert_fails_at(directory: Path, expected: str) -> None:
    report = verify_log(directory, PUBLIC_KEY)
    assert not report.ok
    assert report.first_bad is not None
    assert report.first_bad.startswith(expected), report.first_bad


# --- an intact log --------------------------------------------------------------------------


def test_intact_log_verifies(closed_log: Path) -> None:
    report = verify_log(closed_log, PUBLIC_KEY)
    assert report.ok, report.detail
    assert report.entries == 10
    assert report.checkpoints == 2  # genesis + close
    assert report.first_bad is None
    assert report.unsigned == 0


def test_entries_are_chained_by_hash(closed_log: Path) -> None:
    entries = list(iter_entries(closed_log))
    assert [entry.seq for entry in entries] == list(range(10))
    assert entries[0].prev == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev == before.hash
    for raw in read_lines(segment(closed_log)):
        body = json.loads(raw)
        digest = body.pop("hash")
        assert hashlib.sha256(canonical(body).encode()).hexdigest() == digest
        assert canonical({**body, "hash": digest}).encode() == raw


def test_append_returns_the_entry_it_wrote(audit_dir: Path) -> None:
    with AuditLog(audit_dir, KEY, clock=ManualClock()) as log:
        entry = log.append("revoke", "info", sub="dr-li", reason="left_trust", jti="j1")
        assert log.count == 1
        assert log.head == entry.hash
    assert entry.ts == "2025-03-01T08:00:00.000Z"
    assert list(iter_entries(audit_dir)) == [entry]


def test_empty_log_verifies(audit_dir: Path) -> None:
    AuditLog(audit_dir, KEY).close()
    report = verify_log(audit_dir, PUBLIC_KEY)
    assert report.ok, report.detail
    assert report.entries == 0


def test_missing_log_does_not_verify(tmp_path: Path) -> None:
    assert not verify_log(tmp_path / "nowhere", PUBLIC_KEY).ok


# --- tampering ------------------------------------------------------------------------------


def test_edited_entry_is_detected(closed_log: Path) -> None:
    lines = read_lines(segment(closed_log))
    lines[4] = lines[4].replace(b'"sub":"user-4"', b'"sub":"user-X"')
    write_lines(segment(closed_log), lines)
    assert_fails_at(closed_log, "audit-000001.jsonl line 5 (seq 4): hash mismatch (entry edited)")


def test_reformatted_entry_is_detected(closed_log: Path) -> None:
    lines = read_lines(segment(closed_log))
    lines[2] = json.dumps(json.loads(lines[2])).encode()  # same content, different spacing
    write_lines(segment(closed_log), lines)
    assert_fails_at(closed_log, "audit-000001.jsonl line 3 (expected seq 2): not in canonical")


def test_edited_entry_with_recomputed_hash_is_detected(closed_log: Path) -> None:
    lines = read_lines(segment(closed_log))
    body = json.loads(lines[4])
    body["sub"] = "user-X"
    del body["hash"]
    body["hash"] = hashlib.sha256(canonical(body).encode()).hexdigest()
    lines[4] = canonical(body).encode()
    write_lines(segment(closed_log), lines)
    assert_fails_at(closed_log, "audit-000001.jsonl line 6 (seq 5): prev does not match")


def test_rewritten_chain_is_detected_by_signed_checkpoint(audit_dir: Path) -> None:
    write_log(audit_dir, 10, checkpoint_every=4)
    lines = read_lines(segment(audit_dir))
    prev = json.loads(lines[1])["hash"]
    for index in range(2, len(lines)):
        body = json.loads(lines[index])
        if index == 2:
            body["sub"] = "someone-else"
        body["prev"] = prev
        del body["hash"]
        prev = body["hash"] = hashlib.sha256(canonical(body).encode()).hexdigest()
        lines[index] = canonical(body).encode()
    write_lines(segment(audit_dir), lines)
    assert_fails_at(audit_dir, "audit-000001.jsonl line 4 (seq 3): differs from the signed")


def test_removed_entry_is_detected(closed_log: Path) -> None:
    lines = read_lines(segment(closed_log))
    del lines[4]
    write_lines(segment(closed_log), lines)
    assert_fails_at(closed_log, "audit-000001.jsonl line 5 (seq 5): expected seq 4")


def test_swapped_entries_are_detected(closed_log: Path) -> None:
    lines = read_lines(segment(closed_log))
    lines[3], lines[6] = lines[6], lines[3]
    write_lines(segment(closed_log), lines)
    assert_fails_at(closed_log, "audit-000001.jsonl line 4 (seq 6): expected seq 3")


def test_duplicated_entry_is_detected(closed_log: Path) -> None:
    lines = read_lines(segment(closed_log))
    lines.insert(5, lines[4])
    write_lines(segment(closed_log), lines)
    assert_fails_at(closed_log, "audit-000001.jsonl line 6 (seq 4): expected seq 5")


def test_truncated_tail_is_detected(closed_log: Path) -> None:
    write_lines(segment(closed_log), read_lines(segment(closed_log))[:7])
    report = verify_log(closed_log, PUBLIC_KEY)
    assert not report.ok
    assert report.first_bad == (
        "audit-000001.jsonl line 7 (seq 7): log truncated: checkpoint says 10 entries, found 7"
    )


def test_garbage_line_is_detected(closed_log: Path) -> None:
    lines = read_lines(segment(closed_log))
    lines[3] = b"this is not json"
    write_lines(segment(closed_log), lines)
    assert_fails_at(closed_log, "audit-000001.jsonl line 4 (expected seq 3): not JSON")


def test_partial_last_line_is_detected(closed_log: Path) -> None:
    with segment(closed_log).open("ab") as file:
        file.write(b'{"action":"jo')
    assert_fails_at(closed_log, "audit-000001.jsonl line 11 (expected seq 10): partial last line")


def test_deleted_middle_segment_is_detected(audit_dir: Path) -> None:
    write_log(audit_dir, 30, max_segment_bytes=2000)
    assert segment(audit_dir, 3).exists()
    segment(audit_dir, 2).unlink()
    assert_fails_at(audit_dir, "audit-000002.jsonl (expected seq")
    assert "segment file missing" in (verify_log(audit_dir, PUBLIC_KEY).first_bad or "")


def test_deleted_first_segment_is_detected(audit_dir: Path) -> None:
    write_log(audit_dir, 30, max_segment_bytes=2000)
    segment(audit_dir, 1).unlink()
    assert_fails_at(audit_dir, "audit-000001.jsonl (expected seq 0): segment file missing")


def test_deleted_last_segment_is_detected(audit_dir: Path) -> None:
    write_log(audit_dir, 30, max_segment_bytes=2000)
    last = max(audit_dir.glob("audit-*.jsonl"))
    last.unlink()
    report = verify_log(audit_dir, PUBLIC_KEY)
    assert not report.ok
    assert "log truncated: checkpoint says 30 entries" in (report.first_bad or "")


def test_forged_checkpoint_signature_is_detected(closed_log: Path) -> None:
    path = closed_log / CHECKPOINTS_FILE
    lines = read_lines(path)
    forged = json.loads(lines[-1])
    forged["count"] = 5  # claim a shorter log, keeping the old signature
    lines[-1] = canonical(forged).encode()
    write_lines(path, lines)
    assert_fails_at(closed_log, "checkpoints.jsonl line 2: signature does not verify")


def test_checkpoint_signed_by_another_key_is_detected(closed_log: Path) -> None:
    path = closed_log / CHECKPOINTS_FILE
    lines = read_lines(path)
    forged = json.loads(lines[-1])
    statement = {key: forged[key] for key in ("count", "head", "ts")}
    signature = Ed25519PrivateKey.generate().sign(canonical(statement).encode())
    forged["sig"] = base64.b64encode(signature).decode()
    lines[-1] = canonical(forged).encode()
    write_lines(path, lines)
    assert_fails_at(closed_log, "checkpoints.jsonl line 2: signature does not verify")


def test_verification_with_a_different_public_key_fails(closed_log: Path) -> None:
    report = verify_log(closed_log, Ed25519PrivateKey.generate().public_key())
    assert not report.ok
    assert report.checkpoints == 0
    assert report.first_bad == (
        "checkpoints.jsonl line 1: signature does not verify (forged, edited, or another key)"
    )


def test_removed_checkpoints_file_is_detected(closed_log: Path) -> None:
    (closed_log / CHECKPOINTS_FILE).unlink()
    assert_fails_at(closed_log, "checkpoints.jsonl: no checkpoints")


def test_removed_genesis_checkpoint_is_detected(closed_log: Path) -> None:
    path = closed_log / CHECKPOINTS_FILE
    write_lines(path, read_lines(path)[1:])
    assert_fails_at(closed_log, "checkpoints.jsonl line 1: first checkpoint is not the genesis")


def test_reordered_checkpoints_are_detected(audit_dir: Path) -> None:
    write_log(audit_dir, 10, checkpoint_every=3)
    path = audit_dir / CHECKPOINTS_FILE
    lines = read_lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(path, lines)
    assert_fails_at(audit_dir, "checkpoints.jsonl line 3: count goes backwards")


# --- crashes and reopening ------------------------------------------------------------------


def test_unclosed_log_verifies_and_reports_unsigned_entries(audit_dir: Path) -> None:
    log = AuditLog(audit_dir, KEY, checkpoint_every=4)
    for index in range(6):
        log.append("join", "allow", sub=f"user-{index}")
    try:
        report = verify_log(audit_dir, PUBLIC_KEY)
        assert report.ok, report.detail
        assert report.unsigned == 2
        assert "2 entries after the last checkpoint" in report.detail
    finally:
        log.close()
    assert verify_log(audit_dir, PUBLIC_KEY).unsigned == 0


def test_reopened_log_continues_the_chain(closed_log: Path) -> None:
    with AuditLog(closed_log, KEY) as log:
        assert log.count == 10
        head = log.head
        entry = log.append("admit", "allow", sub="user-3", room="mdt-7")
    assert entry.seq == 10
    assert entry.prev == head
    report = verify_log(closed_log, PUBLIC_KEY)
    assert report.ok, report.detail
    assert report.entries == 11


def test_reopen_after_crash_discards_partial_line_and_records_it(closed_log: Path) -> None:
    with segment(closed_log).open("ab") as file:
        file.write(b'{"action":"jo')
    with AuditLog(closed_log, KEY) as log:
        assert log.count == 11
    recovered = list(iter_entries(closed_log, action="audit_recovered"))
    assert len(recovered) == 1
    assert recovered[0].reason == "partial_line_discarded"
    assert recovered[0].fields["discarded_bytes"] == 13
    assert recovered[0].fields["discarded_sha256"] == hashlib.sha256(b'{"action":"jo').hexdigest()
    assert verify_log(closed_log, PUBLIC_KEY).ok


def test_reopen_refuses_a_truncated_log(closed_log: Path) -> None:
    write_lines(segment(closed_log), read_lines(segment(closed_log))[:7])
    with pytest.raises(ConfigError, match="truncated"):
        AuditLog(closed_log, KEY)


def test_reopen_refuses_another_signing_key(closed_log: Path) -> None:
    with pytest.raises(ConfigError, match="audit key"):
        AuditLog(closed_log, Ed25519PrivateKey.generate())


def test_rotation_across_segment_files_verifies(audit_dir: Path) -> None:
    write_log(audit_dir, 30, max_segment_bytes=2000)
    with AuditLog(audit_dir, KEY, max_segment_bytes=2000) as log:
        log.append("join", "allow", sub="late")
    segments = sorted(audit_dir.glob("audit-*.jsonl"))
    assert len(segments) >= 3
    assert all(path.stat().st_size <= 2000 for path in segments)
    report = verify_log(audit_dir, PUBLIC_KEY)
    assert report.ok, report.detail
    assert report.entries == 31
    assert [entry.seq for entry in iter_entries(audit_dir)] == list(range(31))


def test_close_is_idempotent_and_ends_appending(audit_dir: Path) -> None:
    log = AuditLog(audit_dir, KEY)
    log.append("join")
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append("join")
    assert len(read_lines(audit_dir / CHECKPOINTS_FILE)) == 2


def test_concurrent_appends_form_one_chain(audit_dir: Path) -> None:
    with AuditLog(audit_dir, KEY, checkpoint_every=50) as log:

        def join_many(worker: int) -> None:
            for index in range(100):
                log.append("join", "allow", sub=f"w{worker}-{index}")

        threads = [threading.Thread(target=join_many, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    report = verify_log(audit_dir, PUBLIC_KEY)
    assert report.ok, report.detail
    assert report.entries == 800


# --- what never reaches the log -------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["token", "access_token", "id_token", "authorization", "Authorization", "name", "patient_name"],
)
def test_secret_and_name_fields_are_refused(audit_dir: Path, field: str) -> None:
    with AuditLog(audit_dir, KEY) as log:
        with pytest.raises(ValueError, match="never logged"):
            log.append("join", "allow", sub="dr-li", **{field: "x"})
        assert log.count == 0
    assert segment(audit_dir).read_bytes() == b""


def test_nested_name_field_is_refused(audit_dir: Path) -> None:
    with AuditLog(audit_dir, KEY) as log, pytest.raises(ValueError, match="never logged"):
        log.append("join", participant={"id": "p1", "patient_name": "Jane Doe"})


def test_jwt_in_a_value_is_written_as_a_mark_never_refused(audit_dir: Path) -> None:
    """Values come from users: the writer replaces a token, it never fails on one."""
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJkci1saSJ9.c2lnbmF0dXJl"
    cut_short = "eyJhbGciOiJI.eyJzdWIi"  # two parts are still a token
    with AuditLog(audit_dir, KEY) as log:
        log.append("join_refused", "deny", reason=f"bad token {jwt} here", room=cut_short)
        log.append("revoke", "allow", sub=cut_short, header=jwt,
                   filters={"room": [jwt]}, path=f"/api/rooms/{cut_short}/images")  # fmt: skip
    first, second = iter_entries(audit_dir)
    assert first.reason == f"bad token {TOKEN_MARK} here" and first.room == TOKEN_MARK
    assert second.sub == TOKEN_MARK and second.fields == {
        "header": TOKEN_MARK,
        "filters": {"room": [TOKEN_MARK]},
        "path": f"/api/rooms/{TOKEN_MARK}/images",
    }
    assert b"eyJ" not in segment(audit_dir).read_bytes()
    assert verify_log(audit_dir, PUBLIC_KEY).ok


def test_values_json_cannot_carry_are_refused(audit_dir: Path) -> None:
    with AuditLog(audit_dir, KEY) as log:
        with pytest.raises(TypeError):
            log.append("join", when=datetime.now(UTC))
        with pytest.raises(TypeError):
            log.append("join", ids={1: "a"})
        with pytest.raises(ValueError):
            log.append("join", score=float("nan"))
        with pytest.raises(ValueError):
            log.append("join", "maybe")


# --- reading --------------------------------------------------------------------------------


@pytest.fixture
def ward_log(audit_dir: Path) -> Path:
    """Five events one second apart from T0."""
    clock = ManualClock()
    events: list[tuple[str, str, dict[str, Any]]] = [
        ("join", "allow", {"sub": "alice", "room": "mdt-1", "role": "chair"}),
        ("join", "allow", {"sub": "bob", "room": "mdt-1", "role": "specialist"}),
        ("join_refused", "deny", {"sub": "carol", "room": "mdt-2", "reason": "not_invited"}),
        ("admit", "allow", {"sub": "alice", "room": "mdt-2", "participant": "p-9"}),
        ("revoke", "info", {"sub": "bob", "reason": "left_trust", "jti": "j-2"}),
    ]
    with AuditLog(audit_dir, KEY, clock=clock) as log:
        for second, (action, outcome, details) in enumerate(events):
            clock.now = T0 + timedelta(seconds=second)
            log.append(action, outcome, **details)
    return audit_dir


def subjects(entries: Iterator[Any]) -> list[str]:
    return [entry.sub for entry in entries]


def test_entries_can_be_filtered_by_subject(ward_log: Path) -> None:
    assert subjects(iter_entries(ward_log, sub="alice")) == ["alice", "alice"]


def test_entries_can_be_filtered_by_room(ward_log: Path) -> None:
    assert subjects(iter_entries(ward_log, room="mdt-2")) == ["carol", "alice"]


def test_entries_can_be_filtered_by_action(ward_log: Path) -> None:
    assert subjects(iter_entries(ward_log, action="join")) == ["alice", "bob"]


def test_entries_can_be_filtered_by_time_range(ward_log: Path) -> None:
    window = iter_entries(
        ward_log, since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3)
    )
    assert subjects(window) == ["bob", "carol"]
    naive_since = (T0 + timedelta(seconds=4)).replace(tzinfo=None)
    assert subjects(iter_entries(ward_log, since=naive_since)) == ["bob"]


def test_filters_combine(ward_log: Path) -> None:
    assert subjects(iter_entries(ward_log, sub="bob", action="revoke")) == ["bob"]
    assert subjects(iter_entries(ward_log, sub="carol", room="mdt-1")) == []


def test_reading_skips_an_append_in_flight(ward_log: Path) -> None:
    with segment(ward_log).open("ab") as file:
        file.write(b'{"action":"jo')
    assert len(list(iter_entries(ward_log))) == 5


# --- the writer's lock and the key files ----------------------------------------------------


def test_second_writer_is_locked_out(audit_dir: Path) -> None:
    with AuditLog(audit_dir, KEY), pytest.raises(ConfigError, match="already open"):
        AuditLog(audit_dir, KEY)
    AuditLog(audit_dir, KEY).close()  # free again once the first writer closed


def test_audit_key_files_are_created_with_their_modes(tmp_path: Path) -> None:
    key = generate_audit_key(tmp_path / "keys")
    private = tmp_path / "keys" / "audit-ed25519.pem"
    public = tmp_path / "keys" / "audit-ed25519.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert load_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()


def test_existing_audit_key_is_loaded_not_replaced(tmp_path: Path) -> None:
    first = generate_audit_key(tmp_path)
    second = generate_audit_key(tmp_path)
    assert first.private_bytes_raw() == second.private_bytes_raw()


def test_log_signed_with_generated_key_verifies_with_public_key_file(tmp_path: Path) -> None:
    key = generate_audit_key(tmp_path / "keys")
    with AuditLog(tmp_path / "audit", key) as log:
        log.append("config_loaded", node="node-1")
    public = load_public_key(tmp_path / "keys" / "audit-ed25519.pub.pem")
    assert verify_log(tmp_path / "audit", public).ok


def test_public_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "other.pem").write_bytes(pem)
    with pytest.raises(ConfigError, match="not an Ed25519"):
        load_public_key(tmp_path / "other.pem")


# --- any single changed byte is caught ------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.integers(min_value=1, max_value=25),
    checkpoint_every=st.integers(min_value=1, max_value=8),
    segment_bytes=st.sampled_from([600, 1500, 10**6]),
    data=st.data(),
)
def test_any_flipped_byte_fails_verification(
    entries: int, checkpoint_every: int, segment_bytes: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        with AuditLog(
            directory, KEY, checkpoint_every=checkpoint_every, max_segment_bytes=segment_bytes
        ) as log:
            for index in range(entries):
                log.append(
                    data.draw(st.sampled_from(["join", "admit", "revoke"])),
                    data.draw(st.sampled_from(["allow", "deny", "info"])),
                    sub=data.draw(st.text(max_size=8)),
                    room=f"room-{index}",
                    dept=data.draw(st.sampled_from(["onc", "radiologie", "肿瘤科"])),
                )
        assert verify_log(directory, PUBLIC_KEY).ok

        files = [*sorted(directory.glob("audit-*.jsonl")), directory / CHECKPOINTS_FILE]
        target = data.draw(st.sampled_from([path for path in files if path.stat().st_size]))
        original = target.read_bytes()
        lines = original.split(b"\n")[:-1]
        line = data.draw(st.integers(min_value=0, max_value=len(lines) - 1))
        line_start = sum(len(earlier) + 1 for earlier in lines[:line])
        position = line_start + data.draw(st.integers(min_value=0, max_value=len(lines[line])))
        mask = data.draw(st.integers(min_value=1, max_value=255))
        tampered = bytearray(original)
        tampered[position] ^= mask
        target.write_bytes(bytes(tampered))

        if bytes(tampered) != original:
            assert not verify_log(directory, PUBLIC_KEY).ok
