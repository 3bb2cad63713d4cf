"""Per-viewer watermarks: the invisible mark survives re-encoding and the overlay, names the
right viewer under the right key only, never appears where there is none, and keeps the
image diagnostic (PSNR ≥ 38 dB); `consilium watermark identify` reads it."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from consilium.cli import main
from core.errors import ConfigError
from imaging.deidentify import deidentify
from imaging.sniff import UnsupportedImage
from imaging.watermark import (
    Mark,
    _convolutional_encode,
    _viterbi_decode,
    draw_overlay,
    embed_mark,
    identify,
    load_or_create_watermark_key,
    load_watermark_key,
    mark_fits,
    psnr,
    read_mark,
    watermark,
)

KEY = bytes(range(32))
MARK = Mark("dr-zhang", "mdt-lung-0412", datetime(2024, 5, 1, 10, 32, 7, tzinfo=UTC))


@pytest.fixture(scope="module")
def ct_slice() -> Image.Image:
    """A real 512 × 512 head CT slice, de-identified and rendered with its own window."""
    path = get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False)
    if path is None:
        pytest.skip("the CT test file is not bundled with this pydicom")
    assert isinstance(path, str)
    png = deidentify(Path(path).read_bytes(), uid_secret=b"r" * 32).render_frame(0)
    image = Image.open(BytesIO(png))
    image.load()
    return image


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A photo-like RGB image: smooth shading, edges and sensor-like noise."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:480, 0:640]
    shading = np.stack(
        [150 + 70 * np.sin(x / 60), 110 + 60 * np.cos(y / 45), 120 + 50 * np.sin((x + y) / 80)],
        axis=-1,
    )
    shading[(x - 320) ** 2 + (y - 240) ** 2 < 90**2] = (220, 170, 160)  # a bright disc
    shading[300:380, 60:200] = (30, 40, 35)  # a dark patch
    noisy = shading + rng.normal(0, 6, shading.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(params=["ct_slice", "photo"])
def image(request: pytest.FixtureRequest) -> Image.Image:
    picture: Image.Image = request.getfixturevalue(request.param)
    return picture


def reencoded(image: Image.Image, fmt: str, **options: Any) -> Image.Image:
    out = BytesIO()
    image.save(out, format=fmt, **options)
    again = Image.open(BytesIO(out.getvalue()))
    again.load()
    return again


def test_mark_survives_png_reencoding(image: Image.Image) -> None:
    marked = embed_mark(image, MARK, KEY)
    assert read_mark(reencoded(marked, "PNG", optimize=True), KEY) == MARK


@pytest.mark.parametrize("quality", [75, 90])
def test_mark_survives_jpeg_compression(image: Image.Image, quality: int) -> None:
    marked = embed_mark(image, MARK, KEY)
    assert read_mark(reencoded(marked, "JPEG", quality=quality), KEY) == MARK


def test_mark_survives_the_visible_overlay(image: Image.Image) -> None:
    marked = embed_mark(image, MARK, KEY)
    overlaid = draw_overlay(marked, MARK)
    changed = np.asarray(overlaid).astype(int) != np.asarray(marked).astype(int)
    assert changed.mean() > 0.05  # the overlay is really there
    assert read_mark(overlaid, KEY) == MARK
    assert read_mark(reencoded(overlaid, "JPEG", quality=75), KEY) == MARK


def test_invisible_mark_keeps_the_image_diagnostic(image: Image.Image) -> None:
    marked = embed_mark(image, MARK, KEY)
    assert marked.mode == image.mode and marked.size == image.size
    assert psnr(image, marked) >= 38.0


def test_served_image_carries_overlay_and_mark(ct_slice: Image.Image) -> None:
    png = BytesIO()
    ct_slice.save(png, "PNG")
    served = watermark(png.getvalue(), MARK, KEY)
    assert served.startswith(b"\x89PNG")
    assert identify(served, KEY) == MARK
    with Image.open(BytesIO(served)) as shown:
        assert shown.mode == "L" and shown.size == ct_slice.size


def test_served_jpeg_stays_jpeg(photo: Image.Image) -> None:
    jpeg = BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    served = watermark(jpeg.getvalue(), MARK, KEY)
    assert served.startswith(b"\xff\xd8\xff")
    assert identify(served, KEY) == MARK


def test_wrong_key_finds_nothing(image: Image.Image) -> None:
    marked = embed_mark(image, MARK, KEY)
    assert read_mark(marked, bytes(reversed(KEY))) is None
    assert read_mark(marked, b"\x00" * 32) is None


def test_unmarked_images_never_yield_a_mark(ct_slice: Image.Image, photo: Image.Image) -> None:
    rng = np.random.default_rng(11)
    found = []
    candidates: list[Image.Image] = [ct_slice, photo, draw_overlay(photo, MARK)]
    for i in range(40):
        height, width = rng.integers(96, 400, size=2)
        kind = i % 4
        if kind == 0:  # noise
            pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
        elif kind == 1:  # smooth colour
            y, x = np.mgrid[0:height, 0:width]
            pixels = np.stack([x % 256, y % 256, (x * y) % 256], axis=-1).astype(np.uint8)
        elif kind == 2:  # mostly black, like a scan
            pixels = np.zeros((height, width), np.uint8)
            pixels[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(
                60, 200, (height // 2 - height // 4, width // 2 - width // 4)
            )
        else:  # noisy colour
            pixels = np.clip(rng.normal(128, 50, (height, width, 3)), 0, 255).astype(np.uint8)
        candidates.append(Image.fromarray(pixels))
    for candidate in candidates:
        for version in (candidate, reencoded(candidate, "JPEG", quality=80)):
            if (mark := read_mark(version, KEY)) is not None:
                found.append(mark)
    assert found == []


def test_marks_of_two_viewers_do_not_mix(ct_slice: Image.Image) -> None:
    other = Mark("dr-li", "mdt-lung-0412", MARK.time)
    assert read_mark(embed_mark(ct_slice, other, KEY), KEY) == other
    assert read_mark(embed_mark(ct_slice, MARK, KEY), KEY) == MARK


def test_unicode_ids_round_trip(photo: Image.Image) -> None:
    mark = Mark("张医生", "多学科-肺癌", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert read_mark(reencoded(embed_mark(photo, mark, KEY), "JPEG", quality=80), KEY) == mark


def test_ids_too_long_for_the_mark_are_cut_and_flagged(photo: Image.Image) -> None:
    mark = Mark("v" * 300, "mdt-" + "r" * 60, MARK.time)
    found = read_mark(embed_mark(photo, mark, KEY), KEY)
    assert found is not None and found.truncated
    assert found.room == mark.room  # the room survives whole
    assert mark.viewer.startswith(found.viewer) and len(found.viewer) > 100


def test_image_too_small_for_the_mark_gets_the_overlay_only() -> None:
    tiny = BytesIO()
    Image.new("L", (40, 40), 90).save(tiny, "PNG")
    assert not mark_fits(40, 40, MARK)
    served = watermark(tiny.getvalue(), MARK, KEY)
    assert identify(served, KEY) is None
    with Image.open(BytesIO(served)) as shown:
        assert np.asarray(shown).std() > 0  # the overlay was drawn


def test_identify_refuses_what_is_not_a_served_image() -> None:
    path = get_testdata_file("MR_small.dcm", download=False)
    assert isinstance(path, str)
    with pytest.raises(UnsupportedImage):
        identify(Path(path).read_bytes(), KEY)
    with pytest.raises(UnsupportedImage):
        identify(b"just some text", KEY)


def test_error_correction_repairs_flipped_bits() -> None:
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2, 512).astype(np.uint8)
    coded = _convolutional_encode(bits)
    soft = 1.0 - 2.0 * coded + rng.normal(0, 0.3, coded.size)
    flips = rng.choice(coded.size, coded.size // 20, replace=False)
    soft[flips] = -soft[flips]  # 5% of the coded bits arrive wrong
    assert np.array_equal(_viterbi_decode(soft, bits.size), bits)


# -- the key ----------------------------------------------------------------------------------


def test_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_watermark_key(tmp_path)
    key = load_or_create_watermark_key(tmp_path)
    path = tmp_path / "keys" / "watermark.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_watermark_key(tmp_path) == key == load_watermark_key(tmp_path)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError):
        load_watermark_key(tmp_path)


# -- the command line -------------------------------------------------------------------------


def test_cli_names_the_viewer_of_a_leaked_image(
    tmp_path: Path, ct_slice: Image.Image, capsys: pytest.CaptureFixture[str]
) -> None:
    key = load_or_create_watermark_key(tmp_path / "data")
    png = BytesIO()
    ct_slice.save(png, "PNG")
    leaked = tmp_path / "screenshot.jpg"
    with Image.open(BytesIO(watermark(png.getvalue(), MARK, key))) as served:
        served.save(leaked, "JPEG", quality=85)  # passed around as a JPEG
    args = ["watermark", "identify", str(leaked), "--data-dir", str(tmp_path / "data")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dr-zhang" in out and "mdt-lung-0412" in out and "2024-05-01T10:32:07Z" in out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "found": True,
        "viewer": "dr-zhang",
        "room": "mdt-lung-0412",
        "time": "2024-05-01T10:32:07Z",
        "truncated": False,
    }


def test_cli_exits_1_when_there_is_no_mark(
    tmp_path: Path, photo: Image.Image, capsys: pytest.CaptureFixture[str]
) -> None:
    load_or_create_watermark_key(tmp_path)
    clean = tmp_path / "clean.png"
    photo.save(clean)
    assert main(["watermark", "identify", str(clean), "--data-dir", str(tmp_path)]) == 1
    assert "no watermark" in capsys.readouterr().err
    assert main(["watermark", "identify", str(clean), "--data-dir", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"found": False}


def test_cli_without_a_key_or_with_a_non_image_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["watermark", "identify", str(text), "--data-dir", str(tmp_path)]) == 2
    assert "no watermark key" in capsys.readouterr().err
    assert not (tmp_path / "keys" / "watermark.key").exists()  # identify never makes a key
    load_or_create_watermark_key(tmp_path)
    assert main(["watermark", "identify", str(text), "--data-dir", str(tmp_path)]) == 2
    assert "not a DICOM, PNG or JPEG" in capsys.readouterr().err
