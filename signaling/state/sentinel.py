"""The `sentinel://` form of the `redis` setting: Redis with no single point of failure.

    sentinel://[[user]:password@]host1:26379,host2:26379,host3:26379/<service>[/<db>]
        [?sentinel_username=...&sentinel_password=...]

The hosts are Redis Sentinels (port 26379 when left out), which watch one primary and its
replicas under the service name (`sentinel monitor <service> ...`) and promote a replica when
the primary is lost. The node asks them for the primary (redis-py's own Sentinel client) and
asks again whenever its connection to it fails. The user and password are the Redis servers'
(primary and replicas); Sentinels that ask for a password of their own (`requirepass` in
sentinel.conf) get `sentinel_password`. `sentinels://` speaks TLS to the Sentinels and the
servers alike.

Pure: a string in, a `SentinelURL` or a `ValueError` saying what is wrong out.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("sentinel", "sentinels")
"""The URL schemes naming Sentinels (the second: over TLS)."""
DEFAULT_PORT = 26379
"""A Sentinel's port when the URL leaves it out."""
_QUERY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelURL:
    """Where the Sentinels are and what to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    """Each Sentinel's (host, port), in the order given."""
    service: str
    """The name the Sentinels monitor the primary under."""
    db: int = 0
    """The Redis database number on the primary."""
    username: str | None = None
    """The Redis servers' user (ACL), if any."""
    password: str | None = None
    """The Redis servers' password, if any."""
    sentinel_username: str | None = None
    """The Sentinels' own user, if they ask for one."""
    sentinel_password: str | None = None
    """The Sentinels' own password, if they ask for one."""
    tls: bool = False
    """TLS to the Sentinels and to the servers (`sentinels://`)."""


def is_sentinel_url(url: str) -> bool:
    """Whether `url` names Sentinels rather than one Redis server."""
    return url.partition("://")[0].lower() in SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """The Sentinels, service and credentials a `sentinel://` URL names; ValueError if it is
    malformed (the message says how, without the password)."""
    form = "sentinel://[user:password@]host:26379,host:26379,.../<service>[/<db>]"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"a Sentinel URL must look like {form}")
    try:
        parts = urlsplit("sentinel://" + rest)
    except ValueError as exc:  # an unclosed [IPv6 address
        raise ValueError(f"a Sentinel URL must look like {form} ({exc})") from None
    if parts.fragment:
        raise ValueError("a Sentinel URL has no #fragment")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(item) for item in hosts.split(","))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError(f"a Sentinel URL names the monitored service: {form}")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"after the service name comes only the database number: {form}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY))
    if unknown:
        raise ValueError(f"unknown Sentinel URL parameter(s): {', '.join(unknown)}")
    if any(len(values) > 1 for values in query.values()):
        raise ValueError("a Sentinel URL parameter is given twice")
    return SentinelURL(
        sentinels=sentinels,
        service=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username", [None])[0] or None,
        sentinel_password=query.get("sentinel_password", [None])[0] or None,
        tls=scheme.lower() == "sentinels",
    )


def _address(item: str) -> tuple[str, int]:
    """`host[:port]` or `[v6]:port` as (host, port)."""
    item = item.strip()
    if item.startswith("["):
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"Sentinel address {item!r} is not [host]:port")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"Sentinel address {item!r} has no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"Sentinel address {item!r} has no valid port")
    return host, int(port_text)
