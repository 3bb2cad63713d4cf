"""Who may do what: one role-by-action table, department scoping, and separation of duties.

The table is data (`policy.toml`, shipped with the package; a hospital may point at its own
file). It is loaded and validated once at start, then every question is a few set look-ups.
Separation of duties is not data: the regulator's rules are written here, and a table that
breaks them is refused at load, so a table can only ever be stricter than the rules.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from core.actions import Action
from core.errors import ConfigError
from signaling.identity import Identity

ROLES: tuple[str, ...] = (
    "chair",
    "specialist",
    "radiologist",
    "nurse",
    "trainee",
    "patient",
    "archivist",
    "admin",
    "auditor",
    "scheduler",
)
"""Every role a token may carry, in the order tables and docs list them."""

ACTIONS: tuple[str, ...] = tuple(Action)
"""Every action the policy decides, in the order tables and docs list them."""

LIVE_ACTIONS: frozenset[str] = frozenset(ACTIONS[: ACTIONS.index("stop_recording") + 1])
"""Actions taken inside a live room; these are bound to a room grant and department scoping."""

NOT_A_SECOND_FACTOR: frozenset[str] = frozenset({"pwd", "pin", "kba"})
"""RFC 8176 `amr` values that are knowledge, not a second factor; refused in `mfa.methods`."""

_ROLE_SET = frozenset(ROLES)
_ACTION_SET = frozenset(ACTIONS)
_RECORDINGS_AND_AUDIT = frozenset(
    {"list_recordings", "play_recording", "export_recording", "hold_recording", "read_audit"}
)

# The regulator's rules (三权分立 for a 等保 level-3 assessment): (roles, forbidden actions, why).
# Checked at load (a table granting any of these is refused) and again in decide(), first match.
_SEPARATION_OF_DUTIES: tuple[tuple[frozenset[str], frozenset[str], str], ...] = (
    (frozenset({"archivist", "admin", "auditor"}), LIVE_ACTIONS, "{role} never joins a live room"),
    (frozenset({"admin"}), _RECORDINGS_AND_AUDIT, "admin cannot read recordings or the audit log"),
    (
        frozenset({"archivist"}),
        frozenset({"manage_keys", "run_retention"}),
        "archivist cannot manage keys or shred recordings",
    ),
    (_ROLE_SET - {"auditor"}, frozenset({"read_audit"}), "only the auditor reads the audit log"),
    (
        frozenset({"auditor"}),
        _ACTION_SET - {"read_audit"},
        "auditor reads the audit log and nothing else",
    ),
    # The HIS's service client: it books meetings and mints their invitations, nothing else.
    (
        frozenset({"scheduler"}),
        _ACTION_SET - {"schedule_meetings"},
        "scheduler (a service client) schedules meetings and does nothing else",
    ),
)


def _forbidden_by_duty() -> dict[tuple[str, str], str]:
    forbidden: dict[tuple[str, str], str] = {}
    for roles, actions, why in _SEPARATION_OF_DUTIES:
        for role in roles:
            for action in actions:
                forbidden.setdefault((role, action), why.format(role=role))
    return forbidden


SEPARATION_OF_DUTIES: Mapping[tuple[str, str], str] = _forbidden_by_duty()
"""(role, action) pairs no table may grant, each with the rule that forbids it."""


class Refusal(StrEnum):
    """Why the policy refuses, as clients are told it: a stable code they put in words (the web
    client's `ended.refusal_<code>` strings say what to do about it). Nothing of the policy's
    table travels with it; the audit log keeps the full reason. `meaning` documents each."""

    MFA_REQUIRED = "mfa_required"
    ROOM_NOT_GRANTED = "room_not_granted"
    DEPARTMENT_NOT_PERMITTED = "department_not_permitted"
    SEPARATION_OF_DUTIES = "separation_of_duties"
    ROLE_FORBIDDEN = "role_forbidden"
    UNKNOWN_ROLE = "unknown_role"
    UNKNOWN_ACTION = "unknown_action"

    @property
    def meaning(self) -> str:
        """When the policy gives this refusal, and what the person can do (docs/protocol.md)."""
        return _REFUSAL_MEANINGS[self]


_REFUSAL_MEANINGS: dict[Refusal, str] = {
    Refusal.MFA_REQUIRED: "the role needs a second factor and the token's `amr` has none: "
    "sign in again with one",
    Refusal.ROOM_NOT_GRANTED: "the token does not grant this room (a link for another "
    "meeting): ask the chair for an invitation to it",
    Refusal.DEPARTMENT_NOT_PERMITTED: "the room belongs to other departments and grants "
    "neither the person, their department nor their organisation: ask the chair for a grant",
    Refusal.SEPARATION_OF_DUTIES: "the role never does this: archivists, admins and auditors "
    "never join a live room (archivists use `/archive`)",
    Refusal.ROLE_FORBIDDEN: "the policy table does not give the role this action",
    Refusal.UNKNOWN_ROLE: "the token's role is not one Consilium knows",
    Refusal.UNKNOWN_ACTION: "not an action the policy decides (a client or server bug)",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """An allow or deny, with the reason that goes to the audit log."""

    allowed: bool
    """Whether the action may go ahead."""
    reason: str
    """Short and stable: a code (`allowed`, `mfa_required`, ...), then `: detail` for people."""

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def code(self) -> str:
        """The machine-readable part of the reason, before any `: detail`."""
        return self.reason.partition(":")[0]

    @property
    def refusal(self) -> Refusal | None:
        """What a client is told of a deny (its code, without the detail); None when allowed."""
        return None if self.allowed else Refusal(self.code)


@dataclass(frozen=True, slots=True)
class RoomScope:
    """What the policy needs to know of a room."""

    room_id: str
    """The room's id, as tokens grant it."""
    departments: tuple[str, ...]
    """Departments the room belongs to; empty means open to any department."""
    grants: tuple[str, ...] = ()
    """Explicit cross-department grants: `sub:<sub>`, `dept:<dept>` or `org:<org>`."""

    def __post_init__(self) -> None:
        # A misspelt grant would silently never match; say so where the room is described.
        for grant in self.grants:
            kind, sep, value = grant.partition(":")
            if not sep or kind not in ("sub", "dept", "org") or not value:
                raise ValueError(
                    f"room {self.room_id!r}: grant {grant!r} is not sub:<sub>, dept:<dept> "
                    "or org:<org>"
                )


@dataclass(frozen=True, slots=True)
class RecordingScope:
    """What the policy needs to know of a recording: whose it is, as its signed manifest says."""

    recording_id: str
    """The recording's id."""
    departments: tuple[str, ...]
    """Every department of those present; empty means open to any department (as a room)."""
    organisations: tuple[str, ...] = ()
    """Every institution of those present; empty when none was stated."""


ALLOWED = Decision(True, "allowed")
MFA_REQUIRED = Decision(False, Refusal.MFA_REQUIRED.value)
ROOM_NOT_GRANTED = Decision(False, Refusal.ROOM_NOT_GRANTED.value)
DEPARTMENT_NOT_PERMITTED = Decision(False, Refusal.DEPARTMENT_NOT_PERMITTED.value)

_OTHER_ORGANISATION = Decision(
    False, f"{DEPARTMENT_NOT_PERMITTED.reason}: recorded at another organisation"
)

_TOP_LEVEL_KEYS = ("opens_rooms", "wildcard_room_grants", "mfa", "roles")
_MFA_KEYS = ("methods", "required_for")


class Policy:
    """The loaded, validated policy table; answers every "may this identity do that?"."""

    __slots__ = (
        "_actions",
        "_mfa_roles",
        "_opens_rooms",
        "_verdicts",
        "_wildcard_room_grants",
        "mfa_methods",
    )

    mfa_methods: frozenset[str]
    """`amr` values accepted as a second factor."""

    def __init__(
        self,
        actions: Mapping[str, frozenset[str]],
        mfa_methods: frozenset[str],
        mfa_roles: frozenset[str],
        opens_rooms: frozenset[str],
        wildcard_room_grants: bool,
    ) -> None:
        """Build from already-validated parts; use `load()` or `from_dict()` instead."""
        self._actions = dict(actions)
        self.mfa_methods = mfa_methods
        self._mfa_roles = mfa_roles
        self._opens_rooms = opens_rooms
        self._wildcard_room_grants = wildcard_room_grants
        # Everything that depends on role and action alone, decided once: decide() then costs a
        # dict look-up plus the per-identity MFA and room checks.
        self._verdicts: dict[tuple[str, str], Decision] = {}
        for role in ROLES:
            for action in ACTIONS:
                duty = SEPARATION_OF_DUTIES.get((role, action))
                if duty is not None:
                    verdict = Decision(False, f"{Refusal.SEPARATION_OF_DUTIES}: {duty}")
                elif action in self._actions[role]:
                    verdict = ALLOWED
                else:
                    verdict = Decision(False, f"{Refusal.ROLE_FORBIDDEN}: {role} may not {action}")
                self._verdicts[role, action] = verdict

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        """Read and validate a policy file; `None` reads the packaged default `policy.toml`."""
        if path is None:
            source = "packaged policy.toml"
            text = resources.files("signaling").joinpath("policy.toml").read_text("utf-8")
        else:
            source = str(path)
            try:
                text = Path(path).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"policy {source}: cannot read: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy {source}: not valid TOML: {exc}") from exc
        return cls._validated(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Validate a policy given as the parsed TOML would be (tests, settings overrides)."""
        return cls._validated(data, "table")

    @classmethod
    def _validated(cls, data: Mapping[str, Any], source: str) -> Policy:
        problems: list[str] = []
        if not isinstance(data, Mapping):
            raise ConfigError(f"policy {source}: expected a table, got {type(data).__name__}")
        for key in data:
            if key not in _TOP_LEVEL_KEYS:
                problems.append(f"unknown key {key!r} (known: {', '.join(_TOP_LEVEL_KEYS)})")
        for key in _TOP_LEVEL_KEYS:
            if key not in data:
                problems.append(f"missing key {key!r}")

        # A missing key is reported once above; check the rest as if it were empty.
        actions = _validated_roles(data.get("roles", {role: [] for role in ROLES}), problems)

        mfa = data.get("mfa", {"methods": [], "required_for": []})
        methods: frozenset[str] = frozenset()
        mfa_roles: frozenset[str] = frozenset()
        if not isinstance(mfa, Mapping):
            problems.append("mfa: expected a table")
        else:
            for key in mfa:
                if key not in _MFA_KEYS:
                    problems.append(f"mfa: unknown key {key!r} (known: {', '.join(_MFA_KEYS)})")
            for key in _MFA_KEYS:
                if key not in mfa:
                    problems.append(f"mfa: missing key {key!r}")
            methods = frozenset(_strings(mfa.get("methods", []), "mfa.methods", problems))
            for method in sorted(methods & NOT_A_SECOND_FACTOR):
                problems.append(f"mfa.methods: {method!r} is not a second factor")
            mfa_roles = _known_roles(mfa.get("required_for", []), "mfa.required_for", problems)
            if mfa_roles and not methods:
                problems.append("mfa.methods is empty, so no role in mfa.required_for could act")

        opens_rooms = _known_roles(data.get("opens_rooms", []), "opens_rooms", problems)
        for role in sorted(opens_rooms):
            if role in actions and "join_room" not in actions[role]:
                problems.append(f"opens_rooms: {role} may not join_room, so cannot open a room")

        wildcard = data.get("wildcard_room_grants", False)
        if not isinstance(wildcard, bool):
            problems.append("wildcard_room_grants: expected true or false")
            wildcard = False

        if problems:
            raise ConfigError(f"policy {source} refused:\n  " + "\n  ".join(problems))
        return cls(actions, methods, mfa_roles, opens_rooms, wildcard)

    def decide(self, identity: Identity, action: str, room: RoomScope | None = None) -> Decision:
        """Allow or deny `action` for `identity`, in `room` for live actions, with the reason.

        Checks, first failure wins: known role and action; separation of duties; the table;
        a second factor in `amr` if the role needs one; then, for a live action in a room, the
        token's room grant and department scoping (or an explicit cross-department grant).
        """
        # Hot path (every signalling message); watched by test_policy.py::test_decide_stays_cheap.
        verdict = self._verdicts.get((identity.role, action))
        if verdict is None:
            if identity.role not in _ROLE_SET:
                return Decision(False, f"{Refusal.UNKNOWN_ROLE}: {identity.role}")
            return Decision(False, f"{Refusal.UNKNOWN_ACTION}: {action}")
        if not verdict.allowed:
            return verdict
        if identity.role in self._mfa_roles and self.mfa_methods.isdisjoint(identity.amr):
            return MFA_REQUIRED
        if room is not None and action in LIVE_ACTIONS:
            return self._room_verdict(identity, room)
        return ALLOWED

    def _room_verdict(self, identity: Identity, room: RoomScope) -> Decision:
        if room.room_id not in identity.rooms and not (
            self._wildcard_room_grants and "*" in identity.rooms
        ):
            return ROOM_NOT_GRANTED
        if not room.departments or any(d in room.departments for d in identity.depts):
            return ALLOWED
        if room.grants and (
            f"sub:{identity.sub}" in room.grants
            or any(f"dept:{d}" in room.grants for d in identity.depts if d)
            or (identity.org and f"org:{identity.org}" in room.grants)
        ):
            return ALLOWED
        return DEPARTMENT_NOT_PERMITTED

    def decide_recording(
        self, identity: Identity, action: str, recording: RecordingScope
    ) -> Decision:
        """Allow or deny an archive `action` on one recording: the role may (as `decide`), and
        the recording is within the identity's reach, scoped like a room: one of its
        organisations is the identity's (when both are stated), and it shares a department
        (or has none). An archivist's `dept` claim lists the departments whose records they
        keep."""
        verdict = self.decide(identity, action)
        if not verdict:
            return verdict
        if identity.org and recording.organisations and identity.org not in recording.organisations:
            return _OTHER_ORGANISATION
        if not recording.departments or any(d in recording.departments for d in identity.depts):
            return ALLOWED
        return DEPARTMENT_NOT_PERMITTED

    def permissions(self, identity: Identity, room: RoomScope | None = None) -> frozenset[str]:
        """Every action `decide()` allows this identity (in this room); sent to the client."""
        if identity.role not in _ROLE_SET:
            return frozenset()
        if identity.role in self._mfa_roles and self.mfa_methods.isdisjoint(identity.amr):
            return frozenset()
        allowed = self._actions[identity.role]
        if room is not None and not self._room_verdict(identity, room).allowed:
            return allowed - LIVE_ACTIONS
        return allowed

    def may_open_room(self, identity: Identity) -> bool:
        """Whether arriving opens the room (creating it if unscheduled); others wait for it."""
        return identity.role in self._opens_rooms and self.decide(identity, "join_room").allowed

    def bypasses_lobby(self, identity: Identity) -> bool:
        """Whether this identity enters directly: those who may admit others need no admitting."""
        return self.decide(identity, "admit").allowed

    def requires_mfa(self, role: str) -> bool:
        """Whether `role` must show a second factor; an unknown role is treated as needing one."""
        return role in self._mfa_roles or role not in _ROLE_SET

    def describe(self) -> str:
        """The table as Markdown (a row per action, a column per role), for docs/operations.md."""
        lines = [
            "| action | " + " | ".join(ROLES) + " |",
            "|---|" + "---|" * len(ROLES),
        ]
        for action in ACTIONS:
            cells = []
            for role in ROLES:
                if action in self._actions[role]:
                    cells.append("✓")
                elif (role, action) in SEPARATION_OF_DUTIES:
                    cells.append("never")
                else:
                    cells.append("")
            lines.append(f"| {action} | " + " | ".join(cells) + " |")
        mfa_roles = [role for role in ROLES if role in self._mfa_roles]
        openers = [role for role in ROLES if role in self._opens_rooms]
        lobby = [role for role in ROLES if "admit" in self._actions[role]]
        lines += [
            "",
            "✓ granted by the table; never: forbidden by separation of duties, whatever the table"
            " says; blank: not granted.",
            "",
            f"- Second factor required for: {', '.join(mfa_roles) or 'nobody'}"
            f" (accepted `amr`: {', '.join(sorted(self.mfa_methods)) or 'none'}).",
            f"- Opens a room by arriving: {', '.join(openers) or 'nobody'}.",
            f"- Bypasses the lobby (may admit): {', '.join(lobby) or 'nobody'}.",
            "- Wildcard room grant (`*` in the token's rooms): "
            + ("accepted." if self._wildcard_room_grants else "refused."),
            "- Live actions (join_room to stop_recording) also need the room in the token and a"
            " shared department, or an explicit grant (sub:, dept:, org:) on the room.",
        ]
        return "\n".join(lines) + "\n"


def _strings(value: object, where: str, problems: list[str]) -> list[str]:
    """A TOML array of non-empty, distinct strings, else a problem noted and what could be used."""
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list of strings")
        return []
    seen: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            problems.append(f"{where}: {item!r} is not a non-empty string")
        elif item in seen:
            problems.append(f"{where}: {item!r} is listed twice")
        else:
            seen.append(item)
    return seen


def _known_roles(value: object, where: str, problems: list[str]) -> frozenset[str]:
    roles = _strings(value, where, problems)
    for role in roles:
        if role not in _ROLE_SET:
            problems.append(f"{where}: unknown role {role!r} (known: {', '.join(ROLES)})")
    return frozenset(roles) & _ROLE_SET


def _validated_roles(value: object, problems: list[str]) -> dict[str, frozenset[str]]:
    """The [roles] table: every role present, only known actions, no separation-of-duties breach."""
    if not isinstance(value, Mapping):
        problems.append("roles: expected a table of role = [actions]")
        return {role: frozenset() for role in ROLES}
    for role in value:
        if role not in _ROLE_SET:
            problems.append(f"roles: unknown role {role!r} (known: {', '.join(ROLES)})")
    missing = [role for role in ROLES if role not in value]
    if missing:
        problems.append(f"roles: missing {', '.join(missing)} (list every role; [] grants nothing)")
    actions: dict[str, frozenset[str]] = {}
    for role in ROLES:
        granted = _strings(value.get(role, []), f"roles.{role}", problems)
        _check_actions(role, granted, problems)
        actions[role] = frozenset(granted) & _ACTION_SET
    return actions


def _check_actions(role: str, granted: Iterable[str], problems: list[str]) -> None:
    for action in granted:
        if action not in _ACTION_SET:
            problems.append(
                f"roles.{role}: unknown action {action!r} (known: {', '.join(ACTIONS)})"
            )
        elif (role, action) in SEPARATION_OF_DUTIES:
            problems.append(
                f"roles.{role}: {action} breaks separation of duties: "
                f"{SEPARATION_OF_DUTIES[role, action]}"
            )
