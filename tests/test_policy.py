"""The policy table: roles by actions, department scoping, MFA, and separation of duties."""

from __future__ import annotations

import copy
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from signaling.identity import Identity
from signaling.policy import ACTIONS, ROLES, Decision, Policy, RoomScope

CLINICAL = ("chair", "specialist", "radiologist", "nurse", "trainee")
PRIVILEGED = ("archivist", "admin", "auditor")
LIVE = (
    "join_room",
    "publish_audio",
    "publish_video",
    "share_screen",
    "share_image",
    "annotate",
    "moderate_annotations",
    "admit",
    "mute_others",
    "remove_participant",
    "start_recording",
    "stop_recording",
    "pacs_write",  # annotations written back to the PACS: from a live room
)
RECORDINGS = ("list_recordings", "play_recording", "export_recording", "hold_recording")

ROOM = RoomScope("mdt-1", departments=("cardiology",))


def breaks_separation_of_duties(role: str, action: str) -> bool:
    """The regulator's rules, restated here so the tests do not trust policy.py's own copy."""
    if role in PRIVILEGED and action in LIVE:
        return True
    if role == "admin" and action in (*RECORDINGS, "read_audit"):
        return True
    if role == "archivist" and action in ("manage_keys", "run_retention"):
        return True
    if role == "scheduler":
        return action != "schedule_meetings"
    if action == "read_audit":
        return role != "auditor"
    return role == "auditor"


def default_table() -> dict[str, Any]:
    text = resources.files("signaling").joinpath("policy.toml").read_text("utf-8")
    return tomllib.loads(text)


def person(role: str, **claims: Any) -> Identity:
    """A token holder with a second factor, granted mdt-1, in cardiology, unless told otherwise."""
    fields: dict[str, Any] = {
        "sub": f"{role}-1",
        "jti": "t-1",
        "role": role,
        "depts": ("cardiology",),
        "org": "city-hospital",
        "rooms": ("mdt-1",),
        "amr": ("pwd", "otp"),
    }
    fields.update(claims)
    return Identity(**fields)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load()


def test_packaged_default_loads(policy: Policy) -> None:
    assert policy.decide(person("chair"), "join_room", ROOM) == Decision(True, "allowed")


def test_a_policy_file_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(resources.files("signaling").joinpath("policy.toml").read_text("utf-8"))
    assert Policy.load(path).describe() == Policy.load().describe()


def test_default_table_grants_what_the_design_says(policy: Policy) -> None:
    expected = {
        "chair": set(LIVE),
        "specialist": {*LIVE[:6]},
        "radiologist": {*LIVE[:6], "pacs_write"},
        "nurse": {"join_room", "publish_audio", "publish_video", "share_image", "annotate"},
        "trainee": {"join_room", "publish_audio", "publish_video"},
        "patient": {"join_room", "publish_audio", "publish_video"},
        "archivist": set(RECORDINGS),
        "admin": {"manage_keys", "run_retention", "revoke"},
        "auditor": {"read_audit"},
        "scheduler": {"schedule_meetings"},
    }
    assert {role: set(policy.permissions(person(role))) for role in ROLES} == expected


def test_trainee_cannot_annotate(policy: Policy) -> None:
    decision = policy.decide(person("trainee"), "annotate", ROOM)
    assert not decision
    assert decision.reason == "role_forbidden: trainee may not annotate"


def test_trainee_cannot_start_recording(policy: Policy) -> None:
    assert not policy.decide(person("trainee"), "start_recording", ROOM)


def test_patient_may_only_talk_and_show_their_face(policy: Policy) -> None:
    allowed = {a for a in ACTIONS if policy.decide(person("patient"), a, ROOM)}
    assert allowed == {"join_room", "publish_audio", "publish_video"}


@pytest.mark.parametrize("role", PRIVILEGED)
def test_archivist_admin_and_auditor_never_join_a_live_room(policy: Policy, role: str) -> None:
    decision = policy.decide(person(role), "join_room", ROOM)
    assert not decision
    assert decision.reason == f"separation_of_duties: {role} never joins a live room"


def test_scheduler_only_schedules_meetings_and_needs_no_second_factor(policy: Policy) -> None:
    # The HIS is a service client (client credentials): no person, so no `amr` to show.
    his = person("scheduler", amr=(), depts=(), rooms=())
    assert policy.permissions(his) == {"schedule_meetings"}
    assert policy.decide(his, "join_room", ROOM).code == "separation_of_duties"
    assert not policy.may_open_room(his)


