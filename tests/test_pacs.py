"""DICOMweb without the network (imaging.dicomweb): search requests, QIDO answers, and the
streamed multipart/related body of a WADO-RS retrieve; and the PACS settings. No event loop,
no socket."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from core.errors import BadMessage, ConfigError, PayloadTooLarge
from imaging.dicomweb import (
    MalformedMultipart,
    MultipartRelated,
    SearchRequest,
    SeriesMatch,
    StudyMatch,
    check_uid,
    multipart_boundary,
)
from signaling.pacs import PacsClient
from signaling.settings import load_settings

BOUNDARY = b"a1b2c3-boundary"


def multipart(parts: list[bytes], *, headers: bytes = b"Content-Type: application/dicom\r\n",
              preamble: bytes = b"") -> bytes:  # fmt: skip
    body = preamble
    for part in parts:
        body += b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n" + part + b"\r\n"
    return body + b"--" + BOUNDARY + b"--\r\n"


def instances(count: int, size: int) -> list[bytes]:
    # Bodies that contain CRLFs, dashes and the boundary's prefix, as binary DICOM may.
    return [bytes([i]) * 7 + b"\r\n--a1b2c3" + bytes(range(256)) * (size // 256) for i in
            range(count)]  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, 1 << 20])
def test_instances_come_out_whole_whatever_the_chunking(chunk: int) -> None:
    expected = instances(5, 3000)
    body = multipart(expected, preamble=b"ignored preamble\r\n")
    parser = MultipartRelated(BOUNDARY, max_part_bytes=10_000)
    got: list[bytes] = []
    for at in range(0, len(body), chunk):
        got += parser.feed(body[at : at + chunk])
    assert got == expected
    assert parser.finished and parser.parts == 5
    parser.close()


def test_each_instance_is_handed_on_when_its_part_ends_not_at_the_end() -> None:
    first, second = instances(2, 2048)
    body = multipart([first, second])
    parser = MultipartRelated(BOUNDARY, max_part_bytes=10_000)
    end_of_first = body.index(b"--" + BOUNDARY, len(first)) + len(BOUNDARY) + 4
    assert parser.feed(body[:end_of_first]) == [first]
    assert parser.feed(body[end_of_first:]) == [second]


def test_a_part_without_headers_is_read() -> None:
    parser = MultipartRelated(BOUNDARY, max_part_bytes=100)
    assert parser.feed(multipart([b"DICM"], headers=b"")) == [b"DICM"]


def test_a_huge_instance_is_refused_before_it_is_all_in_memory() -> None:
    parser = MultipartRelated(BOUNDARY, max_part_bytes=1000)
    parser.feed(b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n")
    with pytest.raises(PayloadTooLarge):
        for _ in range(100):
            parser.feed(b"x" * 1024)  # never more than the bound and a chunk held


def test_a_part_that_is_not_dicom_is_refused() -> None:
    parser = MultipartRelated(BOUNDARY, max_part_bytes=100)
    with pytest.raises(MalformedMultipart):
        parser.feed(multipart([b"<html>"], headers=b"Content-Type: text/html\r\n"))


def test_a_truncated_body_is_an_error() -> None:
    parser = MultipartRelated(BOUNDARY, max_part_bytes=10_000)
    body = multipart(instances(2, 512))
    parser.feed(body[: len(body) // 2])
    with pytest.raises(MalformedMultipart):
        parser.close()


def test_the_boundary_comes_from_the_content_type() -> None:
    assert multipart_boundary('multipart/related; type="application/dicom"; boundary="x-y"') == (
        b"x-y"
    )
    assert multipart_boundary("multipart/related; boundary=abc; type=application/dicom") == b"abc"
    for wrong in ("application/json", "multipart/related; type=application/dicom"):
        with pytest.raises(MalformedMultipart):
            multipart_boundary(wrong)


def test_a_search_becomes_qido_parameters() -> None:
    asked = {"patient_id": "PAT-0001", "date_from": "2026-11-01", "date_to": "2026-11-30"}
    request = SearchRequest.from_body({**asked, "modality": "ct"})
    assert request == SearchRequest("PAT-0001", "", date(2026, 11, 1), date(2026, 11, 30), "CT")
    params = request.params()
    assert ("PatientID", "PAT-0001") in params
    assert ("StudyDate", "20261101-20261130") in params
    assert ("ModalitiesInStudy", "CT") in params
    assert ("includefield", "00100010") in params
    open_ended = SearchRequest.from_body({"accession": "ACC-1", "date_from": "2026-01-01"})
    assert ("StudyDate", "20260101-") in open_ended.params()


@pytest.mark.parametrize(
    "body",
    [
        {},  # nothing: would list every patient
        {"date_from": "2026-01-01"},  # a date alone lists everyone too
        {"patient_id": "*"},  # a wildcard
        {"patient_id": "PAT?"},
        {"patient_id": "A,B"},  # a list
        {"accession": "x" * 65},
        {"patient_id": "P", "modality": "C T"},
        {"patient_id": "P", "date_from": "30/11/2026"},
        {"patient_id": "P", "date_from": "2026-12-01", "date_to": "2026-11-01"},
        {"patient_id": "P", "ssn": "1"},
        {"patient_id": 12},
    ],
)
def test_malformed_or_fishing_searches_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(BadMessage):
        SearchRequest.from_body(body)


def test_qido_answers_are_read_and_bad_items_dropped() -> None:
    item = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00100020": {"vr": "LO", "Value": ["PAT-0001"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080020": {"vr": "DA", "Value": ["20261130"]},
        "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
        "00201208": {"vr": "IS", "Value": [5]},
    }
    study = StudyMatch.from_json(item)
    assert study is not None
    assert (study.patient_name, study.study_date, study.modalities, study.instances) == (
        "Doe^Jane", "2026-11-30", ("CT", "SR"), 5,
    )  # fmt: skip
    assert StudyMatch.from_json({"0020000D": {"vr": "UI", "Value": ["../../etc"]}}) is None
    assert SeriesMatch.from_json({}, "1.2") is None
    series = SeriesMatch.from_json({"0020000E": {"Value": ["1.2.5"]}, "00201209": {}}, "1.2")
    assert series is not None and series.instances == 0


def test_uids_are_checked_before_they_reach_a_url() -> None:
    assert check_uid("1.2.840.10008.1", "study_uid") == "1.2.840.10008.1"
    for wrong in ("", "1..2", "1.2/../3", "1.2?x=1", "1" * 65):
        with pytest.raises(BadMessage):
            check_uid(wrong, "study_uid")


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"pacs_url": "http://pacs.hospital.local/dicom-web"}, "https"),
        ({"pacs_url": "ftp://pacs"}, "https"),
        ({"pacs_url": "https://pacs/dicom-web", "pacs_username": "c"}, "together"),
        (
            {
                "pacs_url": "https://pacs/dicom-web",
                "pacs_username": "c",
                "pacs_password_file": "/p",
                "pacs_token_file": "/t",
            },
            "not both",
        ),
        ({"pacs_url": "https://pacs/dicom-web", "pacs_max_instances": 0}, "positive"),
    ],
)
def test_unsafe_or_contradictory_pacs_settings_refuse_to_start(
    settings: dict[str, object], complaint: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings({"data_dir": str(tmp_path), **settings}, env={})


def test_a_missing_pacs_secret_fails_the_start_and_the_url_is_redacted(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "data_dir": str(tmp_path),
            "pacs_url": "http://user:pw@127.0.0.1:8042/dicom-web",
            "pacs_username": "c",
            "pacs_password_file": str(tmp_path / "absent"),
        },
        env={},
    )
    with pytest.raises(ConfigError, match="pacs_password_file"):
        PacsClient(settings)
    assert "pw" not in settings.summary()["pacs_url"]
