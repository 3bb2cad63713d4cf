"""What a change of a person's status in the directory does to their access.

Pure: given the person before and after a SCIM write (None: not in the directory), the
revocation in force for their subject (if any) and `now`, the revocations to store. A leaver
(deactivated or deleted) is revoked by subject through the ordinary revocation path, so every
node closes their connections and refuses their tokens; re-activation lifts that revocation,
and only that one: a revocation an administrator made by hand stays until they lift it.
"""

from __future__ import annotations

from signaling.state.directory_records import DirectoryUser
from signaling.state.records import Revocation

SCIM_REVOKER = "scim"
"""The `by` of the revocations the directory makes (what re-activation may lift)."""


def _made_by_directory(revocation: Revocation | None) -> bool:
    return revocation is not None and not revocation.lifted and revocation.by == SCIM_REVOKER


def access_changes(
    before: DirectoryUser | None,
    after: DirectoryUser | None,
    in_force: Revocation | None,
    now: float,
) -> list[Revocation]:
    """The revocations (or lifted tombstones) to store for the person's subject.

    `in_force`: the latest revocation record of the subject `after` (or, deleted, `before`)
    maps to, lifted or not. A person whose subject is empty (the mapped attribute absent) has
    nothing to revoke.
    """
    person = after if after is not None else before
    if person is None or not person.sub:
        return []
    leaving = after is None or not after.active
    if leaving:
        if in_force is not None and not in_force.lifted:
            return []  # already revoked (by the directory, or by hand: that one is kept)
        reason = "deleted from the directory" if after is None else "deactivated in the directory"
        return [Revocation("sub", person.sub, reason, SCIM_REVOKER, now)]
    if _made_by_directory(in_force):
        assert in_force is not None
        # Later than what it lifts, whatever the clocks of the nodes: the later record wins.
        at = max(now, in_force.at + 0.001)
        return [Revocation("sub", person.sub, "re-activated in the directory", SCIM_REVOKER, at,
                           lifted=True)]  # fmt: skip
    return []
