"""The pure parts of SCIM provisioning, with no event loop: filters and pages, PATCH, the
records, what a leaver's status does to their revocation, departments, lifted revocations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scim2_models import Context, Group, SCIMException, User

from signaling.scim import resources as res
from signaling.scim.leavers import SCIM_REVOKER, access_changes
from signaling.scim.patching import apply_patch
from signaling.scim.query import ListQuery, lookup_of, matching, page, parse_list_query
from signaling.state.directory_records import DirectoryGroup, DirectoryUser, departments_of
from signaling.state.records import Revocation
from signaling.state.revocations import (
    REVOCATIONS_FILE,
    RevocationIndex,
    append_revocations,
    load_revocation_log,
)

BASE = "https://consilium.example/scim/v2"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def _user(user_name: str, **attrs: Any) -> User[Any]:
    body = {"schemas": [USER_SCHEMA], "userName": user_name, **attrs}
    return res.read_resource(User, body, Context.RESOURCE_CREATION_REQUEST)


def _record(user_name: str, user_id: str = "u1", **attrs: Any) -> DirectoryUser:
    return res.user_record(
        _user(user_name, **attrs), user_id=user_id, subject_attribute="userName", now=100.0
    )


PEOPLE = [
    res.user_resource(
        _record("alice@h.example", "u1", externalId="e-1", displayName="Alice"), [], BASE
    ),
    res.user_resource(_record("bob@h.example", "u2", active=False), [], BASE),
    res.user_resource(_record("carol@other.example", "u3", displayName="Carol"), [], BASE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('userName eq "ALICE@h.example"', ["u1"]),  # userName is case-insensitive (RFC 7643)
        ('userName sw "bob"', ["u2"]),
        ('userName co "h.example"', ["u1", "u2"]),
        ("externalId pr", ["u1"]),
        ('externalId eq "e-1"', ["u1"]),
        ("active eq false", ["u2"]),
        ('displayName eq "Carol" or userName sw "bob"', ["u2", "u3"]),
        ('userName co "example" and not (displayName pr)', ["u2"]),
        ('nickName eq "x"', []),
    ],
)
def test_user_filters_select_the_right_people(expression: str, expected: list[str]) -> None:
    assert [u.id for u in matching(User, PEOPLE, expression)] == expected


@pytest.mark.parametrize(
    "expression",
    ['userName eq "ALICE@h.example"', 'externalId eq "e-1"', 'externalId eq "E-1"',
     'displayName eq "carol"', 'id eq "u2"', 'USERNAME EQ "bob@h.example"',
     'userName eq "a\\"b"'],
)  # fmt: skip
def test_an_identifying_lookup_narrows_to_what_the_full_filter_selects(expression: str) -> None:
    lookup = lookup_of(expression)
    assert lookup is not None
    narrowed = [
        u for u in PEOPLE
        if lookup.keeps(str(u.id), str(u.user_name), u.external_id or "", u.display_name or "")
    ]  # fmt: skip
    assert matching(User, narrowed, expression) == matching(User, PEOPLE, expression)


@pytest.mark.parametrize(
    "expression", ['userName co "a"', 'userName eq "a" or userName eq "b"', "active eq true", ""]
)
def test_other_filters_are_not_lookups(expression: str) -> None:
    assert lookup_of(expression) is None


def test_group_filter_on_members_value() -> None:
    groups = [
        res.group_resource(DirectoryGroup("g1", "dept-cardiology", ["u1", "u2"]), BASE),
        res.group_resource(DirectoryGroup("g2", "dept-oncology", ["u3"]), BASE),
    ]
    assert [g.id for g in matching(Group, groups, 'members.value eq "u3"')] == ["g2"]
    assert [g.id for g in matching(Group, groups, 'members[value eq "u2"]')] == ["g1"]
    assert [g.id for g in matching(Group, groups, 'displayName sw "dept-"')] == ["g1", "g2"]


@pytest.mark.parametrize("expression", ['userName eqq "x"', '(userName eq "x"', "userName eq"])
def test_malformed_filter_is_refused_as_invalid_filter(expression: str) -> None:
    with pytest.raises(SCIMException) as refused:
        matching(User, PEOPLE, expression)
    assert refused.value.status == 400 and refused.value.scim_type == "invalidFilter"


def test_pages_follow_start_index_and_count() -> None:
    assert parse_list_query({}) == ListQuery(None, 1, res.MAX_RESULTS)
    query = parse_list_query({"startIndex": "2", "count": "1"})
    assert [u.id for u in page(PEOPLE, query)] == ["u2"]
    # Below 1 counts as 1; a negative count as 0; beyond the bound as the bound (RFC 7644).
    assert parse_list_query({"startIndex": "-3", "count": "-1"}) == ListQuery(None, 1, 0)
    assert parse_list_query({"count": "100000"}).count == res.MAX_RESULTS
    assert page(PEOPLE, parse_list_query({"startIndex": "9"})) == []
    with pytest.raises(SCIMException) as refused:
        parse_list_query({"count": "many"})
    assert refused.value.scim_type == "invalidValue"


def test_record_maps_the_subject_as_configured() -> None:
    user = _user("alice@h.example", externalId="0f3c-entra", emails=[
        {"value": "a2@h.example"}, {"value": "alice@h.example", "primary": True}])  # fmt: skip
    by_name = res.user_record(user, user_id="u1", subject_attribute="userName", now=5.0)
    by_external = res.user_record(user, user_id="u1", subject_attribute="externalId", now=5.0)
    assert by_name.sub == "alice@h.example" and by_external.sub == "0f3c-entra"
    assert by_name.emails == ["alice@h.example", "a2@h.example"]  # primary first
    assert by_name.active  # absent `active`: not deactivated
    again = res.user_record(user, user_id="u1", subject_attribute="userName", now=9.0,
                            previous=by_name)  # fmt: skip
    assert (again.created, again.modified, again.version) == (5.0, 9.0, 2)
    assert DirectoryUser.from_dict(again.to_dict()) == again
    shown = res.user_resource(again, [], BASE)
    assert shown.meta is not None and shown.meta.version == 'W/"2"'
    assert shown.meta.location == f"{BASE}/Users/u1"


def test_patch_deactivates_a_user_without_touching_the_original() -> None:
    before = PEOPLE[0]
    body = {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "replace", "path": "active", "value": False}]}  # fmt: skip
    after = apply_patch(User, before, body)
    assert after.active is False and before.active is None  # absent: counted as active
    # Entra ID sends a value object without a path, and "False" as a string.
    entra = {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Replace", "value": {"active": False, "displayName": "A. Smith"}}]}  # fmt: skip
    patched = apply_patch(User, before, entra)
    assert patched.active is False and patched.display_name == "A. Smith"


def test_patch_moves_members_in_and_out_of_a_group() -> None:
    group = res.group_resource(DirectoryGroup("g1", "dept-cardiology", ["u1", "u2"]), BASE)
    body = {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "remove", "path": 'members[value eq "u1"]'},
        {"op": "add", "path": "members", "value": [{"value": "u3"}]},
    ]}  # fmt: skip
    after = res.group_record(apply_patch(Group, group, body), group_id="g1", now=1.0)
    assert after.members == ["u2", "u3"]
    remove_all = {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove", "path": "members"}]}
    emptied = apply_patch(Group, group, remove_all)
    assert not emptied.members


@pytest.mark.parametrize(
    ("operation", "scim_type"),
    [
        ({"op": "replace", "path": "members[value eq", "value": []}, "invalidPath"),
        ({"op": "replace", "path": "id", "value": "mine"}, "mutability"),
        ({"op": "frobnicate", "path": "displayName", "value": "x"}, "invalidValue"),
    ],
)
def test_bad_patch_is_refused_with_its_scim_type(operation: dict[str, Any], scim_type: str) -> None:
    group = res.group_resource(DirectoryGroup("g1", "dept-cardiology", ["u1"]), BASE)
    with pytest.raises(SCIMException) as refused:
        apply_patch(Group, group, {"schemas": [PATCH_SCHEMA], "Operations": [operation]})
    assert refused.value.status == 400
    assert refused.value.scim_type in (scim_type, "invalidSyntax", "invalidValue", "invalidPath")


def test_departments_are_the_prefixed_groups_holding_the_person() -> None:
    groups = [
        DirectoryGroup("g1", "dept-cardiology", ["u1"]),
        DirectoryGroup("g2", "dept-oncology", ["u2"]),
        DirectoryGroup("g3", "all-staff", ["u1", "u2"]),
        DirectoryGroup("g4", "dept-radiology", ["u1"]),
    ]
    assert departments_of("u1", groups, "dept-") == ("cardiology", "radiology")
    assert departments_of("u1", groups, "") == ("all-staff", "dept-cardiology", "dept-radiology")
    assert departments_of("u9", groups, "dept-") == ()


ACTIVE = DirectoryUser("u1", "alice", "alice", active=True)
INACTIVE = DirectoryUser("u1", "alice", "alice", active=False)


def test_deactivation_revokes_the_subject() -> None:
    [revocation] = access_changes(ACTIVE, INACTIVE, None, 50.0)
    assert (revocation.kind, revocation.value, revocation.by) == ("sub", "alice", SCIM_REVOKER)
    assert not revocation.lifted and revocation.expires_at is None


def test_deletion_revokes_and_a_second_deactivation_adds_nothing() -> None:
    [revocation] = access_changes(ACTIVE, None, None, 50.0)
    assert revocation.reason == "deleted from the directory"
    assert access_changes(INACTIVE, INACTIVE, revocation, 60.0) == []


def test_reactivation_lifts_only_the_directorys_revocation() -> None:
    by_directory = Revocation("sub", "alice", "deactivated", SCIM_REVOKER, 50.0)
    [lifted] = access_changes(INACTIVE, ACTIVE, by_directory, 40.0)  # a node whose clock is late
    assert lifted.lifted and lifted.key == by_directory.key and lifted.at > by_directory.at
    by_hand = Revocation("sub", "alice", "stolen laptop", "admin-1", 50.0)
    assert access_changes(INACTIVE, ACTIVE, by_hand, 60.0) == []
    # Nor does deactivating replace a hand revocation (re-activation would then lift it).
    assert access_changes(ACTIVE, INACTIVE, by_hand, 60.0) == []


def test_a_person_without_a_subject_has_nothing_to_revoke() -> None:
    nameless = DirectoryUser("u1", "", "alice", active=False)
    assert access_changes(None, nameless, None, 1.0) == []


def test_a_lifted_revocation_revokes_nothing_and_wins_over_what_it_lifts() -> None:
    index = RevocationIndex()
    revoked = Revocation("sub", "alice", "deactivated", SCIM_REVOKER, 50.0)
    lifted = Revocation("sub", "alice", "re-activated", SCIM_REVOKER, 60.0, lifted=True)
    index.add(revoked)
    assert index.lookup(jti="", sub="alice", now=55.0) == revoked
    assert index.add(lifted)
    assert index.lookup(jti="", sub="alice", now=65.0) is None
    # Copies merge in any order: the older revocation arriving late changes nothing.
    assert not index.add(revoked)
    assert index.lookup(jti="", sub="alice", now=65.0) is None
    # The tombstone is kept (journals and Redis must forget the revocation too).
    assert index.live(65.0) == [lifted]
    assert Revocation.from_dict(lifted.to_dict()) == lifted


def test_a_lifted_revocation_survives_the_journal_and_its_compaction(tmp_path: Path) -> None:
    path = tmp_path / REVOCATIONS_FILE
    revoked = Revocation("sub", "alice", "deactivated", SCIM_REVOKER, 50.0)
    lifted = Revocation("sub", "alice", "re-activated", SCIM_REVOKER, 60.0, lifted=True)
    append_revocations(path, [revoked, lifted])
    assert load_revocation_log(path, 70.0) == [lifted]  # compacted: the tombstone alone
    index = RevocationIndex()
    for r in load_revocation_log(path, 80.0):
        index.add(r)
    index.add(revoked)  # a copy that missed the lifting (another node's journal, Redis)
    assert index.lookup(jti="", sub="alice", now=90.0) is None
    # An ordinary revocation's bytes are unchanged by the new field.
    assert "lifted" not in revoked.to_dict() and lifted.to_dict()["lifted"] is True


def test_entra_shaped_requests_are_accepted() -> None:
    # Entra ID sends the EnterpriseUser extension by default: accepted, its attributes dropped.
    enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    user = res.read_resource(
        User,
        {"schemas": [USER_SCHEMA, enterprise], "userName": "alice@h.example", "active": True,
         enterprise: {"department": "Cardiology", "employeeNumber": "4711"}},
        Context.RESOURCE_CREATION_REQUEST,
    )  # fmt: skip
    record = res.user_record(user, user_id="u1", subject_attribute="userName", now=1.0)
    assert record.resource["schemas"] == [USER_SCHEMA] and enterprise not in record.resource
    # A member removed by a value rather than a path filter, as Entra removes group members.
    group = res.group_resource(DirectoryGroup("g1", "dept-cardiology", ["u1", "u2"]), BASE)
    body = {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Remove", "path": "members", "value": [{"value": "u1"}]}]}  # fmt: skip
    assert [m.value for m in apply_patch(Group, group, body).members or []] == ["u2"]
    # Booleans as strings, and a filtered path creating the entry it names.
    shown = res.user_resource(record, [], BASE)
    body = {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Replace", "path": "active", "value": "False"},
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "alice@h.example"},
    ]}  # fmt: skip
    patched = apply_patch(User, shown, body)
    assert patched.active is False
    assert [str(e.value) for e in patched.emails or []] == ["alice@h.example"]
