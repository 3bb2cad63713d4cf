"""The archive's pure rules, with no files and no event loop: how a manifest is summarised,
which recordings a search finds, when a recording expires and which ones retention shreds."""

from __future__ import annotations

from datetime import UTC, datetime

from recorder.catalogue import CatalogueEntry, RecordingSummary, expiry, matches, summarise
from recorder.manifest import CaseMarker, RecordedParticipant, RecordingManifest, SegmentEntry
from recorder.retention import expired_among, retention_reason

MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def finished_manifest(status: str = "complete") -> RecordingManifest:
    return RecordingManifest(
        recording_id="rec-1",
        room_id="tumour-board",
        started="2025-03-03T09:00:00.000+00:00",
        status=status,  # type: ignore[arg-type]
        ended="2025-03-03T10:00:00.000+00:00",
        streams={"track-0": [SegmentEntry(1, "00" * 32, 100, 0, 61_000, 3)]},
        cases=[CaseMarker("Case 4: lung nodule", 5_000)],
        participants=[
            RecordedParticipant("p1", "sub-chen", "Dr Chen Wei", "consultant", ["Radiology"], "CH"),
            RecordedParticipant("p2", "sub-okafor", "Dr Okafor", "trainee", ["Oncology"], "CH"),
        ],
    )


def summary_of(manifest: RecordingManifest, **overrides: object) -> RecordingSummary:
    entry = CatalogueEntry(manifest, True)
    fields: dict[str, object] = {"held": False, "shredded": False, "days": 30}
    fields.update(overrides)
    return summarise("rec-1", entry, **fields)  # type: ignore[arg-type]


def find(summary: RecordingSummary, **criteria: object) -> bool:
    wanted: dict[str, object] = dict.fromkeys(
        ("room", "since", "until", "participant", "department", "case", "status")
    )
    wanted.update(criteria)
    return matches(summary, MONDAY, **wanted)  # type: ignore[arg-type]


def test_a_verified_manifest_is_summarised_with_its_people_cases_and_expiry() -> None:
    summary = summary_of(finished_manifest())
    assert summary.status == "complete"
    assert summary.duration_ms == 61_000
    assert summary.participants == ("sub-chen", "sub-okafor")
    assert summary.departments == ("Oncology", "Radiology")
    assert summary.organisations == ("CH",)
    assert summary.cases == ("Case 4: lung nodule",)
    assert summary.expires_at == "2025-04-02T10:00:00+00:00"


def test_a_manifest_that_does_not_verify_is_damaged_and_never_expires() -> None:
    entry = CatalogueEntry(finished_manifest(), False, "signature does not verify")
    summary = summarise("rec-1", entry, held=False, shredded=False, days=30)
    assert summary.status == "damaged"
    assert summary.expires_at is None
    assert summary.problem == "signature does not verify"


def test_a_shredded_recording_shows_only_whose_it_was() -> None:
    summary = summary_of(finished_manifest(), shredded=True)
    assert summary.status == "shredded"
    assert summary.participants == () and summary.cases == () and summary.started is None
    assert summary.departments == ("Oncology", "Radiology")
    assert summary.organisations == ("CH",)


def test_a_recording_in_progress_or_of_a_class_kept_indefinitely_has_no_expiry() -> None:
    assert expiry(finished_manifest("recording"), 30) is None
    assert expiry(finished_manifest(), None) is None
    assert expiry(finished_manifest(), 0) == "2025-03-03T10:00:00+00:00"


def test_search_finds_a_participant_by_part_of_their_name_or_their_subject() -> None:
    summary = summary_of(finished_manifest())
    assert find(summary, participant="chen")
    assert find(summary, participant="sub-okafor")
    assert not find(summary, participant="okafor-smith")
    assert not find(summary, participant="  ")


def test_search_matches_department_and_case_ignoring_case() -> None:
    summary = summary_of(finished_manifest())
    assert find(summary, department="radiology", case="LUNG")
    assert not find(summary, department="Cardiology")
    assert not find(summary, case="breast")


def test_search_by_time_finds_a_recording_that_was_on_during_the_window() -> None:
    summary = summary_of(finished_manifest())
    assert find(summary, since=datetime(2025, 3, 3, 9, 30), until=datetime(2025, 3, 3, 9, 45))
    assert not find(summary, since=datetime(2025, 3, 3, 10, 30, tzinfo=UTC))
    assert not find(summary, until=datetime(2025, 3, 3, 9, 0, tzinfo=UTC))


def test_a_recording_still_on_counts_as_on_until_now() -> None:
    manifest = finished_manifest("recording")
    manifest.ended = None
    summary = summary_of(manifest)
    assert find(summary, since=datetime(2025, 3, 3, 8, 59, tzinfo=UTC))
    assert not find(summary, since=datetime(2025, 3, 3, 9, 1, tzinfo=UTC))


def test_retention_takes_only_finished_unheld_recordings_past_their_expiry() -> None:
    due = summary_of(finished_manifest(), days=1)
    held = summary_of(finished_manifest(), days=1, held=True)
    later = summary_of(finished_manifest(), days=30)
    running = summary_of(finished_manifest("recording"), days=1)
    damaged = summarise("rec-1", CatalogueEntry(finished_manifest(), False, "bad"), held=False,
                        shredded=False, days=1)  # fmt: skip
    now = datetime(2025, 3, 5, tzinfo=UTC)
    assert expired_among([due, held, later, running, damaged], now) == [due]
    assert expired_among([due], datetime(2025, 3, 4, 9, 59, tzinfo=UTC)) == []


def test_retention_names_its_reason_for_the_tombstone() -> None:
    assert retention_reason(summary_of(finished_manifest()), 30) == "retention: class mdt, 30 days"
    shredded = summary_of(finished_manifest(), shredded=True)
    assert retention_reason(shredded, 30) == "retention: finishing an interrupted shred"
