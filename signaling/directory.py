"""The directory as the gate reads it: is this subject a person the hospital's IdP provisioned,
are they still active, and which departments are they in.

Precedence (docs/operations.md, "Provisioning with SCIM"): when SCIM provisioning is on and the
token's subject is a person in the directory, the directory decides. A deactivated person is
refused (`deactivated`) whatever their token says, and their departments are the directory's
department groups, replacing the token's `depts` claim (a person moved out of cardiology
there is out of cardiology here at their next join). A subject the directory does not hold
keeps the departments its token carries. Any sign-in path (bearer tokens now, OIDC sessions
later) asks `Directory.admit` once it has an `Identity`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import AuthenticationError
from signaling.identity import Identity
from signaling.state.directory import DirectoryStore
from signaling.state.directory_records import departments_of
from signaling.tokens import KeySource, TokenVerifier


@dataclass(frozen=True, slots=True)
class DirectoryPerson:
    """What the directory says of one subject."""

    user_id: str
    """The person's SCIM id."""
    active: bool
    """False: a leaver; every sign-in is refused."""
    departments: tuple[str, ...]
    """Their department groups' names (`scim_department_prefix` removed), sorted."""


class Directory:
    """Look-ups of the SCIM directory for the gate (one per node)."""

    def __init__(self, store: DirectoryStore, *, enabled: bool, department_prefix: str) -> None:
        self.store = store
        """Where the directory lives (the node's `StateStore.directory`)."""
        self.enabled = enabled
        """SCIM provisioning is configured (`scim_token_file`); off: no look-up at all."""
        self.department_prefix = department_prefix
        """Which groups are departments (`scim_department_prefix`)."""

    async def person(self, sub: str) -> DirectoryPerson | None:
        """The directory's word on `sub`, or None when it does not hold that subject."""
        if not self.enabled or not sub:
            return None
        user = await self.store.find_user(sub)
        if user is None:
            return None
        groups = await self.store.list_groups()
        return DirectoryPerson(
            user.user_id, user.active, departments_of(user.user_id, groups, self.department_prefix)
        )

    async def admit(self, identity: Identity) -> Identity:
        """`identity` with the directory's departments, or AuthenticationError (reason
        `deactivated`) for a person the directory deactivated."""
        person = await self.person(identity.sub)
        if person is None:
            return identity
        if not person.active:
            # "revoked" in the words: the web client shows its "access withdrawn" screen.
            raise AuthenticationError(
                "access revoked: deactivated in the hospital directory", reason="deactivated"
            )
        return dataclasses.replace(identity, depts=person.departments)


class DirectoryVerifier(TokenVerifier):
    """A `TokenVerifier` whose identities pass through the directory (`Directory.admit`)."""

    def __init__(
        self,
        source: KeySource,
        *,
        directory: Directory,
        issuer: str,
        audience: str,
        leeway_s: int = 30,
        on_key_refresh: Callable[[str, int], None] | None = None,
    ) -> None:
        """As `TokenVerifier`, with the `directory` every identity passes through."""
        super().__init__(
            source, issuer=issuer, audience=audience, leeway_s=leeway_s,
            on_key_refresh=on_key_refresh,
        )  # fmt: skip
        self.directory = directory
        """The directory every verified identity is checked against."""

    async def verify(self, token: str) -> Identity:
        """The identity the token carries, as the directory has it (see the module)."""
        return await self.directory.admit(await super().verify(token))
