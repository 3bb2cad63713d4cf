"""Recording benchmark: the segment cipher's throughput against raw AES-GCM, and seek latency.

Prints one JSON line. The keys `cipher_mb_s`, `raw_aesgcm_mb_s`, `cipher_ratio`,
`seek_ttfb_ms_1min`, `seek_ttfb_ms_1h` and `record_cpu_s_per_s` are a contract other tools read;
the rest are extras for a human.

    python bench/recording.py            # 64 MiB through the cipher; 1-min and 1-hour recordings
    python bench/recording.py --quick    # CI smoke: 4 MiB; 1-min and 10-min recordings

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

Seek, end to end through the archive: `seek_ttfb_ms_1min` and `seek_ttfb_ms_1h` time a Range
read of 64 KiB at the middle of a video track of a 1-minute and of a 1-hour recording
(`--quick`: 1 and 10 minutes), each made on disk by `RecordingSink` on a fake clock from about
1 Mbit/s of synthetic RTP (video 100 packets/s of 1100 bytes, audio 50 packets/s of 120 bytes)
cut into 10 s segments, in a temporary directory deleted afterwards. Each timed read is what the
server's Range route does (`signaling/http/routes/archive.py`): a new `TrackStream` on the node's
long-lived `Archive`, whose catalogue already holds the recording's verified manifest (it was
loaded when the archivist listed or opened it): the keyring entry read and unwrapped, the
segment found by bisection and opened (container header, key commitment, final chunk) and the
chunks the range covers decrypted. `seek_first_open_ms_1min` / `_1h` time the same from a cold
`Archive` (the first request after a start): that adds reading the manifest and checking its
signature, which grows with the manifest (one entry per stream per 10 s); the seek itself does
not. The page cache is warm (the files were just written); the KEK is loaded once, as at node
start. The median of `--seeks` reads is reported; the aim is 100 ms or less and not growing
with length.

`record_cpu_s_per_s`: the process CPU time (every thread: the forwarding-path `on_rtp` calls and
the writer thread's encryption, fsync and manifest writes) of recording a 4-party room - each
party video 100 packets/s of 1100 bytes and audio 50 packets/s of 120 bytes - divided by the
seconds of media recorded. Fed on a fake clock, so it takes less than real time; the packets
are built before the clock starts. A figure of 0.05 means a recording room costs 5% of a core.

It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from core.media.track import TrackInfo  # noqa: E402
from recorder.archive import Archive  # noqa: E402
from recorder.chunked import CHUNK_SIZE  # noqa: E402
from recorder.keyring import KeyFileKEK, Keyring  # noqa: E402
from recorder.segments import (  # noqa: E402
    open_segment_reader,
    open_segment_writer,
    segment_context,
)
from recorder.sink import RecordingSettings, RecordingSink  # noqa: E402
from recorder.streams import TrackStream  # noqa: E402

MB = 1_000_000
"""Throughput unit: 10^6 bytes."""
VIDEO_PACKET = 1100
"""Bytes of a synthetic video packet (100 a second: with audio, about 0.93 Mbit/s)."""
AUDIO_PACKET = 120
"""Bytes of a synthetic audio packet (50 a second)."""
ROOM_PARTIES = 4
"""Participants of the room whose recording cost `record_cpu_s_per_s` measures."""
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
    short_seconds: int = 60
    """Length of the "1-minute" recording of the seek measurement."""
    long_seconds: int = 3600
    """Length of the "1-hour" recording (`--quick`: 10 minutes)."""
    record_seconds: int = 120
    """Seconds of 4-party media recorded for `record_cpu_s_per_s`."""
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


class FakeClock:
    """The sink's monotonic clock, moved by the feeding loop."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def party_tracks(party: int) -> tuple[TrackInfo, TrackInfo]:
    """One participant's video and audio tracks."""
    pid = f"p{party}"
    return (
        TrackInfo("bench", pid, f"{pid}:0", "video", "video/VP8", 90000, 96, "camera"),
        TrackInfo("bench", pid, f"{pid}:1", "audio", "audio/opus", 48000, 111, "microphone"),
    )


def record_room(
    recordings_dir: Path,
    recording_id: str,
    data_key: bytes,
    signing_key: Ed25519PrivateKey,
    seconds: int,
    parties: int,
) -> RecordingSink:
    """Record `seconds` of `parties` participants (video 100 packets/s, audio 50/s) through
    `RecordingSink` on a fake clock, in 10 ms steps, 10 s segments; returns the stopped sink."""
    clock = FakeClock()
    sink = RecordingSink(
        recordings_dir, recording_id, "bench", data_key, signing_key, clock=clock,
        settings=RecordingSettings(segment_seconds=10.0), record_everyone=True,
    )  # fmt: skip
    tracks = [party_tracks(party) for party in range(parties)]
    video_packet = os.urandom(VIDEO_PACKET)  # content is opaque to the sink
    audio_packet = os.urandom(AUDIO_PACKET)
    sink.start()
    on_rtp = sink.on_rtp
    for tick in range(seconds * 100):
        clock.now = tick / 100
        for video, audio in tracks:
            on_rtp(video, video_packet, 0, not tick)  # the first starts a keyframe
            if not tick & 1:
                on_rtp(audio, audio_packet, 0, False)
        if tick % 1000 == 1 and tick > 1000:
            # Let the writer keep up, as real time would: on a fake clock the feeding outruns
            # the media rate, and the sink drops (never waits) when its writer falls behind.
            # At most one closed segment may still be in the writer's hands.
            while len(sink.manifest.streams.get("track-0", ())) < tick // 1000 - 1:
                time.sleep(0.0005)
    sink.stop(timeout=None)
    return sink


