"""Loss and insertion of audit entries, detected from outside the data folder: the heads kept in
the key folder (the node refuses to extend a log that does not hold them) and the checkpoints
a real rsyslog received over TLS (`consilium audit verify --witness`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import ConfigError
from signaling.audit import HEADS_FILE, AuditLog
from signaling.auditformat import CHECKPOINTS_FILE
from signaling.auditverify import compare_with_witness, verify_log
from signaling.witness import MESSAGE_MARK, SyslogWitness, parse_witness
from tests.fixtures.rsyslog import SyslogReceiver, syslog_receiver
from tests.fixtures.servers import REPO, node_settings, running_node

__all__ = ["syslog_receiver"]  # the fixture, imported for this module

KEY = Ed25519PrivateKey.generate()


def write_log(
    audit_dir: Path, heads: Path | None, entries: int, witness: SyslogWitness | None = None
) -> None:
    """A log of `entries` joins, checkpointed every 3, closed cleanly."""
    with AuditLog(audit_dir, KEY, checkpoint_every=3, heads_file=heads, witness=witness) as log:
        for i in range(entries):
            log.append("join", "allow", sub=f"dr-{i}", room="mdt-1")


def cut_to_checkpoint(audit_dir: Path, keep_checkpoints: int) -> None:
    """What an intruder with the service account's rights does to hide the newest entries:
    cut the checkpoints after the first `keep_checkpoints` and the entries after the last one
    kept, so the log is consistent on its own."""
    checkpoints = (audit_dir / CHECKPOINTS_FILE).read_text().splitlines(keepends=True)
    kept = checkpoints[:keep_checkpoints]
    (audit_dir / CHECKPOINTS_FILE).write_text("".join(kept))
    count = json.loads(kept[-1])["count"]
    segment = audit_dir / "audit-000001.jsonl"
    segment.write_text("".join(segment.read_text().splitlines(keepends=True)[:count]))


def append_forged_entry(audit_dir: Path) -> None:
    """An entry chained correctly onto the tail, written while the node is stopped."""
    segment = audit_dir / "audit-000001.jsonl"
    last = json.loads(segment.read_text().splitlines()[-1])
    body = {"action": "join", "fields": {}, "outcome": "allow", "prev": last["hash"],
            "reason": None, "room": "mdt-1", "seq": last["seq"] + 1, "sub": "intruder",
            "ts": last["ts"]}  # fmt: skip
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    body["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    with segment.open("a") as file:
        file.write(json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n")


# --- the heads kept in the key folder ---------------------------------------------------------


def test_a_clean_restart_extends_the_log(tmp_path: Path) -> None:
    heads = tmp_path / "keys" / HEADS_FILE
    write_log(tmp_path / "audit", heads, 5)
    write_log(tmp_path / "audit", heads, 2)
    assert verify_log(tmp_path / "audit", KEY.public_key()).entries == 7
    assert json.loads(heads.read_text().splitlines()[-1])["closed"] is True


def test_a_node_killed_after_a_clean_restart_starts_again(tmp_path: Path) -> None:
    """Stopped cleanly, started again, then killed mid-run: the next start adopts what the
    killed run wrote (it is not "appended while the node was stopped")."""
    audit_dir, heads = tmp_path / "audit", tmp_path / "keys" / HEADS_FILE
    write_log(audit_dir, heads, 4)
    killed = AuditLog(audit_dir, KEY, checkpoint_every=100, heads_file=heads)
    for i in range(3):
        killed.append("join", "allow", sub=f"dr-late-{i}", room="mdt-1")
    killed._release_files()  # SIGKILL: the files closed by the kernel, no closing checkpoint
    with AuditLog(audit_dir, KEY, heads_file=heads) as log:
        assert log.count == 4 + 3 + 1  # and its note of the adopted entries
    report = verify_log(audit_dir, KEY.public_key())
    assert report.ok and report.entries == 4 + 3 + 1
    assert json.loads(heads.read_text().splitlines()[-1])["closed"] is True
    # A forged entry after that clean close is still refused.
    append_forged_entry(audit_dir)
    with pytest.raises(ConfigError, match="appended while the node was stopped"):
        AuditLog(audit_dir, KEY, heads_file=heads)


def test_a_tail_cut_with_its_checkpoints_is_refused_at_start(tmp_path: Path) -> None:
    audit_dir, heads = tmp_path / "audit", tmp_path / "keys" / HEADS_FILE
    write_log(audit_dir, heads, 10)
    cut_to_checkpoint(audit_dir, 2)
    assert verify_log(audit_dir, KEY.public_key()).ok  # the log alone cannot tell
    with pytest.raises(ConfigError, match="does not hold the head kept in"):
        AuditLog(audit_dir, KEY, heads_file=heads)


def test_a_wiped_log_is_refused_at_start(tmp_path: Path) -> None:
    audit_dir, heads = tmp_path / "audit", tmp_path / "keys" / HEADS_FILE
    write_log(audit_dir, heads, 4)
    shutil.rmtree(audit_dir)
    with pytest.raises(ConfigError, match="wiped"):
        AuditLog(audit_dir, KEY, heads_file=heads)
    assert not (audit_dir / CHECKPOINTS_FILE).exists()  # no new log was started over it


def test_entries_appended_while_the_node_was_stopped_are_refused(tmp_path: Path) -> None:
    audit_dir, heads = tmp_path / "audit", tmp_path / "keys" / HEADS_FILE
    write_log(audit_dir, heads, 4)
    append_forged_entry(audit_dir)
    assert verify_log(audit_dir, KEY.public_key()).ok  # chained, merely "not yet signed"
    with pytest.raises(ConfigError, match="appended while the node was stopped"):
        AuditLog(audit_dir, KEY, heads_file=heads)


def test_without_a_heads_file_an_unsigned_tail_is_said_before_it_is_signed(
    tmp_path: Path,
) -> None:
    audit_dir = tmp_path / "audit"
    write_log(audit_dir, None, 4)
    append_forged_entry(audit_dir)
    with AuditLog(audit_dir, KEY) as log:
        assert log.count == 6
    entries = (audit_dir / "audit-000001.jsonl").read_text().splitlines()
    note = json.loads(entries[5])
    assert note["action"] == "audit_recovered"
    assert note["fields"] == {"first_seq": 4, "entries": 1}
    assert note["reason"] == "unsigned_entries_adopted"


# --- the external witness: rsyslog over TLS ---------------------------------------------------


def witness_for(receiver: SyslogReceiver) -> SyslogWitness:
    return SyslogWitness(receiver.host, receiver.port, node="node-a", cafile=receiver.ca_file)


def test_checkpoints_reach_the_witness_and_verify_finds_cuts_wipes_and_rewrites(
    tmp_path: Path, syslog_receiver: SyslogReceiver
) -> None:
    audit_dir = tmp_path / "audit"
    write_log(audit_dir, tmp_path / "keys" / HEADS_FILE, 10, witness=witness_for(syslog_receiver))
    # Genesis, after 3, 6 and 9 entries, and at close (10).
    syslog_receiver.wait_for_lines(MESSAGE_MARK, 5)
    witnessed = list(parse_witness(syslog_receiver.output))
    assert [w.count for w in witnessed] == [0, 3, 6, 9, 10]
    assert {w.node for w in witnessed} == {"node-a"}
    public = KEY.public_key()
    intact = compare_with_witness(audit_dir, public, witnessed)
    assert intact.ok and intact.matched == 5 and intact.unwitnessed == 0

    # Another key's checkpoints (another node, or a forger) prove nothing about this log.
    other = compare_with_witness(audit_dir, Ed25519PrivateKey.generate().public_key(), witnessed)
    assert not other.ok and other.other_signers == 5

    cut = tmp_path / "cut"
    shutil.copytree(audit_dir, cut)
    cut_to_checkpoint(cut, 3)
    assert verify_log(cut, public).ok
    report = compare_with_witness(cut, public, witnessed)
    assert not report.ok and "cut short" in report.problems[0]

    wiped = tmp_path / "wiped"
    write_log(wiped, None, 0)  # wiped and restarted: a fresh, valid, empty log
    assert verify_log(wiped, public).ok
    report = compare_with_witness(wiped, public, witnessed)
    assert not report.ok and "wiped" in report.problems[0]

    rewritten = tmp_path / "rewritten"
    with AuditLog(rewritten, KEY, checkpoint_every=3) as log:
        log.append("join", "allow", sub="inserted", room="mdt-1")
        for i in range(9):
            log.append("join", "allow", sub=f"dr-{i}", room="mdt-1")
    assert verify_log(rewritten, public).ok
    report = compare_with_witness(rewritten, public, witnessed)
    assert not report.ok and "rewritten, inserted or removed" in report.problems[0]

    # The command an auditor runs, with the key kept apart from the server.
    public_pem = tmp_path / "audit.pub.pem"
    public_pem.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for folder, status in ((audit_dir, 0), (cut, 1), (wiped, 1), (rewritten, 1)):
        data_dir = tmp_path / f"data-{folder.name}"
        data_dir.mkdir()
        (data_dir / "audit").symlink_to(folder)
        done = subprocess.run(
            [sys.executable, "-m", "consilium.cli", "audit", "verify", "--data-dir",
             str(data_dir), "--public-key", str(public_pem), "--witness",
             str(syslog_receiver.output)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert done.returncode == status, (folder.name, done.stdout, done.stderr)
        if status:
            assert "FAILED: witness:" in done.stderr


async def test_a_node_with_a_separate_key_folder_and_a_witness(
    tmp_path: Path, syslog_receiver: SyslogReceiver
) -> None:
    """The node's keys and heads live in key_dir, not the data folder; its checkpoints reach
    the witness; and after a wipe of its audit folder it refuses to start."""
    key_dir = tmp_path / "keys"
    settings = node_settings(
        tmp_path / "data",
        media=False,
        key_dir=str(key_dir),
        audit_witness=syslog_receiver.address,
        audit_witness_ca=str(syslog_receiver.ca_file),
    )
    async with running_node(settings) as node:
        assert node.node is not None
        node.node.audit.checkpoint()
    assert {p.name for p in key_dir.iterdir()} >= {
        "audit-ed25519.pem", "audit-ed25519.pub.pem", "kek.json", HEADS_FILE,
    }  # fmt: skip
    data_keys = tmp_path / "data" / "keys"
    assert not any(data_keys.glob("audit-ed25519*")) and not any(data_keys.glob("kek*"))
    lines = syslog_receiver.wait_for_lines(MESSAGE_MARK, 3)  # genesis, explicit, at close
    assert all(f'"node":"{settings.node_id}"' in line for line in lines)

    shutil.rmtree(tmp_path / "data" / "audit")
    with pytest.raises(ConfigError, match="wiped"):
        async with running_node(settings):
            pass


@pytest.mark.parametrize("address", ["siem.hospital.local", "siem:0", ":6514", "siem:port"])
def test_a_malformed_witness_address_stops_the_start(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match="audit_witness must be host:port"):
        node_settings(tmp_path, audit_witness=address)


def test_an_unreachable_witness_delays_nothing(tmp_path: Path) -> None:
    """The receiver is down: the log is written and closed at once, the checkpoints wait."""
    witness = SyslogWitness("127.0.0.1", 9, node="node-a")  # the discard port: nothing listens
    started = time.monotonic()
    write_log(tmp_path / "audit", None, 7, witness=witness)
    assert time.monotonic() - started < 8  # close waits at most 5 s for the witness
    assert witness.sent == 0
