"""STOW-RS without the network: the request body that stores instances, and what the PACS said.

Sans-IO, like `imaging.dicomweb`: `stow_request` makes the `multipart/related;
type="application/dicom"` body of `POST {root}/studies` (PS3.18 10.5), and `StoreOutcome.from_json`
reads the PACS's answer, the Store Instances Response Module as DICOM JSON (PS3.18 10.5.3.1): the
instances it keeps (`ReferencedSOPSequence`) and those it refused (`FailedSOPSequence`, with a
reason code). The HTTP client that sends them lives in `signaling.pacs`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


def stow_request(instances: Sequence[bytes], boundary: str = "") -> tuple[str, bytes]:
    """The Content-Type and body storing `instances` (Part 10 files) in one request. The
    boundary is random unless given; one that occurs in an instance is never used."""
    while True:
        mark = boundary or f"consilium-{secrets.token_hex(16)}"
        if not any(mark.encode() in instance for instance in instances):
            break
        if boundary:
            raise ValueError("the boundary occurs in an instance")
    parts = []
    for instance in instances:
        parts.append(f"--{mark}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(instance)
        parts.append(b"\r\n")
    parts.append(f"--{mark}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary="{mark}"'
    return content_type, b"".join(parts)


def _items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = answer.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values if isinstance(item, dict)] if isinstance(values, list) else []


def _uid_of(item: dict[str, Any]) -> str:
    element = item.get(REFERENCED_SOP_INSTANCE_UID)
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if isinstance(values, list) and values else ""


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What the PACS said of a STOW-RS request."""

    stored: frozenset[str]
    """SOPInstanceUIDs it keeps."""
    failed: tuple[tuple[str, int], ...]
    """SOPInstanceUIDs it refused, each with its failure reason code (PS3.4 Annex B)."""

    @classmethod
    def from_json(cls, answer: Any) -> StoreOutcome:
        """The outcome in a DICOM JSON answer (an object, or a list holding one; anything else
        has no instance stored)."""
        if isinstance(answer, list):
            answer = answer[0] if answer else {}
        if not isinstance(answer, dict):
            return cls(frozenset(), ())
        stored = frozenset(_uid_of(i) for i in _items(answer, REFERENCED_SOP_SEQUENCE)) - {""}
        failed = []
        for item in _items(answer, FAILED_SOP_SEQUENCE):
            reason = item.get(FAILURE_REASON)
            values = reason.get("Value") if isinstance(reason, dict) else None
            code = values[0] if isinstance(values, list) and values else 0
            failed.append((_uid_of(item), int(code) if isinstance(code, int) else 0))
        return cls(stored, tuple(failed))

    def kept(self, sop_instance_uids: Sequence[str]) -> bool:
        """Whether every one of these instances was stored and none refused."""
        return not self.failed and set(sop_instance_uids) <= self.stored
