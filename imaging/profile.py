"""The Basic Application Level Confidentiality Profile of DICOM PS3.15 Annex E, as rules.

Table E.1-1 itself is data: `basic_profile.txt`, next to this module, one row per attribute (tag,
action code, keyword), transcribed from the edition `BASIC_PROFILE_EDITION` (the file says how it
was checked). This module reads it into `BASIC_PROFILE` and answers which row applies to a tag
(`profile_rule`); `imaging.deidentify` applies the actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources


class Action(StrEnum):
    """The action codes of PS3.15 Table E.1-1a."""

    D = "D"
    """Replace with a non-zero length dummy value consistent with the VR."""
    Z = "Z"
    """Replace with a zero length value (or a dummy value consistent with the VR)."""
    X = "X"
    """Remove."""
    K = "K"
    """Keep (unchanged for non-sequence attributes, cleaned for sequences)."""
    C = "C"
    """Clean: replace with values of similar meaning known not to identify."""
    U = "U"
    """Replace with a non-zero length UID that is internally consistent within the set."""
    Z_D = "Z/D"
    """Z unless D is required to keep the IOD conformant (Type 2 versus Type 1)."""
    X_Z = "X/Z"
    """X unless Z is required to keep the IOD conformant (Type 3 versus Type 2)."""
    X_D = "X/D"
    """X unless D is required to keep the IOD conformant (Type 3 versus Type 1)."""
    X_Z_D = "X/Z/D"
    """X unless Z or D is required to keep the IOD conformant."""
    X_Z_U = "X/Z/U*"
    """X unless Z or replacing the contained instance UIDs (U) is required for conformance."""


# Without each SOP class's module tables we cannot tell a Type 1 from a Type 3 attribute, so a
# combined action takes the alternative that is conformant for every type: D over Z over X.
# None of them keeps an original value. X/Z/U* keeps the sequence and de-identifies its items,
# which replaces the instance UIDs inside (they are U attributes of this same table).
APPLIED: Mapping[Action, Action] = {
    Action.D: Action.D,
    Action.Z: Action.Z,
    Action.X: Action.X,
    Action.U: Action.U,
    Action.Z_D: Action.D,
    Action.X_Z: Action.Z,
    Action.X_D: Action.D,
    Action.X_Z_D: Action.D,
    Action.X_Z_U: Action.U,
    # K and C appear only in the profile's options, which we do not offer; should a row ever
    # use them, a dummy value is the safe reading.
    Action.K: Action.D,
    Action.C: Action.D,
}


@dataclass(frozen=True, slots=True)
class ProfileRule:
    """One row of Table E.1-1: which attribute, what the Basic Profile does to it."""

    tag: str
    """Tag as 8 hex digits; `x` stands for any digit in repeating groups (curves, overlays)."""
    action: Action
    """The Basic Profile's action code."""
    keyword: str
    """The attribute's DICOM keyword, for people and the audit log."""

    def matches(self, tag: int) -> bool:
        """Whether `tag` is this row's attribute (any group of a repeating one)."""
        mask, value = _pattern(self.tag)
        return tag & mask == value


@cache
def _pattern(tag: str) -> tuple[int, int]:
    mask = int("".join("0" if c == "x" else "f" for c in tag), 16)
    return mask, int(tag.replace("x", "0"), 16)


BASIC_PROFILE_EDITION = "2026d"
"""The edition of DICOM PS3.15 whose Table E.1-1 `BASIC_PROFILE` transcribes."""

TABLE_FILE = "basic_profile.txt"
"""Table E.1-1 (`imaging/basic_profile.txt`), packaged with the module."""


def _read_table(text: str) -> tuple[ProfileRule, ...]:
    rows = (line.split() for line in text.splitlines() if line.strip() and line[0] != "#")
    return tuple(ProfileRule(tag.lower(), Action(action), keyword) for tag, action, keyword in rows)


BASIC_PROFILE: tuple[ProfileRule, ...] = _read_table(
    resources.files("imaging").joinpath(TABLE_FILE).read_text("utf-8")
)
"""Every row of Table E.1-1 with its Basic Profile action."""

_RULES_BY_TAG: Mapping[int, ProfileRule] = {
    int(rule.tag, 16): rule for rule in BASIC_PROFILE if "x" not in rule.tag
}
_REPEATING_RULES: tuple[ProfileRule, ...] = tuple(r for r in BASIC_PROFILE if "x" in r.tag)
OVERLAY_GROUPS = range(0x6000, 0x6020, 2)
"""Overlay groups (60xx): removed whole, like private attributes."""
CURVE_GROUPS = range(0x5000, 0x5100, 2)
"""Curve groups (50xx): removed whole."""


def profile_rule(tag: int) -> ProfileRule | None:
    """The Table E.1-1 row for `tag`, or None when the profile keeps the attribute."""
    rule = _RULES_BY_TAG.get(tag)
    if rule is not None:
        return rule
    for repeating in _REPEATING_RULES:
        if repeating.matches(tag):
            return repeating
    return None
