"""Recording benchmark: the segment cipher's throughput against raw AES-GCM, and seek latency.

Prints one JSON line. The keys `cipher_mb_s`, `raw_aesgcm_mb_s`, `cipher_ratio`,
`seek_ttfb_ms_1min`, `seek_ttfb_ms_1h` and `record_cpu_s_per_s` are a contract other tools read;
the rest are extras for a human.

    python bench/recording.py            # 64 MiB through the cipher; 8 MB and 480 MB objects
    python bench/recording.py --quick    # CI smoke: 4 MiB; 1 MB and 8 MB objects

Throughput, all in memory, in one process, on the same 16 KiB buffers:
- `raw_aesgcm_mb_s`: plain `AESGCM` from `cryptography`, one object, seals every 16 KiB chunk
  of the data under its own nonce (nonces computed before the clock starts), then opens every
  sealed chunk. Nothing else: the floor any AES-GCM chunking pays.
- `cipher_mb_s`: our C2SP writer (`open_segment_writer`, fed `--write-size` pieces, into a sink
  that keeps the sealed chunks without copying) then our streaming reader
  (`open_segment_reader` over the joined ciphertext, zero-copy), key derivation and container
  header included. Both figures count plaintext bytes once (MB = 10^6 bytes) over the
  encrypt + decrypt time; each is the best of `--repeats` interleaved runs, since the machine's
  two cores are shared. `cipher_ratio` is cipher / raw; the aim is at least 0.9.

Seek: `seek_ttfb_ms_1min` and `seek_ttfb_ms_1h` time, from opening the file, a random-access
read of the first 64 KiB at the middle of one encrypted object the size of a 1-minute and of a
1-hour recording at about 1 Mbit/s (8 MB and 480 MB; the files live in a temporary directory,
deleted afterwards): container header, key commitment, the final-chunk length check and the
chunks the range covers - the segment cipher's share of a Range request. The page cache is warm
(the file was just written). The median of `--seeks` opens is reported; the aim is 100 ms or
less and not growing with length. The archive's own Range path (manifest, keyring) will later
measure the same keys end to end; `record_cpu_s_per_s` (a 4-party room) comes with the
recorder and is null until then.

It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from recorder.segments import (  # noqa: E402
    CHUNK_SIZE,
    open_segment_random_access,
    open_segment_reader,
    open_segment_writer,
    segment_context,
)

MB = 1_000_000
"""Throughput unit: 10^6 bytes."""
MINUTE_BYTES = 8 * MB
"""One minute of a recording at about 1 Mbit/s (video and audio of one participant)."""
HOUR_BYTES = 60 * MINUTE_BYTES
"""One hour at the same rate."""
SEEK_READ = 64 * 1024
"""Bytes a seek reads from the middle (a player's first Range request)."""


@dataclass(frozen=True)
class BenchConfig:
    """What one run does."""

    data_bytes: int = 64 * 1024 * 1024
    """Plaintext through the cipher per throughput run."""
    write_size: int = 64 * 1024
    """Size of each write into the segment writer."""
    repeats: int = 5
    """Interleaved runs of each throughput measurement; the best counts."""
    minute_bytes: int = MINUTE_BYTES
    """Size of the "1-minute" object of the seek measurement."""
    hour_bytes: int = HOUR_BYTES
    """Size of the "1-hour" object."""
    seeks: int = 15
    """Timed opens-and-seeks per object; the median counts."""


class ChunkList:
    """An in-memory sink that keeps each sealed chunk object as it comes, without copying."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        # list.append itself, as the raw loop's list comprehension: no Python frame per chunk.
        self.write: Callable[[bytes], object] = self.parts.append


def time_raw_aesgcm(data: memoryview, key: bytes) -> tuple[float, float]:
    """Seconds for plain AES-GCM to seal every 16 KiB chunk of `data`, and to open them."""
    aead = AESGCM(key)
    chunks = [data[start : start + CHUNK_SIZE] for start in range(0, len(data), CHUNK_SIZE)]
    base = int.from_bytes(os.urandom(12), "big")
    nonces = [(base ^ index).to_bytes(12, "big") for index in range(len(chunks))]
    encrypt, decrypt = aead.encrypt, aead.decrypt
    started = time.perf_counter()
    sealed = [encrypt(nonce, chunk, None) for nonce, chunk in zip(nonces, chunks, strict=True)]
    encrypted = time.perf_counter() - started
    started = time.perf_counter()
    for nonce, ciphertext in zip(nonces, sealed, strict=True):
        decrypt(nonce, ciphertext, None)
    return encrypted, time.perf_counter() - started


def time_cipher(data: memoryview, key: bytes, write_size: int) -> tuple[float, float]:
    """Seconds for our writer over `data`, and for our streaming reader back; checks the trip."""
    context = segment_context("bench-recording", "video-bench", 0)
    sink = ChunkList()
    started = time.perf_counter()
    writer = open_segment_writer(sink, key, context)
    for start in range(0, len(data), write_size):
        writer.write(data[start : start + write_size])
    writer.close()
    encrypted = time.perf_counter() - started
    ciphertext = b"".join(sink.parts)  # what a file would hold; not part of the cipher's cost
    del sink
    started = time.perf_counter()
    chunks = 0
    for _ in open_segment_reader(ciphertext, key, context):
        chunks += 1
    decrypted = time.perf_counter() - started
    if chunks != -(-len(data) // CHUNK_SIZE):
        raise RuntimeError(f"round trip gave {chunks} chunks for {len(data)} bytes")
    return encrypted, decrypted


def write_object(path: Path, size: int, key: bytes, context: bytes) -> None:
    """An encrypted object of `size` plaintext bytes (a repeated random MiB: the cipher cannot
    tell) at `path`."""
    block = os.urandom(1024 * 1024)
    with path.open("wb") as sink, open_segment_writer(sink, key, context) as writer:
        remaining = size
        while remaining:
            piece = min(remaining, len(block))
            writer.write(memoryview(block)[:piece])
            remaining -= piece


def seek_ttfb_ms(path: Path, key: bytes, context: bytes, seeks: int) -> float:
    """Median ms from opening `path` to the first decrypted bytes of a read at its middle."""
    timings = []
    for _ in range(seeks):
        started = time.perf_counter()
        with path.open("rb") as source:
            reader = open_segment_random_access(source, key, context)
            middle = reader.size() // 2
            first = next(reader.iter_range(middle, SEEK_READ))
            timings.append((time.perf_counter() - started) * 1000.0)
        if not first:
            raise RuntimeError("the seek returned nothing")
    return round(statistics.median(timings), 3)


def measure_throughput(config: BenchConfig) -> dict[str, Any]:
    """`cipher_mb_s`, `raw_aesgcm_mb_s` and `cipher_ratio`, best of interleaved runs."""
    key = os.urandom(32)
    data = memoryview(os.urandom(config.data_bytes))
    raw: list[tuple[float, float]] = []
    ours: list[tuple[float, float]] = []
    for _ in range(config.repeats):
        raw.append(time_raw_aesgcm(data, key))
        ours.append(time_cipher(data, key, config.write_size))
    raw_best = min(sum(run) for run in raw)
    ours_best = min(sum(run) for run in ours)
    raw_mb_s = config.data_bytes / raw_best / MB
    cipher_mb_s = config.data_bytes / ours_best / MB
    return {
        "cipher_mb_s": round(cipher_mb_s, 1),
        "raw_aesgcm_mb_s": round(raw_mb_s, 1),
        "cipher_ratio": round(cipher_mb_s / raw_mb_s, 3),
        # Each phase's best, to see where a gap comes from.
        "cipher_encrypt_ms": round(min(run[0] for run in ours) * 1000, 2),
        "cipher_decrypt_ms": round(min(run[1] for run in ours) * 1000, 2),
        "raw_encrypt_ms": round(min(run[0] for run in raw) * 1000, 2),
        "raw_decrypt_ms": round(min(run[1] for run in raw) * 1000, 2),
        "data_bytes": config.data_bytes,
        "write_size": config.write_size,
        "repeats": config.repeats,
    }


def measure_seeks(config: BenchConfig) -> dict[str, Any]:
    """`seek_ttfb_ms_1min` and `seek_ttfb_ms_1h` over file-backed objects in a temp dir."""
    key = os.urandom(32)
    context = segment_context("bench-recording", "video-bench", 0)
    line: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="consilium-bench-recording-") as workdir:
        for name, size in (("1min", config.minute_bytes), ("1h", config.hour_bytes)):
            path = Path(workdir) / f"{name}.enc"
            write_object(path, size, key, context)
            line[f"seek_ttfb_ms_{name}"] = seek_ttfb_ms(path, key, context, config.seeks)
            line[f"seek_object_bytes_{name}"] = size
            path.unlink()
    return line


def parse_args(argv: list[str] | None) -> BenchConfig:
    """The run's configuration from the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: small sizes")
    parser.add_argument("--mib", type=int, help="MiB through the cipher (default 64)")
    parser.add_argument("--write-size", type=int, default=64 * 1024, help="bytes per write")
    parser.add_argument("--repeats", type=int, help="throughput runs, best counts (default 5)")
    parser.add_argument("--seeks", type=int, help="timed seeks per object (default 15)")
    args = parser.parse_args(argv)
    if args.quick:
        config = BenchConfig(
            data_bytes=4 * 1024 * 1024, repeats=2, minute_bytes=MB, hour_bytes=8 * MB, seeks=3
        )
    else:
        config = BenchConfig()
    return BenchConfig(
        data_bytes=args.mib * 1024 * 1024 if args.mib else config.data_bytes,
        write_size=args.write_size,
        repeats=args.repeats or config.repeats,
        minute_bytes=config.minute_bytes,
        hour_bytes=config.hour_bytes,
        seeks=args.seeks or config.seeks,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the JSON line."""
    config = parse_args(argv)
    started = time.monotonic()
    line = measure_throughput(config)
    line.update(measure_seeks(config))
    line["record_cpu_s_per_s"] = None
    line["bench_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
