"""Per-viewer watermarks on served images: a visible overlay and an invisible keyed mark.

Every image a participant fetches carries who it was shown to, in which room and when:

- `draw_overlay`: the viewer id, room and time as semi-transparent text tiled diagonally over
  the whole image (Pillow's built-in font: no font files, works offline).
- `embed_mark` / `read_mark`: the same facts hidden in the luminance, so that a leaked copy
  names its viewer even where the overlay was cropped or painted out. `identify` recovers them
  with `consilium watermark identify FILE`.

The invisible mark is dither-modulation QIM in 8 × 8 block DCTs aligned with JPEG's grid: each
of eight low/mid-frequency coefficients of every block is moved onto one of two interleaved
lattices (step `QIM_STEP`), chosen by one bit of a convolutionally coded record (K = 7, rate
1/2, soft Viterbi decoding). Each coded bit is repeated across the image at key-derived
random positions with key-derived dithers, and the repetitions are combined softly. The step
is larger than twice JPEG's quantisation step for those coefficients at quality 75, so
re-encoding as JPEG (quality ≥ 75) or PNG moves no coefficient across a decision boundary;
what the overlay or clipping damages, repetition and the code repair. Near black (or white),
which CT and MR images are full of, a block's mean is lifted (or lowered) by the few grey
levels that keep the pattern from clipping at 0 or 255; blocks that would need more, or that
would take the image below `TARGET_PSNR`, are left untouched, and the reader ignores blocks
whose carrying coefficients are all zero.

The record holds the viewer and room as UTF-8, the time in seconds, and a 64-bit HMAC tag
under the server's key: a wrong key, an unmarked image, or a damaged mark fails the tag, so
`identify` answers None instead of guessing. The record has one of four sizes (the smallest
that fits); the reader tries each. The mark survives re-encoding, not rescaling or cropping.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from core.durable import create_once
from core.errors import ConfigError
from imaging.sniff import DEFAULT_LIMITS, ImageKind, ImageTooLarge, UnsupportedImage, sniff

WATERMARK_KEY_FILE = "watermark.key"
"""Name of the server's watermark key, under `<data_dir>/keys/`."""
KEY_BYTES = 32
"""Length of a watermark key."""

BLOCK = 8
"""Side of the DCT blocks: JPEG's, so its quantisation hits each coefficient on its own."""
COEFFICIENTS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1), (2, 2),
)  # fmt: skip
"""(row, column) of the DCT coefficients that carry the mark in every block. Low enough in
frequency that JPEG at quality 75 quantises them with steps of 5 to 8 (the DC term, which
the anti-clipping lift uses, is left alone)."""
QIM_STEP = 18.0
"""Lattice step. Decisions flip only if a coefficient moves by a quarter step (4.5); JPEG at
quality 75 moves these by at most half its step (≤ 4). Per coefficient the mark adds a mean
squared error of step²/12 = 27, i.e. 27 × 8 / 64 ≈ 3.4 per pixel (42.8 dB) before lifts."""
MAX_LIFT = 6.0
"""Most grey levels a block's mean may be lifted (or lowered) to keep the pattern off 0/255."""
TARGET_PSNR = 40.0
"""The mark spares its costliest blocks to keep at least this PSNR (dB) over the image."""
BLANK_ENERGY = 1.0
"""Below this energy in the carrying coefficients a block is taken as unmarked (flat)."""
RECORD_SIZES: tuple[int, ...] = (32, 64, 128, 224)
"""Record sizes in bytes; a mark uses the smallest that holds its viewer and room."""

_VERSION = 1
_TAG_BYTES = 8
_HEADER = struct.Struct(">BI")  # version and flags, time in seconds since 1970
_FLAG_TRUNCATED = 0x01
_CONSTRAINT = 7
_GENERATORS = (0o171, 0o133)  # the NASA/CCSDS K = 7 code
_OVERLAY_ALPHA = 0.25  # opacity of the visible text: readable, yet the anatomy shows through
_OVERLAY_LINE_SPACING = 5  # text heights from one diagonal line to the next


# -- keys -------------------------------------------------------------------------------------


def load_watermark_key(data_dir: Path) -> bytes:
    """The server's watermark key from `<data_dir>/keys/watermark.key`; `ConfigError` if absent."""
    path = Path(data_dir) / "keys" / WATERMARK_KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no watermark key at {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the watermark key {path}: {exc}") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} is not a {KEY_BYTES}-byte watermark key")
    return key