def test_archivist_never_joins_a_live_room(policy: Policy) -> None:
    archivist = person("archivist")
    assert not any(policy.decide(archivist, action, ROOM) for action in LIVE)
    assert policy.decide(archivist, "join_room").code == "separation_of_duties"


def test_admin_cannot_read_audit(policy: Policy) -> None:
    decision = policy.decide(person("admin"), "read_audit")
    assert not decision
    assert decision.code == "separation_of_duties"


@pytest.mark.parametrize("action", RECORDINGS)
def test_admin_cannot_read_recordings(policy: Policy, action: str) -> None:
    assert policy.decide(person("admin"), action).code == "separation_of_duties"


def test_only_auditor_reads_audit(policy: Policy) -> None:
    readers = {role for role in ROLES if policy.decide(person(role), "read_audit")}
    assert readers == {"auditor"}


def test_auditor_does_nothing_but_read_audit(policy: Policy) -> None:
    assert policy.permissions(person("auditor")) == {"read_audit"}


def test_archivist_cannot_manage_keys(policy: Policy) -> None:
    decision = policy.decide(person("archivist"), "manage_keys")
    assert not decision
    assert decision.reason == (
        "separation_of_duties: archivist cannot manage keys or shred recordings"
    )


def test_archivist_reads_recordings(policy: Policy) -> None:
    assert all(policy.decide(person("archivist"), action) for action in RECORDINGS)


def test_admin_may_revoke_and_chair_may_not(policy: Policy) -> None:
    assert policy.decide(person("admin"), "revoke")
    assert not policy.decide(person("chair"), "revoke")


@pytest.mark.parametrize("role", [*CLINICAL, *PRIVILEGED])
def test_clinical_role_without_mfa_is_denied(policy: Policy, role: str) -> None:
    allowed_with_mfa = next(a for a in ACTIONS if policy.decide(person(role), a))
    decision = policy.decide(person(role, amr=("pwd",)), allowed_with_mfa)
    assert decision == Decision(False, "mfa_required")
    assert policy.requires_mfa(role)
    assert policy.permissions(person(role, amr=())) == frozenset()


def test_patient_needs_no_mfa_by_default(policy: Policy) -> None:
    assert not policy.requires_mfa("patient")
    assert policy.decide(person("patient", amr=("pwd",)), "join_room", ROOM)


def test_unknown_role_is_treated_as_needing_mfa(policy: Policy) -> None:
    assert policy.requires_mfa("surgeon")


def test_mfa_methods_are_configurable() -> None:
    table = default_table()
    table["mfa"]["methods"] = ["hwk"]
    table["mfa"]["required_for"] = ["chair", "patient"]
    policy = Policy.from_dict(table)
    assert policy.mfa_methods == {"hwk"}
    assert policy.decide(person("chair", amr=("hwk",)), "join_room", ROOM)
    assert policy.decide(person("chair", amr=("otp",)), "join_room", ROOM).reason == "mfa_required"
    assert policy.decide(person("patient", amr=("pwd",)), "join_room", ROOM).code == "mfa_required"
    assert policy.decide(person("specialist", amr=("pwd",)), "join_room", ROOM)


def test_default_mfa_methods(policy: Policy) -> None:
    assert policy.mfa_methods == {"mfa", "otp", "hwk", "swk", "sms", "fpt", "face"}


def test_a_password_is_not_accepted_as_a_second_factor() -> None:
    table = default_table()
    table["mfa"]["methods"] = ["pwd", "otp"]
    with pytest.raises(ConfigError, match="'pwd' is not a second factor"):
        Policy.from_dict(table)


def test_mfa_required_with_no_accepted_method_is_refused() -> None:
    table = default_table()
    table["mfa"]["methods"] = []
    with pytest.raises(ConfigError, match=r"mfa\.methods is empty"):
        Policy.from_dict(table)


def test_room_not_in_token_is_denied(policy: Policy) -> None:
    chair = person("chair", rooms=("mdt-2",))
    assert policy.decide(chair, "join_room", ROOM) == Decision(False, "room_not_granted")
    assert policy.permissions(chair, ROOM) == frozenset()


