"""Image workers: the processes that decode uploaded images, each with a memory cap.

Decoding an upload is the one place where a few hundred kilobytes from a participant can ask
for gigabytes (a decompression bomb). `signaling.deidentify` refuses what the header declares
too large before anything is decoded; the workers are the second wall for what a header does
not tell (a decoder's own working set, a malformed stream): each is a separate process whose
address space is capped (`RLIMIT_AS`), so running out of memory fails that one upload with
`ImageTooLarge` while the node, its meetings and every other upload carry on.

Processes are started with `spawn` (never `fork`: the node has threads and an event loop) the
first time an image is shared, and replaced if one dies.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .deidentify import ImageTooLarge
from .images import PreparedImage, prepare_image

DEFAULT_WORKER_MEMORY = 1024 * 1024 * 1024
"""Address space a worker may use beyond what it holds once started (its imports)."""


def _cap_memory(headroom: int) -> None:
    """Worker initialiser: cap this process's address space at its current size + `headroom`."""
    # Imports first, so the cap is measured against a worker that has everything loaded.
    import signaling.images  # noqa: F401

    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class ImageWorkers:
    """A pool of memory-capped processes that prepare uploaded images (`prepare_image`).

    Thread-safe: `prepare` is called from the node's image threads and blocks until done.
    """

    def __init__(self, workers: int, memory_bytes: int = DEFAULT_WORKER_MEMORY) -> None:
        self.workers = workers
        """Processes at most (the node's `image_workers`)."""
        self.memory_bytes = memory_bytes
        """Address space each may use beyond its start-up size."""
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_cap_memory,
                    initargs=(self.memory_bytes,),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def prepare(self, data: bytes, **options: Any) -> PreparedImage:
        """`prepare_image(data, **options)` in a worker; `ImageTooLarge` if it runs out of
        memory (or the worker dies, which only an out-of-memory kill does here)."""
        pool = self._executor()
        try:
            prepared: PreparedImage = pool.submit(prepare_image, data, **options).result()
        except MemoryError:
            raise ImageTooLarge("the image needs more memory to decode than is allowed") from None
        except BrokenProcessPool:
            self._discard(pool)
            raise ImageTooLarge("the image needs more memory to decode than is allowed") from None
        return prepared

    def close(self) -> None:
        """Stop the worker processes (the node is stopping)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