def seek_ttfb_ms(
    recordings_dir: Path, keyring: Keyring, public_key: Ed25519PublicKey, recording_id: str,
    seeks: int, *, warm: bool = False,
) -> float:  # fmt: skip
    """Median ms of a 64 KiB Range read at the middle of the first video track, each from a
    cold `Archive` (manifest, keyring unwrap, segment open, chunk decryption); with `warm`,
    from one `Archive` whose manifest cache is filled (keyring unwrap and segment work only)."""
    timings = []
    shared = Archive(recordings_dir, keyring, public_key)
    shared.manifest(recording_id)
    for _ in range(seeks):
        started = time.perf_counter()
        archive = shared if warm else Archive(recordings_dir, keyring, public_key)
        stream = TrackStream(archive, recording_id, "track-0")
        first = stream.read(stream.length // 2, SEEK_READ)
        timings.append((time.perf_counter() - started) * 1000.0)
        if len(first) != SEEK_READ:
            raise RuntimeError(f"the seek returned {len(first)} bytes")
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
    """`seek_ttfb_ms_1min` and `seek_ttfb_ms_1h` over recordings made on disk in a temp dir."""
    signing_key = Ed25519PrivateKey.generate()
    line: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="consilium-bench-recording-") as workdir:
        root = Path(workdir)
        keyring = Keyring(root / "keys", KeyFileKEK.generate(root / "kek.json"))
        recordings = root / "recordings"
        recordings.mkdir()
        for name, seconds in (("1min", config.short_seconds), ("1h", config.long_seconds)):
            recording_id = f"bench-{name}"
            started = time.perf_counter()
            sink = record_room(
                recordings, recording_id, keyring.create(recording_id), signing_key, seconds, 1
            )
            built = time.perf_counter() - started
            line[f"seek_ttfb_ms_{name}"] = seek_ttfb_ms(
                recordings, keyring, signing_key.public_key(), recording_id, config.seeks,
                warm=True,
            )  # fmt: skip
            line[f"seek_first_open_ms_{name}"] = seek_ttfb_ms(
                recordings, keyring, signing_key.public_key(), recording_id, config.seeks
            )
            streams = sink.manifest.streams
            line[f"seek_object_bytes_{name}"] = sum(s.size for s in streams["track-0"])
            line[f"seek_recording_seconds_{name}"] = seconds
            line[f"seek_segments_{name}"] = len(streams["track-0"])
            line[f"seek_build_s_{name}"] = round(built, 1)
            if sink.manifest.dropped_records:
                line[f"seek_dropped_records_{name}"] = sink.manifest.dropped_records
            shutil.rmtree(recordings / recording_id)
    return line


def measure_record_cpu(config: BenchConfig) -> dict[str, Any]:
    """`record_cpu_s_per_s`: process CPU seconds per second of a 4-party room recorded."""
    with tempfile.TemporaryDirectory(prefix="consilium-bench-recording-") as workdir:
        cpu = time.process_time()
        wall = time.perf_counter()
        sink = record_room(
            Path(workdir), "bench-cpu", os.urandom(32), Ed25519PrivateKey.generate(),
            config.record_seconds, ROOM_PARTIES,
        )  # fmt: skip
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        manifest = sink.manifest
    records = sum(s.records for name, segments in manifest.streams.items() for s in segments
                  if name != "events")  # fmt: skip
    return {
        "record_cpu_s_per_s": round(cpu / config.record_seconds, 4),
        "record_media_seconds": config.record_seconds,
        "record_packets": records,
        "record_dropped_records": manifest.dropped_records,
        "record_wall_s": round(wall, 2),
    }


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
            data_bytes=4 * 1024 * 1024, repeats=2, long_seconds=600, record_seconds=30, seeks=3
        )
    else:
        config = BenchConfig()
    return BenchConfig(
        data_bytes=args.mib * 1024 * 1024 if args.mib else config.data_bytes,
        write_size=args.write_size,
        repeats=args.repeats or config.repeats,
        short_seconds=config.short_seconds,
        long_seconds=config.long_seconds,
        record_seconds=config.record_seconds,
        seeks=args.seeks or config.seeks,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the JSON line."""
    config = parse_args(argv)
    started = time.monotonic()
    line = measure_throughput(config)
    line.update(measure_seeks(config))
    line.update(measure_record_cpu(config))
    line["bench_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
