"""Opening a node's shared state: the Redis store when given a URL, else the memory store.

Apart from `store.py` because it names both implementations, which themselves import `store.py`.
"""

from __future__ import annotations

from pathlib import Path

from signaling.state.memory import MemoryStore
from signaling.state.redis import RedisStore
from signaling.state.revocations import REVOCATIONS_FILE
from signaling.state.store import StateStore


def open_store(redis_url: str | None, data_dir: Path, node_id: str | None = None) -> StateStore:
    """The Redis store if a URL is given, else the memory store with its log in `data_dir`."""
    if redis_url:
        return RedisStore(redis_url, node_id=node_id, revocations_path=data_dir / REVOCATIONS_FILE)
    return MemoryStore(revocations_path=data_dir / REVOCATIONS_FILE, node_id=node_id)
