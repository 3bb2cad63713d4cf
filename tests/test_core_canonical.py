"""Canonical JSON and UTC stamps (core.canonical): the bytes that are signed and the stored times.

Fast, no event loop. The expected bytes are the ones the audit log, manifests and bundles on
disk were signed over, so a change to the rule shows up here before it breaks a signature.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.canonical import (
    as_utc,
    canonical_json,
    parse_stamp,
    stamp_compact,
    stamp_ms,
    stamp_ms_offset,
    stamp_s,
)

MOMENT = datetime(2026, 11, 25, 10, 0, 7, 123_456, tzinfo=UTC)


def test_keys_are_sorted_and_there_are_no_spaces() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": True}]}) == (
        b'{"a":[1,{"c":true,"d":null}],"b":1}'
    )


def test_text_stays_utf8_not_escaped() -> None:
    # Audit entries, manifests and bundle indexes were all signed over UTF-8 as is.
    assert canonical_json({"room": "Zürich 肿瘤"}) == '{"room":"Zürich 肿瘤"}'.encode()


def test_ascii_only_escapes_for_the_witness() -> None:
    assert canonical_json({"node": "Zürich"}, ascii_only=True) == b'{"node":"Z\\u00fcrich"}'


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(number: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"fields": {"x": [number]}})


def test_matches_the_bytes_signed_before_the_move() -> None:
    # What audit.py, manifest.py and bundle.py each called json.dumps with.
    value = {"seq": 3, "ts": "2026-11-25T10:00:07.123Z", "reason": "ünïcode", "f": 0.5}
    before = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == before.encode()


def test_each_stamp_keeps_its_stored_format() -> None:
    assert stamp_ms(MOMENT) == "2026-11-25T10:00:07.123Z"
    assert stamp_ms_offset(MOMENT) == "2026-11-25T10:00:07.123+00:00"
    assert stamp_s(MOMENT) == "2026-11-25T10:00:07+00:00"
    assert stamp_compact(MOMENT) == "20261125T100007Z"


def test_stamps_are_utc_whatever_zone_the_moment_is_in() -> None:
    zurich = MOMENT.astimezone(timezone(timedelta(hours=1)))
    assert stamp_ms(zurich) == stamp_ms(MOMENT)
    assert stamp_s(zurich) == stamp_s(MOMENT)


@pytest.mark.parametrize("stamp", [stamp_ms, stamp_ms_offset])
def test_millisecond_stamps_round_trip(stamp: Callable[[datetime], str]) -> None:
    assert parse_stamp(stamp(MOMENT)) == MOMENT.replace(microsecond=123_000)


@pytest.mark.parametrize("stamp", [stamp_s, stamp_compact])
def test_second_stamps_round_trip(stamp: Callable[[datetime], str]) -> None:
    assert parse_stamp(stamp(MOMENT)) == MOMENT.replace(microsecond=0)


def test_a_time_without_a_zone_is_taken_as_utc() -> None:
    assert parse_stamp("2026-11-25T10:00:07") == MOMENT.replace(microsecond=0)


def test_parse_stamp_refuses_what_is_not_a_time() -> None:
    with pytest.raises(ValueError):
        parse_stamp("yesterday")


def test_as_utc_takes_a_naive_time_as_utc_and_converts_an_aware_one() -> None:
    naive = datetime(2026, 11, 25, 10, 0, 7)
    assert as_utc(naive) == MOMENT.replace(microsecond=0) and as_utc(naive).tzinfo is UTC
    zurich = MOMENT.astimezone(timezone(timedelta(hours=1)))
    assert as_utc(zurich).utcoffset() == timedelta(0) and as_utc(zurich) == MOMENT
