"""Checking an audit log after the fact, with only the public key: the whole chain and every
checkpoint (`verify_log`), and the log against what its external witness received
(`compare_with_witness`, the checkpoints and the SIEM's copy of the entries). Neither raises
for what it finds in the files: a report names it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import canonical_json
from core.errors import IntegrityError
from signaling.audit import iter_entries
from signaling.auditformat import (
    CHECKPOINTS_FILE,
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
    Malformed,
    decode_checkpoint,
    decode_entry,
    entry_hash,
    segment_name,
    segment_paths,
)


@dataclass
class VerifyReport:
    """The outcome of `verify_log`."""

    ok: bool
    """True if every entry and checkpoint checked out."""
    entries: int
    """Entries that checked out before the first problem (all of them when ok)."""
    checkpoints: int
    """Checkpoints whose signature checked out before the first problem."""
    first_bad: str | None
    """Where the first problem is and what it is, e.g.
    "audit-000001.jsonl line 17 (seq 16): hash mismatch (entry edited)"; None when ok."""
    detail: str
    """One-line summary for a person."""
    unsigned: int = 0
    """Entries after the last checkpoint: chained but not yet signed (crash, or still open)."""


def verify_log(directory: Path, public_key: Ed25519PublicKey) -> VerifyReport:
    """Check the whole log in `directory`: chain, checkpoint signatures, and length.

    Fails on any edited, removed, reordered, duplicated or truncated entry, a garbage or
    partial line, a missing segment file, and a checkpoint that is forged, signed by another
    key, or out of order. `first_bad` names the first problem by file, line and sequence
    number. Never raises for what it finds in the files.
    """
    directory = Path(directory)
    checkpoints_path = directory / CHECKPOINTS_FILE
    segments = segment_paths(directory)
    if not segments and not checkpoints_path.exists():
        where = f"{directory}: no audit log (no segments, no {CHECKPOINTS_FILE})"
        return VerifyReport(False, 0, 0, where, f"verification failed: {where}")

    checkpoints, problem = _read_checkpoints(checkpoints_path, public_key)
    signed_heads = {cp.count - 1: (cp, lineno) for lineno, cp in checkpoints if cp.count > 0}
    expected_seq = 0
    prev = GENESIS_HASH
    entry_problem: str | None = None
    last_place = f"{segment_name(1)} line 0"
    for index, (number, path) in enumerate(segments, start=1):
        if number != index:
            entry_problem = (
                f"{segment_name(index)} (expected seq {expected_seq}): segment file missing"
            )
            break
        checked = _verify_segment(path, expected_seq, prev, signed_heads)
        expected_seq += checked.entries
        prev = checked.head
        last_place = f"{path.name} line {checked.lines}"
        if checked.problem is not None:
            entry_problem = checked.problem
            break

    if entry_problem is not None:
        problem = entry_problem
    elif problem is None:
        if not checkpoints:
            problem = (
                f"{CHECKPOINTS_FILE}: no checkpoints: {expected_seq} entries are covered by "
                "no signature"
            )
        elif checkpoints[-1][1].count > expected_seq:
            problem = (
                f"{last_place} (seq {expected_seq}): log truncated: checkpoint says "
                f"{checkpoints[-1][1].count} entries, found {expected_seq}"
            )
    if problem is not None:
        return VerifyReport(
            ok=False,
            entries=expected_seq,
            checkpoints=len(checkpoints),
            first_bad=problem,
            detail=f"verification failed after {expected_seq} good entries: {problem}",
        )
    unsigned = expected_seq - checkpoints[-1][1].count
    detail = (
        f"intact: {expected_seq} entries in {len(segments)} segment file(s), "
        f"{len(checkpoints)} signed checkpoint(s)"
    )
    if unsigned:
        detail += (
            f"; {unsigned} entries after the last checkpoint are chained but not yet signed "
            "(log still open, or not closed cleanly)"
        )
    return VerifyReport(True, expected_seq, len(checkpoints), None, detail, unsigned)


@dataclass
class WitnessReport:
    """The outcome of `compare_with_witness`."""

    matched: int = 0
    """Witnessed checkpoints (signed by the key) that the log still holds."""
    other_signers: int = 0
    """Checkpoint lines in the witness file not signed by the key (other nodes, or forged)."""
    unwitnessed: int = 0
    """Entries after the last witnessed checkpoint (not yet copied off the machine)."""
    entries_matched: int = 0
    """Entries the SIEM holds (from this key's nodes) that the log holds with the same hash."""
    problems: list[str] = field(default_factory=list)
    """Each witnessed checkpoint or entry the log no longer holds, one sentence each."""

    @property
    def ok(self) -> bool:
        """Whether the log holds every checkpoint the witness saw (and it saw at least one)."""
        return not self.problems


def compare_with_witness(
    directory: Path,
    public_key: Ed25519PublicKey,
    witness: Iterable[WitnessedStatement],
    entries: Iterable[WitnessedRecord] = (),
) -> WitnessReport:
    """Check that the log still holds every checkpoint the witness received: entry count-1
    with the witnessed head. Finds a log cut short or wiped (fewer entries than witnessed)
    and entries rewritten, inserted or removed before a witnessed head. Then each entry the
    SIEM received from a node whose checkpoints this key signed must be in the log with the
    same hash (entries are not signed: a node is trusted by its checkpoints). Never raises
    for what it finds in the files."""
    report = WitnessReport()
    witnessed = []
    for item in witness:
        statement = {"count": item.count, "head": item.head, "sig": item.sig, "ts": item.ts}
        try:
            decode_checkpoint(canonical_json(statement), public_key)
        except Malformed:
            report.other_signers += 1
            continue
        witnessed.append(item)
    if not witnessed:
        report.problems.append(
            f"the witness holds no checkpoint signed by this key ({report.other_signers} "
            "signed by others): wrong key or wrong witness file, or nothing was ever witnessed"
        )
        return report
    heads: list[str] = []
    try:
        heads = [entry.hash for entry in iter_entries(directory)]
    except IntegrityError as exc:
        report.problems.append(f"the log cannot be read to the end ({exc}); run verify")
    for item in witnessed:
        where = f"witness line {item.line} ({item.ts})"
        if item.count > len(heads):
            what = "wiped" if not heads else "cut short"
            report.problems.append(
                f"{where}: the log held {item.count} entries then, it holds {len(heads)} now: "
                f"entries removed (log {what})"
            )
        elif item.count > 0 and heads[item.count - 1] != item.head:
            report.problems.append(
                f"{where}: entry seq {item.count - 1} had hash {item.head[:16]}..., the log's "
                "differs: entries rewritten, inserted or removed before it"
            )
        else:
            report.matched += 1
    report.unwitnessed = max(0, len(heads) - max(item.count for item in witnessed))
    nodes = {item.node for item in witnessed}
    for record in entries:
        if record.node not in nodes:
            continue
        where = f"witness line {record.line} ({record.action}, seq {record.seq})"
        if record.seq >= len(heads):
            report.problems.append(
                f"{where}: the SIEM holds an entry the log does not ({len(heads)} entries): "
                "entries removed"
            )
        elif heads[record.seq] != record.hash:
            report.problems.append(
                f"{where}: the SIEM's hash {record.hash[:16]}... differs from the log's: "
                "the entry was rewritten, or entries inserted or removed before it"
            )
        else:
            report.entries_matched += 1
    return report


class WitnessedStatement(Protocol):
    """A checkpoint as a witness holds it (`signaling.witness.WitnessedCheckpoint`)."""

    @property
    def count(self) -> int: ...
    @property
    def head(self) -> str: ...
    @property
    def ts(self) -> str: ...
    @property
    def sig(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def node(self) -> str: ...


class WitnessedRecord(Protocol):
    """An entry as the SIEM holds it (`signaling.siem.WitnessedEntry`)."""

    @property
    def node(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def line(self) -> int: ...


def _read_checkpoints(
    path: Path, public_key: Ed25519PublicKey
) -> tuple[list[tuple[int, Checkpoint]], str | None]:
    """The valid checkpoints (with line numbers) up to the first problem, and that problem."""
    checkpoints: list[tuple[int, Checkpoint]] = []
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return checkpoints, None
    with file:
        for lineno, raw in enumerate(file, start=1):
            where = f"{CHECKPOINTS_FILE} line {lineno}"
            if not raw.endswith(b"\n"):
                return checkpoints, f"{where}: partial last line (no newline)"
            try:
                checkpoint = decode_checkpoint(raw[:-1], public_key)
            except Malformed as exc:
                return checkpoints, f"{where}: {exc}"
            if not checkpoints:
                if checkpoint.count != 0 or checkpoint.head != GENESIS_HASH:
                    return checkpoints, (
                        f"{where}: first checkpoint is not the genesis (count 0); "
                        "earlier checkpoints removed"
                    )
            else:
                before = checkpoints[-1][1]
                if checkpoint.count < before.count:
                    return checkpoints, f"{where}: count goes backwards (checkpoints reordered)"
                if checkpoint.count == before.count and checkpoint.head != before.head:
                    return checkpoints, f"{where}: contradicts the checkpoint before it"
            checkpoints.append((lineno, checkpoint))
    return checkpoints, None


class _SegmentCheck(NamedTuple):
    """What checking one segment found."""

    problem: str | None
    entries: int
    """Entries that checked out before the problem."""
    head: str
    """Hash of the last entry that checked out."""
    lines: int
    """Line number of the last entry that checked out."""


def _verify_segment(
    path: Path,
    first_seq: int,
    prev: str,
    signed_heads: dict[int, tuple[Checkpoint, int]],
) -> _SegmentCheck:
    """Check one segment's entries against the chain so far."""
    expected_seq = first_seq
    lineno = 0
    with path.open("rb") as file:
        for raw in file:
            lineno += 1
            place = f"{path.name} line {lineno}"
            problem: str | None = None
            if not raw.endswith(b"\n"):
                problem = f"{place} (expected seq {expected_seq}): partial last line (no newline)"
            else:
                try:
                    entry = decode_entry(raw[:-1])
                except Malformed as exc:
                    problem = f"{place} (expected seq {expected_seq}): {exc}"
                else:
                    problem = _chain_problem(entry, expected_seq, prev, signed_heads)
                    if problem is not None:
                        problem = f"{place} (seq {entry.seq}): {problem}"
            if problem is not None:
                return _SegmentCheck(problem, expected_seq - first_seq, prev, lineno - 1)
            expected_seq += 1
            prev = entry.hash
    return _SegmentCheck(None, expected_seq - first_seq, prev, lineno)


def _chain_problem(
    entry: AuditEntry,
    expected_seq: int,
    prev: str,
    signed_heads: dict[int, tuple[Checkpoint, int]],
) -> str | None:
    if entry_hash(entry) != entry.hash:
        return "hash mismatch (entry edited)"
    if entry.seq > expected_seq:
        return f"expected seq {expected_seq}: entries removed or reordered"
    if entry.seq < expected_seq:
        return f"expected seq {expected_seq}: entry duplicated or reordered"
    if entry.prev != prev:
        return "prev does not match the entry before it (entries removed, reordered or rewritten)"
    signed = signed_heads.get(entry.seq)
    if signed is not None and signed[0].head != entry.hash:
        return (
            f"differs from the signed checkpoint at {CHECKPOINTS_FILE} line {signed[1]} "
            "(chain rewritten)"
        )
    return None
