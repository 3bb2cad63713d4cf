"""DICOMweb without the network: QIDO-RS queries and answers, WADO-RS multipart bodies.

Sans-IO (like `h11`): `search_params` turns what a radiologist asked for into QIDO-RS query
parameters (or refuses it), `StudyMatch.from_json` / `SeriesMatch.from_json` read the PACS's
DICOM JSON answer (PS3.18 F.2), and `MultipartRelated` splits a WADO-RS `multipart/related`
body into its `application/dicom` instances as bytes are fed in, holding at most one instance
(and one chunk) at a time: a 200-slice series never sits in memory whole. The HTTP client that
feeds them lives in `signaling.pacs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from core.errors import BadMessage, PayloadTooLarge

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
"""A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters."""
_IDENTIFIER = re.compile(r"^[A-Za-z0-9 ._/^-]{1,64}$")
"""A patient id or accession number as asked: no QIDO wildcard (`*`, `?`), no comma list."""
_MODALITY = re.compile(r"^[A-Z]{2,4}$")
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
STUDY_FIELDS = ("0020000D", "00100020", "00100010", "00080020", "00080050", "00081030",
                "00080061", "00201208")  # fmt: skip
"""Attributes asked of each study (`includefield`): UID, patient id and name, date, accession,
description, modalities, instance count."""
SERIES_FIELDS = ("0020000D", "0020000E", "00080060", "0008103E", "00200011", "00201209")
"""Attributes asked of each series: study and series UIDs, modality, description, number,
instance count."""


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """What a radiologist searches the PACS for, from a room. One identifier is required: a
    search never lists the PACS's patients at large."""

    patient_id: str = ""
    """PatientID, exactly (no wildcard)."""
    accession: str = ""
    """AccessionNumber, exactly."""
    date_from: date | None = None
    """First StudyDate included."""
    date_to: date | None = None
    """Last StudyDate included."""
    modality: str = ""
    """ModalitiesInStudy, e.g. `CT` (empty: any)."""

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SearchRequest:
        """The request from the route's JSON body (strings `patient_id`, `accession`,
        `date_from` and `date_to` as YYYY-MM-DD, `modality`); `BadMessage` for anything
        malformed. A body, not a query string: URLs reach access logs, patient ids must not."""
        unknown = set(body) - {"patient_id", "accession", "date_from", "date_to", "modality"}
        if unknown:
            raise BadMessage(f"unknown search field(s): {', '.join(sorted(unknown))[:80]}")
        if not all(isinstance(value, str) for value in body.values()):
            raise BadMessage("search fields are strings")
        query: dict[str, str] = body
        patient_id = query.get("patient_id", "").strip()
        accession = query.get("accession", "").strip()
        if not patient_id and not accession:
            raise BadMessage("search by patient_id or accession (a date alone lists everyone)")
        for name, value in (("patient_id", patient_id), ("accession", accession)):
            if value and not _IDENTIFIER.match(value):
                raise BadMessage(f"{name} must be 1-64 letters, digits, spaces or . _ / ^ -")
        modality = query.get("modality", "").strip().upper()
        if modality and not _MODALITY.match(modality):
            raise BadMessage("modality must be a DICOM modality code such as CT or MR")
        dates = []
        for name in ("date_from", "date_to"):
            raw = query.get(name, "").strip()
            try:
                dates.append(date.fromisoformat(raw) if raw else None)
            except ValueError:
                raise BadMessage(f"{name} must be a date, YYYY-MM-DD") from None
        if dates[0] and dates[1] and dates[0] > dates[1]:
            raise BadMessage("date_from is after date_to")
        return cls(patient_id, accession, dates[0], dates[1], modality)

    def params(self) -> list[tuple[str, str]]:
        """The QIDO-RS query parameters of `GET {root}/studies` (PS3.18 8.3.4)."""
        params: list[tuple[str, str]] = []
        if self.patient_id:
            params.append(("PatientID", self.patient_id))
        if self.accession:
            params.append(("AccessionNumber", self.accession))
        if self.date_from or self.date_to:
            first = self.date_from.strftime("%Y%m%d") if self.date_from else ""
            last = self.date_to.strftime("%Y%m%d") if self.date_to else ""
            params.append(("StudyDate", f"{first}-{last}"))
        if self.modality:
            params.append(("ModalitiesInStudy", self.modality))
        params += [("includefield", tag) for tag in STUDY_FIELDS]
        return params


def check_uid(uid: str, what: str) -> str:
    """`uid` if it is a DICOM UID; `BadMessage` naming `what` otherwise (never a path)."""
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        raise BadMessage(f"{what} must be a DICOM UID (digits and dots)")
    return uid


def _value(item: dict[str, Any], tag: str) -> Any:
    """The first value of `tag` in a DICOM JSON object, or None."""
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _text(item: dict[str, Any], tag: str, limit: int = 128) -> str:
    value = _value(item, tag)
    if isinstance(value, dict):  # a person name: {"Alphabetic": "..."}
        value = value.get("Alphabetic", "")
    return " ".join(str(value or "").split())[:limit]


def _count(item: dict[str, Any], tag: str) -> int:
    try:
        return max(0, int(_value(item, tag) or 0))
    except (TypeError, ValueError):
        return 0


def _iso_date(raw: str) -> str:
    return f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 and raw.isdigit() else ""