def test_wildcard_room_grant_is_refused_by_default(policy: Policy) -> None:
    assert not policy.decide(person("chair", rooms=("*",)), "join_room", ROOM)


def test_wildcard_room_grant_when_the_table_allows_it() -> None:
    table = default_table()
    table["wildcard_room_grants"] = True
    assert Policy.from_dict(table).decide(person("chair", rooms=("*",)), "join_room", ROOM)


def test_other_department_needs_explicit_grant(policy: Policy) -> None:
    oncologist = person("specialist", depts=("oncology",))
    decision = policy.decide(oncologist, "join_room", ROOM)
    assert decision == Decision(False, "department_not_permitted")
    assert policy.permissions(oncologist, ROOM) == frozenset()


@pytest.mark.parametrize(
    "grant", ["sub:specialist-1", "dept:oncology", "org:city-hospital"], ids=str
)
def test_explicit_grant_by_sub_dept_or_org_allows(policy: Policy, grant: str) -> None:
    room = RoomScope("mdt-1", departments=("cardiology",), grants=(grant,))
    oncologist = person("specialist", depts=("surgery", "oncology"))
    assert policy.decide(oncologist, "annotate", room)


@pytest.mark.parametrize(
    "grant", ["sub:someone-else", "dept:surgery", "org:other-hospital"], ids=str
)
def test_a_grant_for_someone_else_does_not_allow(policy: Policy, grant: str) -> None:
    room = RoomScope("mdt-1", departments=("cardiology",), grants=(grant,))
    oncologist = person("specialist", depts=("oncology",))
    assert policy.decide(oncologist, "join_room", room).code == "department_not_permitted"


def test_empty_org_matches_no_org_grant(policy: Policy) -> None:
    room = RoomScope("mdt-1", departments=("cardiology",), grants=("org:x",))
    assert not policy.decide(person("nurse", depts=(), org=""), "join_room", room)


def test_one_shared_department_is_enough(policy: Policy) -> None:
    room = RoomScope("mdt-1", departments=("radiology", "oncology"))
    assert policy.decide(person("radiologist", depts=("radiology",)), "share_image", room)


def test_room_without_departments_is_open_to_any_department(policy: Policy) -> None:
    room = RoomScope("mdt-1", departments=())
    assert policy.decide(person("nurse", depts=("surgery",)), "join_room", room)


def test_a_misspelt_room_grant_is_rejected() -> None:
    with pytest.raises(ValueError, match="'department:oncology'"):
        RoomScope("mdt-1", departments=("cardiology",), grants=("department:oncology",))


def test_archive_actions_ignore_room_scope(policy: Policy) -> None:
    archivist = person("archivist", rooms=(), depts=("records",))
    assert policy.decide(archivist, "play_recording", ROOM)


def test_unknown_role_is_denied(policy: Policy) -> None:
    decision = policy.decide(person("surgeon"), "join_room", ROOM)
    assert decision == Decision(False, "unknown_role: surgeon")
    assert policy.permissions(person("surgeon")) == frozenset()


def test_unknown_action_is_denied(policy: Policy) -> None:
    assert policy.decide(person("chair"), "teleport").reason == "unknown_action: teleport"


def test_only_chair_opens_rooms_by_default(policy: Policy) -> None:
    assert {role for role in ROLES if policy.may_open_room(person(role))} == {"chair"}
    assert not policy.may_open_room(person("chair", amr=("pwd",)))


def test_those_who_admit_bypass_the_lobby(policy: Policy) -> None:
    assert {role for role in ROLES if policy.bypasses_lobby(person(role))} == {"chair"}


def test_every_decision_has_a_reason(policy: Policy) -> None:
    other_room = RoomScope("mdt-9", departments=("surgery",))
    for role in (*ROLES, "stranger"):
        for amr in ((), ("otp",)):
            for action in (*ACTIONS, "teleport"):
                for room in (None, ROOM, other_room):
                    decision = policy.decide(person(role, amr=amr), action, room)
                    assert decision.reason
                    assert decision.allowed == (decision.reason == "allowed")


def test_describe_covers_every_role_and_action(policy: Policy) -> None:
    text = policy.describe()
    header = text.splitlines()[0]
    assert all(f" {role} |" in header for role in ROLES)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line != header]
    assert [row.split("|")[1].strip() for row in rows] == list(ACTIONS)
    assert "| read_audit |" + " never |" * 8 + " ✓ |" in text