def load_or_create_watermark_key(data_dir: Path) -> bytes:
    """The server's watermark key, created (32 random bytes, mode 0600) on first use."""
    keys_dir = Path(data_dir) / "keys"
    path = keys_dir / WATERMARK_KEY_FILE
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Linked into place (a crash never leaves half a key under the real name); when another
        # process created it first, theirs is used.
        create_once(path, os.urandom(KEY_BYTES))
    return load_watermark_key(data_dir)


# -- what a mark says -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    """Who an image was served to, where and when."""

    viewer: str
    """The viewer's identity (the token's `sub`)."""
    room: str
    """The room the image was shared in."""
    time: datetime
    """When it was served (UTC, whole seconds)."""
    truncated: bool = False
    """The ids were too long for the largest record and were cut (read back only)."""

    def describe(self) -> str:
        """One line for the visible overlay."""
        return f"{self.viewer} · {self.room} · {self.time.astimezone(UTC):%Y-%m-%d %H:%M}Z"


class MarkDoesNotFit(ValueError):
    """The image is too small to carry the mark."""


def _encode_record(mark: Mark, key: bytes) -> bytes:
    viewer, room = mark.viewer.encode(), mark.room.encode()
    budget = RECORD_SIZES[-1] - _HEADER.size - 2 - _TAG_BYTES  # 209 bytes for both ids
    truncated = len(viewer) + len(room) > budget
    if truncated:  # the room keeps at least half (room ids are short), the viewer the rest
        room = _cut(room, max(budget // 2, budget - len(viewer)))
        viewer = _cut(viewer, budget - len(room))
    seconds = min(max(int(mark.time.timestamp()), 0), 2**32 - 1)
    body = (
        _HEADER.pack(_VERSION << 4 | (_FLAG_TRUNCATED if truncated else 0), seconds)
        + bytes([len(viewer)])
        + viewer
        + bytes([len(room)])
        + room
    )
    size = next(s for s in RECORD_SIZES if len(body) + _TAG_BYTES <= s)
    body += bytes(size - _TAG_BYTES - len(body))
    return body + _record_tag(body, key)


def _cut(text: bytes, limit: int) -> bytes:
    """At most `limit` bytes of UTF-8 `text`, never splitting a character."""
    return text[:limit].decode("utf-8", "ignore").encode()


def _record_tag(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, b"consilium-watermark-record\x00" + body, hashlib.sha256).digest()[
        :_TAG_BYTES
    ]


def _decode_record(record: bytes, key: bytes) -> Mark | None:
    body, tag = record[:-_TAG_BYTES], record[-_TAG_BYTES:]
    if not hmac.compare_digest(tag, _record_tag(body, key)):
        return None
    flags, seconds = _HEADER.unpack_from(body)
    if flags >> 4 != _VERSION:
        return None
    offset = _HEADER.size
    try:
        viewer_length = body[offset]
        viewer = body[offset + 1 : offset + 1 + viewer_length].decode()
        offset += 1 + viewer_length
        room_length = body[offset]
        room = body[offset + 1 : offset + 1 + room_length].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    return Mark(viewer, room, datetime.fromtimestamp(seconds, UTC), bool(flags & _FLAG_TRUNCATED))


# -- the error-correcting code ----------------------------------------------------------------


def _parity(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    values = values ^ (values >> 4)
    values = values ^ (values >> 2)
    values = values ^ (values >> 1)
    return values & 1


_STATES = 1 << (_CONSTRAINT - 1)
# For each next state: its two predecessor states and the two coded bits of each transition.
# The shift register holds the newest input in its top bit: next = (bit << 5) | (state >> 1).
_NEXT = np.arange(_STATES)
_PREDECESSORS = np.stack([((_NEXT & (_STATES // 2 - 1)) << 1) | low for low in (0, 1)])
_REGISTERS = ((_NEXT >> (_CONSTRAINT - 2)) << (_CONSTRAINT - 1)) | _PREDECESSORS
_BRANCH_SIGNS = np.stack([1 - 2 * _parity(_REGISTERS & g) for g in _GENERATORS]).astype(float)


def _convolutional_encode(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Rate-1/2 K = 7 encoding, with K - 1 zero tail bits so decoding ends in state 0."""
    padded = np.concatenate([bits.astype(np.int64), np.zeros(_CONSTRAINT - 1, np.int64)])
    window = np.zeros(len(padded), np.int64)
    for shift in range(_CONSTRAINT):  # register at step t: bit t in the top, older below
        window[shift:] |= padded[: len(padded) - shift] << (_CONSTRAINT - 1 - shift)
    coded = np.stack([_parity(window & g) for g in _GENERATORS], axis=1)
    return coded.reshape(-1).astype(np.uint8)


def _viterbi_decode(soft: npt.NDArray[np.float64], length: int) -> npt.NDArray[np.uint8]:
    """Most likely `length` input bits for soft coded values (+ means 0, - means 1)."""
    pairs = soft.reshape(-1, 2)
    metric = np.full(_STATES, -np.inf)
    metric[0] = 0.0
    choices = np.zeros((len(pairs), _STATES), dtype=np.uint8)
    for step, (first, second) in enumerate(pairs):
        candidates = (
            metric[_PREDECESSORS] + first * _BRANCH_SIGNS[0] + second * _BRANCH_SIGNS[1]
        )  # shape (2 predecessors, states)
        choice = np.argmax(candidates, axis=0)
        metric = candidates[choice, _NEXT]
        choices[step] = choice
    bits = np.zeros(len(pairs), dtype=np.uint8)
    state = 0
    for step in range(len(pairs) - 1, -1, -1):
        bits[step] = state >> (_CONSTRAINT - 2)
        state = int(_PREDECESSORS[choices[step, state], state])
    return bits[:length]


# -- the invisible mark -----------------------------------------------------------------------


def _carrier_basis() -> npt.NDArray[np.float32]:
    """64 × len(COEFFICIENTS): a flattened 8 × 8 block times this gives the carrying DCT
    coefficients (orthonormal DCT-II, the same scaling as JPEG's); its transpose goes back."""
    k = np.arange(BLOCK)[:, None]
    n = np.arange(BLOCK)[None, :]
    dct = np.cos(np.pi * (2 * n + 1) * k / (2 * BLOCK)) * math.sqrt(2 / BLOCK)
    dct[0] /= math.sqrt(2)
    basis = [np.outer(dct[row], dct[column]).reshape(-1) for row, column in COEFFICIENTS]
    return np.stack(basis, axis=1).astype(np.float32)


_BASIS = _carrier_basis()
_STRIPE = 32
"""Block rows handled at a time, so that a large photo never needs float copies of itself."""


@dataclass(frozen=True)
class _Layout:
    """Where each coded bit goes: a keyed random slot → bit map and a keyed dither per slot."""

    coded_index: npt.NDArray[np.int64]
    dither: npt.NDArray[np.float64]


def _layout(key: bytes, record_size: int, block_rows: int, block_columns: int) -> _Layout:
    seed = hmac.new(
        key,
        b"consilium-watermark-layout\x00"
        + struct.pack(">III", record_size, block_rows, block_columns),
        hashlib.sha256,
    ).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    slots = block_rows * block_columns * len(COEFFICIENTS)
    shape = (block_rows, block_columns, len(COEFFICIENTS))
    return _Layout(
        coded_index=(rng.permutation(slots) % _coded_length(record_size)).reshape(shape),
        dither=rng.uniform(0.0, QIM_STEP, slots).reshape(shape),
    )


def _coded_length(record_size: int) -> int:
    return 2 * (8 * record_size + _CONSTRAINT - 1)


def _colour(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A rows × columns × 1 (grey) or × 3 (RGB) view of the colour channels, alpha left out."""
    if pixels.ndim == 2:
        return pixels[..., None]
    return pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]


def _blocks(
    colour: npt.NDArray[np.uint8], first: int, last: int, columns: int
) -> npt.NDArray[np.float32]:
    """Block rows first..last as float32, shaped (block rows, block columns, 64, channels)."""
    region = colour[first * BLOCK : last * BLOCK, : columns * BLOCK]
    shaped = region.reshape(last - first, BLOCK, columns, BLOCK, colour.shape[2])
    return (
        shaped.transpose(0, 2, 1, 3, 4)
        .reshape(last - first, columns, BLOCK**2, -1)
        .astype(np.float32)
    )


def _luminance(blocks: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    if blocks.shape[-1] == 1:
        return blocks[..., 0]
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # JPEG's (BT.601) luma
    return blocks @ weights


def _carried(colour: npt.NDArray[np.uint8], rows: int, columns: int) -> npt.NDArray[np.float64]:
    """The carrying coefficients of every block: (block rows, block columns, coefficients)."""
    carried = np.empty((rows, columns, len(COEFFICIENTS)))
    for first in range(0, rows, _STRIPE):
        last = min(rows, first + _STRIPE)
        carried[first:last] = _luminance(_blocks(colour, first, last, columns)) @ _BASIS
    return carried


def mark_fits(width: int, height: int, mark: Mark) -> bool:
    """Whether an image of this size can carry `mark` (each coded bit at least twice)."""
    record = _encode_record(mark, b"\x00" * KEY_BYTES)
    slots = (height // BLOCK) * (width // BLOCK) * len(COEFFICIENTS)
    return slots >= 2 * _coded_length(len(record))


def embed_mark(image: Image.Image, mark: Mark, key: bytes) -> Image.Image:
    """A copy of `image` carrying `mark` invisibly, under `key`.

    Works on L, RGB, LA and RGBA images (alpha is left alone); other modes are converted to
    RGB(A) or L first. The luminance change is added to every colour channel alike, which
    leaves the chroma as it was. Raises `MarkDoesNotFit` for images too small to carry it.
    """
    _check_key(key)
    image = _workable(image)
    width, height = image.size
    if not mark_fits(width, height, mark):
        raise MarkDoesNotFit(f"a {width}x{height} image is too small to carry the mark")
    rows, columns = height // BLOCK, width // BLOCK
    record = _encode_record(mark, key)
    layout = _layout(key, len(record), rows, columns)
    coded = _convolutional_encode(np.unpackbits(np.frombuffer(record, np.uint8)))
    pixels = np.array(image)  # a writable copy
    colour = _colour(pixels)

    # Move each carrying coefficient to the nearest point of its bit's lattice.
    carried = _carried(colour, rows, columns)
    offset = layout.dither + coded[layout.coded_index] * (QIM_STEP / 2)
    change = np.round((carried - offset) / QIM_STEP) * QIM_STEP + offset - carried
    low = np.empty((rows, columns))
    high = np.empty((rows, columns))
    for first in range(0, rows, _STRIPE):
        last = min(rows, first + _STRIPE)
        changed = _blocks(colour, first, last, columns) + (change[first:last] @ _BASIS.T)[..., None]
        low[first:last] = changed.min(axis=(2, 3))
        high[first:last] = changed.max(axis=(2, 3))
    # Lift (or lower) a block's mean just enough that the pattern stays inside 0..255, so flat
    # black and white areas carry the mark too. The DC term carries no data.
    lift = np.clip(np.zeros_like(low), -low, 255.0 - high)
    spared = _spared_blocks(change, lift)

    for first in range(0, rows, _STRIPE):
        last = min(rows, first + _STRIPE)
        original = _blocks(colour, first, last, columns)
        delta = change[first:last] @ _BASIS.T + lift[first:last, :, None]
        changed = np.where(spared[first:last, :, None, None], original, original + delta[..., None])
        shaped = np.clip(np.round(changed), 0, 255).astype(np.uint8)
        shaped = shaped.reshape(last - first, columns, BLOCK, BLOCK, -1).transpose(0, 2, 1, 3, 4)
        colour[first * BLOCK : last * BLOCK, : columns * BLOCK] = shaped.reshape(
            (last - first) * BLOCK, columns * BLOCK, -1
        )
    return Image.fromarray(pixels, image.mode)


def _spared_blocks(
    change: npt.NDArray[np.float64], lift: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """Blocks left unmarked, so that the whole image keeps a PSNR of `TARGET_PSNR` or more.

    A block costs its pattern's energy plus its lift squared (the pattern has no mean, so the
    two add up). Blocks needing more than `MAX_LIFT` are spared; of the rest, the cheapest are
    marked until the image's mean squared error reaches the budget. The reader recognises a
    spared flat block by its zero coefficients and ignores it.
    """
    cost = (change**2).sum(axis=2) / BLOCK**2 + lift**2
    budget = cost.size * 255.0**2 / 10 ** (TARGET_PSNR / 10)
    cost = np.where(np.abs(lift) > MAX_LIFT, np.inf, cost).reshape(-1)
    order = np.argsort(cost, kind="stable")
    marked = np.zeros(cost.size, dtype=bool)
    marked[order[np.cumsum(cost[order]) <= budget]] = True
    return ~marked.reshape(lift.shape)


def read_mark(image: Image.Image, key: bytes) -> Mark | None:
    """The mark `image` carries under `key`, or None if there is none (or it is unreadable)."""
    _check_key(key)
    image = _workable(image)
    width, height = image.size
    rows, columns = height // BLOCK, width // BLOCK
    slots = rows * columns * len(COEFFICIENTS)
    if slots == 0:
        return None
    carried = _carried(_colour(np.asarray(image)), rows, columns)
    # Blocks the writer spared (flat black or white) say nothing; they must not vote.
    voting = ((carried**2).sum(axis=2) >= BLANK_ENERGY)[..., None]
    for size in RECORD_SIZES:
        coded_bits = _coded_length(size)
        if slots < 2 * coded_bits:
            break
        layout = _layout(key, size, rows, columns)
        # +1 on the bit-0 lattice, -1 on the bit-1 lattice, in between on neither.
        soft = np.cos(2 * np.pi * (carried - layout.dither) / QIM_STEP) * voting
        combined = np.bincount(
            layout.coded_index.reshape(-1), weights=soft.reshape(-1), minlength=coded_bits
        )
        bits = _viterbi_decode(np.asarray(combined, dtype=np.float64), 8 * size)
        mark = _decode_record(np.packbits(bits).tobytes(), key)
        if mark is not None:
            return mark
    return None


def _workable(image: Image.Image) -> Image.Image:
    if image.mode in ("L", "RGB", "LA", "RGBA"):
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale to 8 bits
        values = np.asarray(image, dtype=np.float64)
        top = max(float(values.max(initial=0)), 1.0)
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        return Image.fromarray(np.round(values * scale).astype(np.uint8), "L")
    return image.convert("RGB" if image.mode not in ("1", "F") else "L")


def _check_key(key: bytes) -> None:
    if len(key) < 16:
        raise ValueError("a watermark key must be at least 16 bytes")


# -- the visible overlay ----------------------------------------------------------------------


def draw_overlay(image: Image.Image, mark: Mark) -> Image.Image:
    """A copy of `image` with `mark.describe()` tiled diagonally over it, semi-transparent.

    White text with a dark outline, so it reads on black and on white alike; the lines cover
    the whole image, so no crop of any size loses it.
    """
    image = _workable(image)
    width, height = image.size
    size = max(10, round(min(width, height) / 28))
    font = ImageFont.load_default(size=size)
    text = mark.describe() + "   "
    alpha = round(255 * _OVERLAY_ALPHA)
    # Lines are drawn level on a square canvas that covers the image at any rotation, then the
    # canvas is turned once and cropped: one rotation however many repetitions there are.
    side = math.ceil(math.hypot(width, height))
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    text_width = max(1, math.ceil(draw.textlength(text, font=font)))
    for row, y in enumerate(range(0, side, size * _OVERLAY_LINE_SPACING)):
        for x in range(-(row % 2) * text_width // 2, side, text_width):  # staggered rows
            draw.text(
                (x, y),
                text,
                font=font,
                fill=(255, 255, 255, alpha),
                stroke_width=max(1, size // 14),
                stroke_fill=(0, 0, 0, alpha),
            )
    canvas = canvas.rotate(30, resample=Image.Resampling.BICUBIC)
    left, top = (side - width) // 2, (side - height) // 2
    layer = canvas.crop((left, top, left + width, top + height))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert(image.mode)


# -- bytes in, bytes out ----------------------------------------------------------------------


def watermark(data: bytes, mark: Mark, key: bytes) -> bytes:
    """The image `data` (PNG or JPEG) as served to `mark.viewer`: overlay, then invisible mark.

    PNG stays lossless PNG; JPEG is re-encoded at quality 92. An image too small for the
    invisible mark (see `mark_fits`) gets the overlay alone.
    """
    kind, image = _open(data)
    with image:
        served = draw_overlay(image, mark)
    try:
        served = embed_mark(served, mark, key)
    except MarkDoesNotFit:
        pass
    out = BytesIO()
    if kind is ImageKind.JPEG:
        served.convert("L" if served.mode in ("L", "LA") else "RGB").save(
            out, format="JPEG", quality=92
        )
    else:
        served.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def identify(data: bytes, key: bytes) -> Mark | None:
    """Who a served PNG or JPEG was shown to, or None when it carries no mark under `key`."""
    _kind, image = _open(data)
    with image:
        return read_mark(image, key)


def _open(data: bytes) -> tuple[ImageKind, Image.Image]:
    kind = sniff(data)
    if kind is ImageKind.DICOM:
        raise UnsupportedImage("a DICOM file is not a served image: it carries no watermark")
    try:
        image = Image.open(BytesIO(data), formats=[kind.value.upper()])
        if image.width * image.height > DEFAULT_LIMITS.max_frame_pixels:
            image.close()
            raise ImageTooLarge("the image has too many pixels")
        image.load()
    except ImageTooLarge:
        raise
    except Exception as exc:
        raise UnsupportedImage(f"the {kind.value.upper()} image cannot be decoded") from exc
    return kind, image


def psnr(original: Image.Image, changed: Image.Image) -> float:
    """Peak signal-to-noise ratio between two same-size 8-bit images, in dB."""
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(changed, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
