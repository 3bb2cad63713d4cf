"""Image workers: the processes that decode uploaded images, each with a memory cap.

Decoding an upload is the one place where a few hundred kilobytes from a participant can ask
for gigabytes (a decompression bomb). `imaging.deidentify` refuses what the header declares
too large before anything is decoded; the workers are the second wall for what a header does
not tell (a decoder's own working set, a malformed stream): each is a separate process whose
address space is capped (`RLIMIT_AS`), so running out of memory fails that one upload with
`ImageTooLarge` while the node, its meetings and every other upload carry on.

Processes are started with `spawn` (never `fork`: the node has threads and an event loop) the
first time an image is shared, and replaced if one dies.

Nothing a worker prints or logs reaches the node's log: decoders report what they parse (pydicom
warns with the value of a malformed UID, Pillow logs every EXIF tag at debug level, C decoders
write to stderr), and what they parse is patient data. A worker's failures come back as
exceptions with our own fixed messages instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from core.errors import ConsiliumError
from imaging.sniff import ImageTooLarge, UnsupportedImage
from imaging.store import PreparedImage, prepare_image

DEFAULT_WORKER_MEMORY = 1024 * 1024 * 1024
"""Address space a worker may use beyond what it holds once started (its imports)."""


def _start_worker(headroom: int) -> None:
    """Worker initialiser: silence the decoders, then cap the address space at the current
    size + `headroom`."""
    _silence()
    # Load first, so the cap is measured against a worker that has everything loaded (and the
    # first upload does not wait for it): the image code, OCR and deid's filters.
    import pytesseract  # noqa: F401

    import imaging.store  # noqa: F401
    from imaging.burnedin import deid_recipe

    deid_recipe()

    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _ready() -> None:
    """A task that only makes a worker start."""


def _silence() -> None:
    """No log record, warning or byte on stdout/stderr leaves this process (see the module)."""
    root = logging.getLogger()
    root.handlers[:] = [logging.NullHandler()]
    root.setLevel(logging.CRITICAL)
    logging.captureWarnings(False)
    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


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
                    initializer=_start_worker,
                    initargs=(self.memory_bytes,),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def warm(self) -> None:
        """Start the worker processes now, without waiting for them (starting one takes a
        second or two: better while people join than when the first image is shared)."""
        with self._lock:
            if self._pool is not None:
                return
        pool = self._executor()
        for _ in range(self.workers):
            pool.submit(_ready)

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
        except ConsiliumError as exc:
            # Our own error, without the worker's traceback: it quotes what the decoder read.
            raise exc from None
        except Exception:
            # Anything else a decoder raised may quote the upload; it is a refusal, not a
            # server fault to log.
            raise UnsupportedImage("the image cannot be read") from None
        return prepared

    def close(self) -> None:
        """Stop the worker processes (the node is stopping)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