# -- Loading: what a hospital's table may and may not say -----------------------------------


def test_table_granting_admin_read_audit_is_refused() -> None:
    table = default_table()
    table["roles"]["admin"].append("read_audit")
    with pytest.raises(ConfigError, match=r"roles\.admin: read_audit breaks separation of duties"):
        Policy.from_dict(table)


@pytest.mark.parametrize(
    ("role", "action"),
    [
        ("admin", "join_room"),
        ("archivist", "publish_video"),
        ("auditor", "join_room"),
        ("admin", "play_recording"),
        ("admin", "export_recording"),
        ("admin", "list_recordings"),
        ("archivist", "manage_keys"),
        ("chair", "read_audit"),
        ("archivist", "read_audit"),
        ("auditor", "list_recordings"),
    ],
)
def test_table_breaking_separation_of_duties_is_refused(role: str, action: str) -> None:
    table = default_table()
    table["roles"][role].append(action)
    with pytest.raises(ConfigError, match=f"roles.{role}: {action} breaks separation of duties"):
        Policy.from_dict(table)


def test_unknown_action_in_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    text = resources.files("signaling").joinpath("policy.toml").read_text("utf-8")
    path.write_text(text.replace('trainee = [\n    "join_room",', 'trainee = [\n    "dance",'))
    with pytest.raises(ConfigError, match=r"roles\.trainee: unknown action 'dance'") as caught:
        Policy.load(path)
    assert str(path) in str(caught.value)


def test_unknown_role_is_refused() -> None:
    table = default_table()
    table["roles"]["surgeon"] = ["join_room"]
    with pytest.raises(ConfigError, match="roles: unknown role 'surgeon'"):
        Policy.from_dict(table)


def test_missing_role_is_refused() -> None:
    table = default_table()
    del table["roles"]["nurse"]
    del table["roles"]["patient"]
    with pytest.raises(ConfigError, match="roles: missing nurse, patient"):
        Policy.from_dict(table)


def test_unknown_role_in_mfa_or_opens_rooms_is_refused() -> None:
    table = default_table()
    table["mfa"]["required_for"].append("surgeon")
    table["opens_rooms"].append("janitor")
    with pytest.raises(ConfigError) as caught:
        Policy.from_dict(table)
    assert "mfa.required_for: unknown role 'surgeon'" in str(caught.value)
    assert "opens_rooms: unknown role 'janitor'" in str(caught.value)


def test_a_role_that_cannot_join_cannot_open_rooms() -> None:
    table = default_table()
    table["opens_rooms"] = ["archivist"]
    with pytest.raises(ConfigError, match="opens_rooms: archivist may not join_room"):
        Policy.from_dict(table)


def test_unknown_or_missing_keys_are_refused() -> None:
    table = default_table()
    table["lobby"] = True
    del table["wildcard_room_grants"]
    with pytest.raises(ConfigError) as caught:
        Policy.from_dict(table)
    assert "unknown key 'lobby'" in str(caught.value)
    assert "missing key 'wildcard_room_grants'" in str(caught.value)


def test_wrong_types_are_refused() -> None:
    table = default_table()
    table["roles"]["nurse"] = "join_room"
    table["wildcard_room_grants"] = "no"
    with pytest.raises(ConfigError) as caught:
        Policy.from_dict(table)
    assert "roles.nurse: expected a list of strings" in str(caught.value)
    assert "wildcard_room_grants: expected true or false" in str(caught.value)


