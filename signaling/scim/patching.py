"""PATCH (RFC 7644 §3.5.2): add, replace and remove, applied to a copy of a resource.

Pure. The operations are validated and applied by `scim2-models` (`PatchOp`): paths with value
filters (`members[value eq "..."]`, `emails[type eq "work"].value`), no path (the value's
attributes are merged), the mutability and required rules of the schema. The operations apply as
a whole: when one fails nothing changes, and the SCIM error says why (invalidPath, noTarget,
invalidValue, mutability).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from scim2_models import Context, Error, PatchOp, Resource, SCIMException

from signaling.scim.resources import TOLERANCE, refusal

ResourceT = TypeVar("ResourceT", bound=Resource[Any])

MAX_OPERATIONS = 1000
"""Most operations one PATCH may carry (Entra sends a few; a group sync some hundreds)."""


def apply_patch(model: type[ResourceT], resource: ResourceT, body: object) -> ResourceT:
    """`resource` with the PATCH request `body` applied (the original is left unchanged)."""
    if not isinstance(body, Mapping):
        raise SCIMException.from_error(
            Error(status=400, scim_type="invalidSyntax", detail="the body must be a JSON object")
        )
    operations = body.get("Operations")
    if isinstance(operations, list) and len(operations) > MAX_OPERATIONS:
        raise SCIMException.from_error(
            Error(status=400, scim_type="tooMany", detail=f"at most {MAX_OPERATIONS} operations")
        )
    try:
        patch = PatchOp[model].model_validate(  # type: ignore[valid-type]
            dict(body), scim_ctx=Context.RESOURCE_PATCH_REQUEST, scim_policy=TOLERANCE
        )
    except ValidationError as exc:
        raise refusal(exc) from None
    patched = resource.model_copy(deep=True)
    try:
        patch.patch(patched, scim_policy=TOLERANCE)
    except ValidationError as exc:
        raise refusal(exc) from None
    return patched
