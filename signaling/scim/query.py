"""Listing resources: the `filter`, `startIndex` and `count` of RFC 7644 §3.4.2.

Pure. Filters are parsed and evaluated by `scim2-models` (`ScimFilter`, bound to the resource's
model): every operator of §3.4.2.2 (eq ne co sw ew pr gt ge lt le), `and`/`or`/`not`, grouping,
and value paths such as `members[value eq "..."]`. A filter that does not parse is refused with
`invalidFilter`; an attribute the model does not declare matches nothing (as §3.4.2.1 says).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scim2_models import Error, Resource, SCIMException, ScimFilter

from signaling.scim.resources import MAX_RESULTS

MAX_FILTER_CHARS = 2000
"""Longest filter accepted (a longer one is refused, before it is parsed)."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What a list request asks for."""

    filter: str | None
    """The SCIM filter expression, if any."""
    start_index: int
    """1-based index of the first result (RFC 7644: below 1 counts as 1)."""
    count: int
    """Most results on this page (0: only `totalResults`), at most `MAX_RESULTS`."""


def _integer(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SCIMException.from_error(
            Error(status=400, scim_type="invalidValue", detail=f"{name} must be an integer")
        ) from None


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """The list query in a request's query string."""
    text = params.get("filter") or None
    if text is not None and len(text) > MAX_FILTER_CHARS:
        raise SCIMException.from_error(
            Error(status=400, scim_type="invalidFilter", detail="the filter is too long")
        )
    start = max(1, _integer(params, "startIndex", 1))
    count = min(MAX_RESULTS, max(0, _integer(params, "count", MAX_RESULTS)))
    return ListQuery(filter=text, start_index=start, count=count)


def matching(
    model: type[Resource[Any]], resources: Sequence[Resource[Any]], text: str | None
) -> list[Resource[Any]]:
    """The resources the filter selects (all of them when there is none), in order."""
    if text is None:
        return list(resources)
    bound = ScimFilter[model](text)  # type: ignore[valid-type]
    try:
        return [r for r in resources if bound.match(r)]
    except (ValueError, TypeError) as exc:
        raise SCIMException.from_error(
            Error(status=400, scim_type="invalidFilter", detail=str(exc)[:300])
        ) from None


_LOOKUP = re.compile(
    r'^\s*(userName|externalId|displayName|id)\s+eq\s+("(?:[^"\\]|\\.)*")\s*$', re.I
)


@dataclass(frozen=True, slots=True)
class Lookup:
    """A filter that is one `eq` on an identifying attribute, as IdPs send before each write
    (`userName eq "..."`): the directory is narrowed on its records before any resource is
    built, instead of building every resource to match each one."""

    attribute: str
    """`userName`, `externalId`, `displayName` or `id`, as the RFC spells it."""
    value: str
    """The value compared with (case-insensitive for userName and displayName, RFC 7643)."""

    def keeps(self, resource_id: str, user_name: str, external_id: str, display_name: str) -> bool:
        """Whether a record with these values may match (the full filter still decides)."""
        if self.attribute == "id":
            return resource_id == self.value
        if self.attribute == "externalId":
            return external_id == self.value
        wanted = user_name if self.attribute == "userName" else display_name
        return wanted.casefold() == self.value.casefold()


def lookup_of(text: str | None) -> Lookup | None:
    """The `Lookup` a filter amounts to, or None for any other filter."""
    found = _LOOKUP.match(text or "")
    if found is None:
        return None
    try:
        value = json.loads(found.group(2))
    except ValueError:
        return None
    names = {"username": "userName", "externalid": "externalId", "displayname": "displayName"}
    return Lookup(names.get(found.group(1).lower(), "id"), value)


def page(items: Sequence[Any], query: ListQuery) -> list[Any]:
    """The page of `items` the query asks for."""
    first = query.start_index - 1
    return list(items[first : first + query.count])
