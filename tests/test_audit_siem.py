"""Audit entries to the SIEM: every entry leaves the node as an RFC 5424 message with
structured data over TLS, in the same stream as the signed checkpoints, with the entry's seq and
hash and nothing that could identify a patient; a real rsyslog (rsyslog-gnutls) receives them,
also after it was down for a while; and `audit verify --witness` finds an entry the SIEM holds
that the log lost."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signaling import witness as witness_module
from signaling.audit import AuditLog, iter_entries
from signaling.auditformat import AuditEntry
from signaling.auditverify import compare_with_witness, verify_log
from signaling.siem import (
    ENTRY_MARK,
    SD_ID,
    format_entry,
    parse_witnessed_entries,
    siem_projection,
)
from signaling.witness import MESSAGE_MARK, SyslogWitness, parse_witness
from tests.fixtures.metrics import samples
from tests.fixtures.rsyslog import SyslogReceiver, syslog_receiver
from tests.fixtures.servers import REPO, eventually, node_settings, running_node
from tests.test_images import ct_bytes, fetch, meeting, upload

__all__ = ["syslog_receiver"]  # the fixture, imported for this module

KEY = Ed25519PrivateKey.generate()

# RFC 5424 section 6: HEADER SP STRUCTURED-DATA [SP MSG], as rsyslog writes it back
# (RSYSLOG_SyslogProtocol23Format): it re-emits the structured data only if it parsed it.
RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) (?P<sd>-|(?:\[[^\]\s]+(?: [^=\s\]]+=\"(?:[^\"\\\]]|\\.)*\")*\])+) ?(?P<msg>.*)"
)
SD_PARAM = re.compile(r'([^=\s\]]+)="((?:[^"\\\]]|\\.)*)"')

# What must never reach the SIEM: a patient's name, free text, an image's metadata.
PATIENT = "Wang^Fang"
# (The birth date whole: four digits alone turn up by chance in the hex of a hash.)
PHI_WORDS = ("Wang", "Fang", "CHEST", "lesion", "1957-01-02")


def entry(**overrides: object) -> AuditEntry:
    base: dict = dict(
        seq=7, ts="2026-12-07T09:00:00.000Z", action="join", outcome="allow", sub="dr-li",
        room="mdt-1", reason=None, fields={}, prev="a" * 64, hash="b" * 64,
    )  # fmt: skip
    base.update(overrides)
    return AuditEntry(**base)  # type: ignore[arg-type]


def write_phi_bait(log: AuditLog) -> None:
    """Entries whose fields a careless caller filled with what identifies a patient."""
    log.append(
        "image_shared", "allow", sub="dr-li", room="mdt-1", participant="p-1", image="img-9",
        kind="dicom", frames=3, patient=PATIENT, filename="WANG_FANG_CT.dcm",
        study_description="CT CHEST lesion", birth_date="1957-01-02",
        method="told by Wang Fang",
    )  # fmt: skip
    log.append("join_refused", "deny", sub="dr-li", room="mdt-1",
               reason="patient Wang Fang asked to leave", ip="127.0.0.1")  # fmt: skip
    log.append("join", "allow", sub="Wang Fang", room="mdt-1", role="specialist")


# --- the message, without a receiver ----------------------------------------------------------


def test_the_siem_copy_withholds_free_text_names_and_unknown_fields() -> None:
    shown = siem_projection(
        entry(
            reason="patient Wang Fang asked",
            fields={"jti": "j-1", "role": "chair", "patient": PATIENT, "method": "told by Fang",
                    "held_reasons": ["burned_in_text", "photo"], "frames": 3,
                    "title": "Tumour board"},
        ),
        node="node-a",
    )  # fmt: skip
    assert shown["jti"] == "j-1" and shown["role"] == "chair" and shown["frames"] == 3
    assert shown["held_reasons"] == "burned_in_text,photo"
    assert shown["withheld"] == 4  # reason, patient, method, title
    assert not {"reason", "patient", "method", "title"} & shown.keys()
    assert (shown["seq"], shown["hash"], shown["node"]) == (7, "b" * 64, "node-a")


def test_an_entry_is_one_rfc5424_message_with_structured_data() -> None:
    framed = format_entry(
        entry(outcome="deny", reason="policy", fields={"ip": "::1", "by": 'x"]\\y'}),
        "node-a", "mdt host", 42,
    )  # fmt: skip
    length, _, message = framed.partition(b" ")
    assert int(length) == len(message)  # RFC 5425 octet counting
    parsed = RFC5424.fullmatch(message.decode())
    assert parsed is not None, message
    assert int(parsed["pri"]) == 13 * 8 + 4  # log audit, warning (a denial)
    assert (parsed["host"], parsed["app"], parsed["msgid"]) == ("mdthost", "consilium", "entry")
    assert parsed["sd"].startswith(f"[{SD_ID} ")
    params = dict(SD_PARAM.findall(parsed["sd"]))
    assert params["seq"] == "7" and params["reason"] == "policy" and params["ip"] == "::1"
    assert "by" not in params  # not identifier-shaped: withheld
    assert parsed["msg"].startswith(ENTRY_MARK + " {")


def test_a_full_queue_drops_new_entries_counted_and_logged_never_a_checkpoint(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(witness_module, "MAX_QUEUED_ENTRIES", 5)
    monkeypatch.setattr(witness_module, "MAX_QUEUED", 2)
    witness = SyslogWitness("127.0.0.1", 9, node="node-a")  # nothing listens: all waits
    try:
        statement = {"count": 0, "head": "0" * 64, "ts": "2026-12-07T09:00:00.000Z", "sig": "x"}
        for seq in range(8):
            witness.send_entry(entry(seq=seq))
        for count in (1, 2, 3):
            witness.send({**statement, "count": count})
        assert witness.dropped_entries == 3 and witness.dropped_checkpoints == 1
        assert witness.queued == 5 + 2
        assert "entry seq 5 not queued for the SIEM" in caplog.text
    finally:
        witness.close(timeout=0.1)


# --- with a real rsyslog over TLS -------------------------------------------------------------


def witness_for(receiver: SyslogReceiver) -> SyslogWitness:
    return SyslogWitness(receiver.host, receiver.port, node="node-a", cafile=receiver.ca_file)


def test_entries_and_checkpoints_reach_the_siem_in_order_without_phi(
    tmp_path: Path, syslog_receiver: SyslogReceiver
) -> None:
    witness = witness_for(syslog_receiver)
    with AuditLog(tmp_path / "audit", KEY, checkpoint_every=3, witness=witness) as log:
        for i in range(4):
            log.append("join", "allow", sub=f"dr-{i}", room="mdt-1", jti=f"j-{i}")
        write_phi_bait(log)
    logged = list(iter_entries(tmp_path / "audit"))
    assert len(logged) == 7
    # Genesis, after 3 and 6 entries, and at close; every entry.
    syslog_receiver.wait_for_lines(MESSAGE_MARK, 4)
    syslog_receiver.wait_for_lines(ENTRY_MARK, 7)
    lines = syslog_receiver.output.read_text().splitlines()
    for word in PHI_WORDS:
        assert word not in syslog_receiver.output.read_text(), word

    stream = []  # the stream's order: ("c", count) or ("e", seq)
    for line in lines:
        parsed = RFC5424.fullmatch(line)
        assert parsed is not None, line  # rsyslog kept it as RFC 5424, structured data too
        if parsed["msgid"] == "entry":
            assert parsed["sd"].startswith(f"[{SD_ID} ")
            params = dict(SD_PARAM.findall(parsed["sd"]))
            stream.append(("e", int(params["seq"])))
            assert params["hash"] == logged[int(params["seq"])].hash
            assert params["action"] == logged[int(params["seq"])].action
        else:
            assert parsed["msgid"] == "checkpoint"
            stream.append(("c", int(re.search(r'"count":(\d+)', line)[1])))  # type: ignore[index]
    assert stream == [("c", 0), ("e", 0), ("e", 1), ("e", 2), ("c", 3), ("e", 3), ("e", 4),
                      ("e", 5), ("c", 6), ("e", 6), ("c", 7)]  # fmt: skip
    witnessed = [(w.seq, w.hash) for w in parse_witnessed_entries(syslog_receiver.output)]
    assert witnessed == [(e.seq, e.hash) for e in logged]
    assert witness.connections == 1  # one TLS connection carries the whole stream
    bait = next(w for w in parse_witnessed_entries(syslog_receiver.output) if w.seq == 4)
    assert '"withheld":5' in lines[bait.line - 1]  # the five patient-ish fields


def test_a_siem_that_was_down_gets_the_queued_entries_in_order(
    tmp_path: Path, syslog_receiver: SyslogReceiver
) -> None:
    witness = witness_for(syslog_receiver)
    log = AuditLog(tmp_path / "audit", KEY, checkpoint_every=1000, witness=witness)
    log.append("join", "allow", sub="dr-0", room="mdt-1")
    syslog_receiver.wait_for_lines(ENTRY_MARK, 1)
    syslog_receiver.stop()
    for i in range(1, 40):
        log.append("join", "allow", sub=f"dr-{i}", room="mdt-1")
    assert witness.queued >= 39 - 1  # nothing reaches a receiver that is down
    syslog_receiver.start()
    log.close()  # waits (at most 5 s) for the queue; the retry comes within 5 s
    lines = syslog_receiver.wait_for_lines(ENTRY_MARK, 40, timeout=20)
    seqs = [w.seq for w in parse_witnessed_entries(syslog_receiver.output)]
    assert seqs == list(range(40))
    assert witness.dropped_entries == 0 and len(lines) == 40
    assert witness.connections == 2  # before and after the receiver's restart


def test_an_entry_the_siem_holds_and_the_log_lost_fails_verify(
    tmp_path: Path, syslog_receiver: SyslogReceiver
) -> None:
    """Entries removed after the last signed checkpoint: the checkpoints cannot tell (the tail
    was never signed), the SIEM's copy of the entries can."""
    audit_dir = tmp_path / "data" / "audit"
    witness = witness_for(syslog_receiver)
    log = AuditLog(audit_dir, KEY, checkpoint_every=1000, witness=witness)
    for i in range(5):
        log.append("join", "allow", sub=f"dr-{i}", room="mdt-1")
    syslog_receiver.wait_for_lines(ENTRY_MARK, 5)
    checkpoints = list(parse_witness(syslog_receiver.output))
    intact = compare_with_witness(
        audit_dir, KEY.public_key(), checkpoints, parse_witnessed_entries(syslog_receiver.output)
    )
    assert intact.ok and intact.entries_matched == 5

    # The node dies; an intruder removes the last two (unsigned) entries before it restarts.
    witness.close()
    copy = tmp_path / "copy" / "audit"
    shutil.copytree(audit_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    segment = copy / "audit-000001.jsonl"
    segment.write_text("".join(segment.read_text().splitlines(keepends=True)[:3]))
    assert verify_log(copy, KEY.public_key()).ok  # the log alone cannot tell
    report = compare_with_witness(
        copy, KEY.public_key(), checkpoints, parse_witnessed_entries(syslog_receiver.output)
    )
    assert not report.ok and report.entries_matched == 3
    assert "seq 3" in report.problems[0] and "entries removed" in report.problems[0]

    public_pem = tmp_path / "audit.pub.pem"
    public_pem.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for data_dir, status in ((tmp_path / "data", 0), (tmp_path / "copy", 1)):
        done = subprocess.run(
            [sys.executable, "-m", "consilium.cli", "audit", "verify", "--data-dir",
             str(data_dir), "--public-key", str(public_pem), "--witness",
             str(syslog_receiver.output)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert done.returncode == status, (done.stdout, done.stderr)
        if status:
            assert "FAILED: witness:" in done.stderr and "SIEM holds an entry" in done.stderr
        else:
            assert "all 5 entries the witness received" in done.stdout


async def test_a_node_sends_its_entries_to_the_siem_unless_told_not_to(
    tmp_path: Path, syslog_receiver: SyslogReceiver
) -> None:
    settings = node_settings(
        tmp_path / "a",
        media=False,
        audit_witness=syslog_receiver.address,
        audit_witness_ca=str(syslog_receiver.ca_file),
        audit_siem_app_name="consilium-mdt",
    )
    async with running_node(settings) as node:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/api/audit") as response:
                assert response.status == 401  # refused: audited
            assert node.node is not None and node.node.witness is not None
            node.node.audit.checkpoint()
            for _ in range(100):  # genesis, config_loaded, api_refused, the checkpoint
                if node.node.witness.sent >= 4:
                    break
                await asyncio.sleep(0.05)
            async with http.get(f"{node.url}/metrics") as response:
                metrics = samples(await response.text())
            assert metrics["consilium_audit_witness_sent_total"] >= 4
            assert metrics["consilium_audit_witness_dropped_entries_total"] == 0
    syslog_receiver.wait_for_lines(ENTRY_MARK, 3)
    apps = {RFC5424.fullmatch(line)["app"] for line in  # type: ignore[index]
            syslog_receiver.output.read_text().splitlines()}  # fmt: skip
    assert apps == {"consilium-mdt"}
    actions = [w.action for w in parse_witnessed_entries(syslog_receiver.output)]
    assert actions == ["config_loaded", "api_refused", "server_stopped"]

    quiet = node_settings(
        tmp_path / "b",
        media=False,
        audit_witness=syslog_receiver.address,
        audit_witness_ca=str(syslog_receiver.ca_file),
        audit_siem_entries=False,
    )
    async with running_node(quiet):
        pass

    def witnessed_b() -> bool:
        return any(w.node == quiet.node_id for w in parse_witness(syslog_receiver.output))

    # rsyslog writes what it got a moment later (CI once read the file before B's lines).
    await eventually(witnessed_b, timeout=10, interval=0.1)
    node_b = [w for w in parse_witnessed_entries(syslog_receiver.output) if w.node == quiet.node_id]
    assert node_b == [], "its checkpoints reach the witness, its entries do not"


async def test_a_real_meeting_with_a_patients_ct_leaves_no_phi_in_the_siem(
    tmp_path: Path, syslog_receiver: SyslogReceiver
) -> None:
    """The field's path: people join (their tokens carry display names), a CT whose header
    names the patient is shared and viewed; the SIEM gets every entry, and none of it."""
    settings = node_settings(
        tmp_path / "data",
        media=False,
        max_image_bytes=512 * 1024,
        audit_witness=syslog_receiver.address,
        audit_witness_ca=str(syslog_receiver.ca_file),
    )
    ct = ct_bytes(
        PatientName="WANGFANG^MEILING", PatientID="MRN55501234",
        StudyDescription="CT THORAX SUSPECTED LESION", PatientBirthDate="19570102",
    )  # fmt: skip
    async with running_node(settings) as node:
        await meeting(node)
        status, body = await upload(node, "dr-heart", ct)
        assert status == 201, body
        assert (await fetch(node, "dr-chair", body["image_id"])).status == 200
    logged = list(iter_entries(tmp_path / "data" / "audit"))
    syslog_receiver.wait_for_lines(ENTRY_MARK, len(logged))
    received = syslog_receiver.output.read_text()
    for secret in ("WANGFANG", "MEILING", "55501234", "THORAX", "LESION", "19570102",
                   "Dr-Chair", "Dr-Heart"):  # fmt: skip
        assert secret not in received, secret
    witnessed = {w.seq: w for w in parse_witnessed_entries(syslog_receiver.output)}
    assert [(w.seq, w.hash) for w in witnessed.values()] == [(e.seq, e.hash) for e in logged]
    shared = next(e for e in logged if e.action == "image_shared")
    line = received.splitlines()[witnessed[shared.seq].line - 1]
    assert f'image="{body["image_id"]}"' in line and 'sub="dr-heart"' in line
