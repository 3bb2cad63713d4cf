"""Audit entries as a SIEM collects them: one RFC 5424 message per entry, with RFC 5424
structured data, carrying the entry's place in the hash chain and no PHI.

The SIEM copy is a projection of the entry, not the entry: the chain position (`seq`), its
`hash` and `prev` (so the SIEM's copy is matched to the log line by line), what happened
(`action`, `outcome`, `ts`), who and where (`sub`, the directory subject id; `room`), a `reason`
only when it is a code, and only the fields named in `SIEM_FIELDS` whose values are
identifiers, codes, numbers or flags. Anything else an entry may hold (a value with spaces,
a field this module does not know) stays in the log; the message says how many fields were
withheld, and the hash leads an investigator to the full entry. So a name, a sentence or an
image's metadata cannot leave the node through this stream, whatever a caller adds to an
entry later.

Plain functions over an `AuditEntry` and over the receiver's file; the sending is
`signaling.witness.SyslogWitness`, which interleaves these with the signed checkpoints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.canonical import canonical_json
from signaling.auditformat import AuditEntry

ENTERPRISE_NUMBER = 32473
"""The private enterprise number in the SD-ID. 32473 is IANA's number reserved for
documentation (RFC 5612); a hospital that registers its own PEN can filter on either, the SD-ID
is fixed so that SIEM rules written once keep working."""
SD_ID = f"consilium@{ENTERPRISE_NUMBER}"
"""The structured-data element every entry message carries."""
ENTRY_MARK = "consilium-audit-entry"
"""Starts the message text; the projection's JSON follows it (for SIEM formats that drop
structured data, as for the checkpoints)."""
MSGID = "entry"
"""The RFC 5424 MSGID of an entry message (a checkpoint's is ``checkpoint``)."""
SIEM_FIELDS = frozenset(
    {
        "jti", "role", "dept", "departments", "node", "ip", "participant", "participant_id",
        "admitted_by", "by", "image", "frame", "frames", "kind", "recording", "recordings",
        "recording_class", "stream", "decision", "method", "notice_version", "participants",
        "declined", "missing", "count", "keys", "lobby", "redacted", "text_blanked",
        "burned_in_confirmed", "held_reasons", "shredded", "rooms", "images", "first_seq",
        "entries", "ttl_s", "rewrapped",
    }
)  # fmt: skip
"""Entry fields the SIEM gets: identifiers, codes, counts and flags. A field not named here
(or whose value is not identifier-shaped) is withheld and counted in ``withheld``."""

# Facility 13 ("log audit", RFC 5424 table 1); severity by outcome: a denial is a warning,
# an error an error, the rest notices.
_FACILITY = 13
_SEVERITY = {"deny": 4, "error": 3}
_NOTICE = 5
# An identifier or code: no spaces, no quotes, no brackets; long enough for a UPN or a JTI.
_IDENTIFIER = re.compile(r"[A-Za-z0-9@._:+/=-]{1,128}")
_CODE = re.compile(r"[a-z0-9_.:-]{1,64}")
_MAX_LIST = 32


@dataclass(frozen=True, slots=True)
class WitnessedEntry:
    """An audit entry as the SIEM holds it: where it sits in which node's chain."""

    node: str
    """The node whose log it came from."""
    seq: int
    """Its position in the chain."""
    hash: str
    """Its hash, as in the log."""
    action: str
    """What happened."""
    line: int
    """Line number in the SIEM's file."""


def siem_projection(entry: AuditEntry, node: str) -> dict[str, Any]:
    """What of `entry` may leave the node (see the module's docstring): flat, JSON, no PHI."""
    projected: dict[str, Any] = {
        "node": node, "seq": entry.seq, "hash": entry.hash, "prev": entry.prev,
        "ts": entry.ts, "action": entry.action, "outcome": entry.outcome,
    }  # fmt: skip
    withheld = 0
    for label, text, shape in (
        ("sub", entry.sub, _IDENTIFIER), ("room", entry.room, _IDENTIFIER),
        ("reason", entry.reason, _CODE),
    ):  # fmt: skip
        if text is not None and shape.fullmatch(text):
            projected[label] = text
        elif text is not None:
            withheld += 1
    for key, value in sorted(entry.fields.items()):
        shown = _shown_value(value) if key in SIEM_FIELDS else None
        if shown is None:
            withheld += value is not None
        else:
            projected[key] = shown
    if withheld:
        projected["withheld"] = withheld
    return projected


def format_entry(
    entry: AuditEntry, node: str, hostname: str, pid: int, app_name: str = "consilium"
) -> bytes:
    """One RFC 5424 message for an audit entry, with RFC 5425's octet-count framing."""
    projected = siem_projection(entry, node)
    params = " ".join(f'{key}="{_param_value(value)}"' for key, value in projected.items())
    text = canonical_json(projected, ascii_only=True).decode()
    pri = _FACILITY * 8 + _SEVERITY.get(entry.outcome, _NOTICE)
    message = (
        f"<{pri}>1 {entry.ts} {header_field(hostname)} {header_field(app_name)} {pid} {MSGID} "
        f"[{SD_ID} {params}] {ENTRY_MARK} {text}"
    ).encode()
    return str(len(message)).encode() + b" " + message


def parse_witnessed_entries(path: Path) -> Iterator[WitnessedEntry]:
    """Every entry message in a SIEM file, whatever its line format (the text is searched for
    `ENTRY_MARK` and the JSON after it is read); other lines are skipped."""
    decoder = json.JSONDecoder()
    with Path(path).open("rb") as file:
        for lineno, raw in enumerate(file, start=1):
            text = raw.decode("utf-8", "replace")
            at = text.find(ENTRY_MARK + " {")
            if at < 0:
                continue
            try:
                obj, _ = decoder.raw_decode(text, at + len(ENTRY_MARK) + 1)
                yield WitnessedEntry(
                    node=str(obj["node"]), seq=int(obj["seq"]), hash=str(obj["hash"]),
                    action=str(obj["action"]), line=lineno,
                )  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours


def header_field(value: str) -> str:
    """An RFC 5424 header field: printable ASCII without spaces, or the nil value."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:255]
    return cleaned or "-"


def _shown_value(value: Any) -> str | int | float | bool | None:
    """A field's value if it is a flag, number, identifier or a short list of identifiers."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if _IDENTIFIER.fullmatch(value) else None
    if isinstance(value, list) and len(value) <= _MAX_LIST:
        items = [_shown_value(item) for item in value]
        if all(isinstance(item, str | int) and not isinstance(item, bool) for item in items):
            return ",".join(str(item) for item in items)
    return None


def _param_value(value: str | int | float | bool) -> str:
    """An RFC 5424 PARAM-VALUE: '"', '\\' and ']' escaped with a backslash."""
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