@dataclass(frozen=True, slots=True)
class StudyMatch:
    """One study the PACS found: what the searcher sees to pick it (never audited)."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    """YYYY-MM-DD, or empty."""
    accession: str
    description: str
    modalities: tuple[str, ...]
    instances: int

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> StudyMatch | None:
        """The match in one QIDO-RS answer item; None when it has no valid study UID."""
        uid = _text(item, "0020000D", 64)
        if not UID_PATTERN.match(uid):
            return None
        element = item.get("00080061")
        raw = element.get("Value", []) if isinstance(element, dict) else []
        modalities = tuple(str(m) for m in raw if isinstance(m, str))[:16]
        return cls(
            study_uid=uid,
            patient_id=_text(item, "00100020", 64),
            patient_name=_text(item, "00100010"),
            study_date=_iso_date(_text(item, "00080020", 8)),
            accession=_text(item, "00080050", 16),
            description=_text(item, "00081030"),
            modalities=modalities,
            instances=_count(item, "00201208"),
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of `GET /api/rooms/{room}/pacs/studies`."""
        return {
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "study_date": self.study_date,
            "accession": self.accession,
            "description": self.description,
            "modalities": list(self.modalities),
            "instances": self.instances,
        }


@dataclass(frozen=True, slots=True)
class SeriesMatch:
    """One series of a study, as the searcher picks it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int
    instances: int

    @classmethod
    def from_json(cls, item: dict[str, Any], study_uid: str) -> SeriesMatch | None:
        """The series in one QIDO-RS answer item; None when it has no valid series UID."""
        uid = _text(item, "0020000E", 64)
        if not UID_PATTERN.match(uid):
            return None
        return cls(
            study_uid=study_uid,
            series_uid=uid,
            modality=_text(item, "00080060", 16),
            description=_text(item, "0008103E"),
            number=_count(item, "00200011"),
            instances=_count(item, "00201209"),
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of `GET /api/rooms/{room}/pacs/studies/{study}/series`."""
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "modality": self.modality,
            "description": self.description,
            "number": self.number,
            "instances": self.instances,
        }


class MalformedMultipart(ValueError):
    """The PACS answered with a body that is not the multipart/related it announced (the
    client turns it into its own error: the PACS's fault, not the person's request)."""


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a `multipart/related` Content-Type; `MalformedMultipart` otherwise."""
    if not content_type.lower().startswith("multipart/related"):
        raise MalformedMultipart("the PACS did not answer with multipart/related")
    found = _BOUNDARY.search(content_type)
    if not found or not 1 <= len(found.group(1)) <= 70:
        raise MalformedMultipart("the PACS's multipart answer has no boundary")
    return found.group(1).encode("latin-1")


class MultipartRelated:
    """Splits a `multipart/related` body (RFC 2046 5.1, RFC 2387) into its parts' bodies as
    bytes arrive. Only the current part and the last chunk are held: `feed` returns each part
    completed by that chunk; a part over `max_part_bytes` raises `PayloadTooLarge`.
    """

    def __init__(self, boundary: bytes, max_part_bytes: int) -> None:
        self._delimiter = b"\r\n--" + boundary
        self.max_part_bytes = max_part_bytes
        """Largest part accepted (the node's `max_image_bytes`)."""
        # Prefixed with CRLF so the first delimiter looks like every later one.
        self._buffer = bytearray(b"\r\n")
        self._in_part = False
        self._finished = False
        self._scanned = 0  # bytes of the buffer already searched for a delimiter
        self.parts = 0
        """Parts returned so far."""

    @property
    def finished(self) -> bool:
        """The closing delimiter (`--boundary--`) was seen."""
        return self._finished

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add the next bytes of the body; the bodies of the parts they complete."""
        if self._finished:
            return []
        self._buffer += chunk
        done: list[bytes] = []
        while not self._finished:
            # Search only what is new (and a delimiter's length before it): linear in the body.
            at = self._buffer.find(self._delimiter, max(0, self._scanned - len(self._delimiter)))
            if at < 0:
                self._scanned = len(self._buffer)
                self._check_size()
                break
            after = at + len(self._delimiter)
            if len(self._buffer) < after + 2:
                break  # need the two bytes after the delimiter: "--" or CRLF (or padding)
            if self._in_part:
                done.append(self._body(bytes(self._buffer[:at])))
                del self._buffer[:at]
                self._in_part = False
                self._scanned = 0
                continue  # the delimiter is now at the start
            if self._buffer[after : after + 2] == b"--":
                self._finished = True
                self._buffer.clear()
                break
            line_end = self._buffer.find(b"\r\n", after)
            if line_end < 0:
                break
            del self._buffer[: line_end + 2]
            self._scanned = 0
            self._in_part = True
        return done

    def _check_size(self) -> None:
        if self._in_part and len(self._buffer) > self.max_part_bytes + 16 * 1024:
            raise PayloadTooLarge(
                "an instance from the PACS is too large", limit=self.max_part_bytes
            )

    def _body(self, part: bytes) -> bytes:
        """A part's body: after its headers (which must say `application/dicom`)."""
        if part.startswith(b"\r\n"):  # no headers at all
            head, sep, body = b"", b"\r\n", part[2:]
        else:
            head, sep, body = part.partition(b"\r\n\r\n")
        if not sep:
            raise MalformedMultipart("a part of the PACS's answer has no header end")
        content_type = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-type":
                content_type = value.strip().lower()
        if content_type and not content_type.startswith(b"application/dicom"):
            raise MalformedMultipart("a part of the PACS's answer is not application/dicom")
        if len(body) > self.max_part_bytes:
            raise PayloadTooLarge(
                "an instance from the PACS is too large", limit=self.max_part_bytes
            )
        self.parts += 1
        return body

    def close(self) -> None:
        """The body ended: `MalformedMultipart` unless the closing delimiter came."""
        if not self._finished:
            raise MalformedMultipart("the PACS's answer ended in the middle of an instance")