def test_an_action_listed_twice_is_refused() -> None:
    table = default_table()
    table["roles"]["nurse"].append("annotate")
    with pytest.raises(ConfigError, match=r"roles\.nurse: 'annotate' is listed twice"):
        Policy.from_dict(table)


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[roles\nchair = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Policy.load(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Policy.load(tmp_path / "nowhere.toml")


def test_decide_stays_cheap(policy: Policy) -> None:
    # The watch on decide()'s hot path (once per signalling message): a cold, loaded CI runner
    # still does a full check well under 20 µs; here it measures about 1 µs.
    chair = person("chair")
    calls = 20_000
    start = time.perf_counter()
    for _ in range(calls):
        policy.decide(chair, "annotate", ROOM)
    assert (time.perf_counter() - start) / calls < 20e-6


# -- Properties: separation of duties holds for any identity, under any lawful table --------

identities = st.builds(
    Identity,
    sub=st.sampled_from(["u1", "u2", ""]),
    jti=st.just("t"),
    role=st.sampled_from([*ROLES, "surgeon", ""]),
    depts=st.lists(st.sampled_from(["cardiology", "oncology", "surgery", ""]), max_size=3).map(
        tuple
    ),
    org=st.sampled_from(["city-hospital", "other-hospital", ""]),
    rooms=st.lists(st.sampled_from(["mdt-1", "mdt-2", "*"]), max_size=3).map(tuple),
    amr=st.lists(st.sampled_from(["pwd", "otp", "hwk", "mfa", "face", "pin"]), max_size=3).map(
        tuple
    ),
)
rooms = st.none() | st.builds(
    RoomScope,
    room_id=st.sampled_from(["mdt-1", "mdt-2"]),
    departments=st.lists(st.sampled_from(["cardiology", "oncology", "surgery"]), max_size=2).map(
        tuple
    ),
    grants=st.lists(
        st.sampled_from(["sub:u1", "dept:surgery", "org:city-hospital", "org:other-hospital"]),
        max_size=2,
    ).map(tuple),
)


@st.composite
def lawful_tables(draw: st.DrawFn) -> dict[str, Any]:
    """Any table the regulator's rules permit: random grants, MFA and room-opening settings."""
    roles = {
        role: draw(
            st.lists(
                st.sampled_from([a for a in ACTIONS if not breaks_separation_of_duties(role, a)]),
                unique=True,
            )
        )
        for role in ROLES
    }
    joiners = [role for role in ROLES if "join_room" in roles[role]]
    return {
        "opens_rooms": draw(st.lists(st.sampled_from(joiners), unique=True)) if joiners else [],
        "wildcard_room_grants": draw(st.booleans()),
        "mfa": {
            "methods": draw(
                st.lists(st.sampled_from(["mfa", "otp", "hwk", "face"]), min_size=1, unique=True)
            ),
            "required_for": draw(st.lists(st.sampled_from(ROLES), unique=True)),
        },
        "roles": roles,
    }


def assert_separation_of_duties(policy: Policy, who: Identity, room: RoomScope | None) -> None:
    granted = policy.permissions(who, room)
    for action in ACTIONS:
        decision = policy.decide(who, action, room)
        assert decision.reason
        assert decision.allowed == (action in granted)
        if who.role not in ROLES:
            assert decision.reason == f"unknown_role: {who.role}"
        elif breaks_separation_of_duties(who.role, action):
            assert not decision
            assert decision.code == "separation_of_duties"
    if who.role in PRIVILEGED:
        assert not policy.may_open_room(who)
        assert not policy.bypasses_lobby(who)


@given(who=identities, room=rooms)
def test_separation_of_duties_holds_on_the_default_table(
    policy: Policy, who: Identity, room: RoomScope | None
) -> None:
    assert_separation_of_duties(policy, who, room)


@settings(max_examples=200)
@given(table=lawful_tables(), who=identities, room=rooms)
def test_separation_of_duties_holds_on_any_stricter_table(
    table: dict[str, Any], who: Identity, room: RoomScope | None
) -> None:
    assert_separation_of_duties(Policy.from_dict(table), who, room)


@given(
    grants=st.fixed_dictionaries(
        {role: st.lists(st.sampled_from(ACTIONS), unique=True) for role in ROLES}
    )
)
def test_a_table_loads_exactly_when_it_respects_separation_of_duties(
    grants: dict[str, list[str]],
) -> None:
    table = copy.deepcopy(default_table())
    table["roles"] = grants
    table["opens_rooms"] = [role for role in ROLES if "join_room" in grants[role]]
    lawful = not any(breaks_separation_of_duties(r, a) for r, acts in grants.items() for a in acts)
    if lawful:
        policy = Policy.from_dict(table)
        assert {role: policy.permissions(person(role)) for role in ROLES} == {
            role: frozenset(acts) for role, acts in grants.items()
        }
    else:
        with pytest.raises(ConfigError, match="breaks separation of duties"):
            Policy.from_dict(table)
