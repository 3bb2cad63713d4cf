"""Rate limits as plain objects: the caller passes the time, so tests need no clock."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """Allows `burst` events at once, then `rate` per second."""

    rate: float
    """Tokens added per second."""
    burst: float
    """Bucket size."""
    tokens: float = -1.0
    """Tokens left; starts full."""
    stamp: float = 0.0
    """Time of the last refill."""

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens if there are enough; False means over the limit."""
        if self.tokens < 0:
            self.tokens = self.burst
            self.stamp = now
        elif now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class WindowCounter:
    """At most `limit` events per key per `window_s`, for many keys (e.g. client addresses).

    Uses one token bucket per key refilled at limit/window, and forgets the least recently
    seen keys beyond `max_keys`, so a scan from many addresses cannot grow memory without bound.
    """

    def __init__(self, limit: int, window_s: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """Count one event for `key`; False when the key is over its limit."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(rate=self.limit / self.window_s, burst=self.limit)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now)
