"""De-identification of shared images: the PS3.15 Basic Profile on real and synthetic DICOM,
rendering with the image's own window, and metadata stripping of PNG and JPEG photos."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging.deidentified import DeidentifiedImage
from imaging.deidentify import deidentify, replace_uid
from imaging.profile import BASIC_PROFILE, profile_rule
from imaging.render import render_dicom_frame, voi_lut
from imaging.sniff import (
    BurnedInAnnotation,
    FrameNotFound,
    ImageKind,
    ImageLimits,
    ImageTooLarge,
    UnsupportedImage,
    sniff,
)
from signaling.errors import http_status_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on odd test files

ROOM_SECRET = b"room-secret-0123456789abcdef"
OTHER_ROOM_SECRET = b"another-room-secret-987654321"

# What each Basic Profile action becomes here (see imaging.profile.APPLIED): without each SOP
# class's module tables, the alternative that is conformant for every attribute type.
EXPECTED = {
    "X": "absent",
    "Z": "empty",
    "D": "dummy",
    "U": "uid",
    "Z/D": "dummy",
    "X/Z": "empty",
    "X/D": "dummy",
    "X/Z/D": "dummy",
    "X/Z/U*": "uids inside",
}
KEPT_FOR_THE_IMAGE = [
    "Modality", "PixelSpacing", "ImagerPixelSpacing", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "RescaleSlope", "RescaleIntercept", "Rows", "Columns", "NumberOfFrames",
    "PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PlanarConfiguration", "PixelData", "SOPClassUID",
    "BurnedInAnnotation",
]  # fmt: skip


def bundled(name: str) -> bytes:
    """A file pydicom ships (never downloaded: the tests run offline)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    assert isinstance(path, str)
    return Path(path).read_bytes()


def to_bytes(ds: Dataset, *, part10: bool = True) -> bytes:
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=part10)
    return out.getvalue()


def shared(data: bytes, **kwargs: Any) -> DeidentifiedImage:
    return deidentify(data, uid_secret=ROOM_SECRET, **kwargs)


def walk(ds: Dataset, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], BaseTag]]:
    """Every element's path (tags and item indexes), depth first, in a dataset."""
    for tag in list(ds.keys()):
        yield (*path, tag), tag
        element = ds[tag]
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from walk(item, (*path, tag, index))


def find(ds: Dataset, path: tuple[Any, ...]) -> DataElement | None:
    container: Any = ds
    for step in path[:-1]:
        container = container[step].value if isinstance(step, BaseTag) else container[step]
    return container.get(path[-1]) if path[-1] in container else None


def leaves(element: DataElement) -> Iterator[str]:
    """Every non-empty value inside an element (a sequence's, recursively), as text."""
    if element.VR == "SQ":
        for item in element.value:
            for tag in item.keys():
                yield from leaves(item[tag])
    elif not is_empty(element.value):
        yield str(element.value)


def is_empty(value: Any) -> bool:
    return value is None or len(value) == 0 if not isinstance(value, int | float) else False


def uids(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else list(value or [])
    return [str(v) for v in values if v]


def assert_profile_applied(original: Dataset, result: Dataset) -> set[str]:
    """Check every attribute of the profile present in `original` against `result`; return
    the table rows (tags) that were checked."""
    checked: set[str] = set()
    handled: list[tuple[Any, ...]] = []
    for path, tag in walk(original):
        if any(path[: len(done)] == done for done in handled):
            continue  # inside a sequence already removed, emptied or replaced as a whole
        rule = profile_rule(int(tag))
        if tag.is_private or 0x5000 <= tag.group < 0x5100 or 0x6000 <= tag.group < 0x6020:
            assert find(result, path) is None, f"{path} should be gone"
            handled.append(path)
            if rule is not None:
                checked.add(rule.tag)
            continue
        if rule is None:
            continue
        before, after = find(original, path), find(result, path)
        assert before is not None
        expected = EXPECTED[rule.action]
        label = f"{rule.keyword} {path} ({rule.action})"
        if expected == "absent":
            assert after is None, label
        elif expected == "empty":
            assert after is not None and is_empty(after.value), label
        elif expected == "dummy":
            assert after is not None and not is_empty(after.value), label
            secrets = {v for v in leaves(before) if len(v) > 3 and v != after.value}
            assert not secrets & set(leaves(after)), label
        elif expected == "uid":
            replaced = [replace_uid(v, ROOM_SECRET) for v in uids(before.value)]
            assert after is not None and uids(after.value) == replaced, label
        else:  # "uids inside": kept; its items are walked (and checked) on their own
            assert after is not None and after.VR == "SQ", label
            checked.add(rule.tag)
            continue
        handled.append(path)
        checked.add(rule.tag)
    return checked


# -- the profile table ------------------------------------------------------------------------


def test_profile_table_holds_every_attribute_of_table_e_1_1_once() -> None:
    tags = [rule.tag for rule in BASIC_PROFILE]
    assert len(BASIC_PROFILE) == 656  # the 2026d edition, private attributes aside
    assert len(set(tags)) == len(tags)
    assert {rule.action.value for rule in BASIC_PROFILE} == set(EXPECTED)
    by_keyword = {rule.keyword: rule.action.value for rule in BASIC_PROFILE}
    assert by_keyword["PatientName"] == "Z"
    assert by_keyword["PatientID"] == "Z/D"
    assert by_keyword["PatientBirthDate"] == "Z"
    assert by_keyword["StudyInstanceUID"] == "U"
    assert by_keyword["InstitutionName"] == "X/Z/D"
    assert by_keyword["ReferencedImageSequence"] == "X/Z/U*"
    assert by_keyword["OverlayData"] == "X" and by_keyword["CurveData"] == "X"
    assert by_keyword["GPSLatitude"] == "X"


def test_profile_keeps_what_the_image_needs() -> None:
    from pydicom.datadict import tag_for_keyword

    for keyword in KEPT_FOR_THE_IMAGE:
        tag = tag_for_keyword(keyword)
        assert tag is not None and profile_rule(tag) is None, keyword


def test_repeating_groups_match_every_overlay_and_curve_group() -> None:
    for group in (0x5000, 0x5002, 0x501E):
        rule = profile_rule(group << 16 | 0x3000)
        assert rule is not None and rule.keyword == "CurveData"
    for group in (0x6000, 0x601E):
        assert (rule := profile_rule(group << 16 | 0x3000)) and rule.keyword == "OverlayData"
        assert (rule := profile_rule(group << 16 | 0x4000)) and rule.keyword == "OverlayComments"
    assert profile_rule(0x60000010) is None  # OverlayRows: removed with its group, not by row


# -- sniffing ---------------------------------------------------------------------------------


def test_type_is_sniffed_from_content() -> None:
    png, jpeg = BytesIO(), BytesIO()
    Image.new("L", (4, 4)).save(png, "PNG")
    Image.new("RGB", (4, 4)).save(jpeg, "JPEG")
    assert sniff(png.getvalue()) is ImageKind.PNG
    assert sniff(jpeg.getvalue()) is ImageKind.JPEG
    assert sniff(bundled("CT_small.dcm")) is ImageKind.DICOM


def test_bare_dataset_without_preamble_is_dicom() -> None:
    ds = dcmread(BytesIO(bundled("MR_small.dcm")))
    del ds.file_meta
    ds.preamble = None
    out = BytesIO()
    dcmwrite(out, ds, implicit_vr=True, little_endian=True)
    bare = out.getvalue()
    assert bare[128:132] != b"DICM"
    assert sniff(bare) is ImageKind.DICOM
    result = shared(bare)
    assert result.dataset is not None
    assert result.dataset.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert not result.dataset.PatientName


def test_text_file_named_dcm_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "scan.dcm"
    fake.write_text("Patient: John Doe\nThis is not an image.\n" * 20)
    with pytest.raises(UnsupportedImage) as refused:
        shared(fake.read_bytes())
    assert http_status_of(refused.value) == 415
    assert refused.value.to_json()["error"] == "unsupported_image"


@pytest.mark.parametrize(
    "name",
    [
        "rtplan.dcm",  # no pixel data
        "image_dfl.dcm",  # deflated: unbounded inflation
        "MR_truncated.dcm",  # pixel data cut short
        "ExplVR_BigEndNoMeta.dcm",  # big-endian bare dataset
    ],
)
def test_dicom_we_cannot_share_is_refused_with_a_typed_error(name: str) -> None:
    with pytest.raises(UnsupportedImage):
        shared(bundled(name))


def test_bounds_are_checked_before_decoding() -> None:
    data = bundled("rtdose.dcm")
    with pytest.raises(ImageTooLarge):
        shared(data, limits=ImageLimits(max_frames=10))
    with pytest.raises(ImageTooLarge):
        shared(bundled("MR_small.dcm"), limits=ImageLimits(max_frame_pixels=64 * 63))
    with pytest.raises(ImageTooLarge) as too_big:
        shared(data, limits=ImageLimits(max_bytes=len(data) - 1))
    assert http_status_of(too_big.value) == 413


# -- the Basic Profile on real files ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "examples_overlay.dcm",
        "examples_ybr_color.dcm",
        "rtdose.dcm",
        "SC_rgb_rle_2frame.dcm",
        "J2K_pixelrep_mismatch.dcm",
        "liver_1frame.dcm",
        "JPEGLSNearLossless_08.dcm",  # JPEG-LS, decoded by pyjpegls (highdicom's dependency)
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_every_profile_attribute_in_a_real_file_gets_its_action(name: str) -> None:
    data = bundled(name)
    original = dcmread(BytesIO(data))
    result = shared(data)
    assert result.dataset is not None
    assert assert_profile_applied(original, result.dataset)
    assert result.dataset.PatientIdentityRemoved == "YES"
    code = result.dataset.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert "Basic Profile" in result.dataset.DeidentificationMethod
    written = dcmread(BytesIO(result.dicom_bytes()))  # and it is still a valid Part 10 file
    assert written.SOPInstanceUID == written.file_meta.MediaStorageSOPInstanceUID


def test_private_attributes_are_removed_and_listed() -> None:
    original = dcmread(BytesIO(bundled("CT_small.dcm")))
    private = [path for path, tag in walk(original) if tag.is_private]
    assert len(private) > 100
    result = shared(bundled("CT_small.dcm"))
    assert result.dataset is not None
    assert not [path for path, tag in walk(result.dataset) if tag.is_private]
    assert sum(1 for r in result.removed if r.name == "Private") >= len(private) - 10


def test_overlay_groups_are_removed_whole() -> None:
    original = dcmread(BytesIO(bundled("examples_overlay.dcm")))
    assert any(tag.group == 0x6000 for tag in original.keys())
    result = shared(bundled("examples_overlay.dcm"))
    assert result.dataset is not None
    assert not any(0x6000 <= tag.group < 0x6020 for tag in result.dataset.keys())


def test_what_was_removed_names_tags_never_values() -> None:
    data = bundled("CT_small.dcm")
    original = dcmread(BytesIO(data))
    values = {str(original.PatientName), str(original.PatientID), original.StudyInstanceUID}
    result = shared(data)
    listed = {(r.where, r.name) for r in result.removed}
    assert ("(0010,0010)", "PatientName") in listed
    assert ("(0020,000D)", "StudyInstanceUID") in listed
    text = repr(result.removed)
    assert not any(value and value in text for value in values)


def test_uids_are_replaced_consistently_across_the_files_of_a_study() -> None:
    first = dcmread(BytesIO(bundled("CT_small.dcm")))
    second = dcmread(BytesIO(bundled("CT_small.dcm")))
    second.SOPInstanceUID = first.SOPInstanceUID + ".2"
    second.InstanceNumber = 2
    reference = Dataset()
    reference.ReferencedSOPClassUID = first.SOPClassUID
    reference.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([reference])
    a = shared(to_bytes(first)).dataset
    b = shared(to_bytes(second)).dataset
    assert a is not None and b is not None
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert a[keyword].value == b[keyword].value != first[keyword].value
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == first.SOPClassUID
    elsewhere = deidentify(to_bytes(first), uid_secret=OTHER_ROOM_SECRET).dataset
    assert elsewhere is not None and elsewhere.StudyInstanceUID != a.StudyInstanceUID
    for uid in (a.StudyInstanceUID, a.SOPInstanceUID, a.file_meta.MediaStorageSOPInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid


def test_pixel_spacing_window_and_modality_are_kept() -> None:
    data = bundled("MR_small.dcm")
    original = dcmread(BytesIO(data))
    result = shared(data)
    ds = result.dataset
    assert ds is not None
    for keyword in KEPT_FOR_THE_IMAGE:
        if keyword in original:
            assert ds[keyword].value == original[keyword].value, keyword
    assert result.pixel_spacing is not None
    assert (result.pixel_spacing.row_mm, result.pixel_spacing.column_mm) == (0.3125, 0.3125)
    assert result.pixel_spacing.source == "PixelSpacing"
    assert (result.rows, result.columns, result.frame_count) == (64, 64, 1)


def test_imager_pixel_spacing_is_corrected_for_magnification() -> None:
    ds = dcmread(BytesIO(bundled("MR_small.dcm")))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.3]
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    spacing = shared(to_bytes(ds)).pixel_spacing
    assert spacing is not None and spacing.source == "ImagerPixelSpacing"
    assert spacing.row_mm == pytest.approx(0.16) and spacing.column_mm == pytest.approx(0.24)


# -- the Basic Profile on a dataset carrying every attribute of the table ---------------------

SECRET = "SECRET"


def _vr(rule_tag: int, keyword: str) -> str:
    try:
        return dictionary_VR(rule_tag).split(" or ")[0]
    except KeyError:  # newer than pydicom's dictionary
        return "SQ" if keyword.endswith("Sequence") else "DT" if "DateTime" in keyword else "LO"


def _secret_value(vr: str, number: int) -> Any:
    nested = Dataset()
    nested.PatientName = "SECRET^NESTED"
    nested.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.999.9{number}"
    return {
        "AE": "SECRETAE", "AS": "042Y", "CS": SECRET, "DA": "20240102", "DT": "20240102030405",
        "TM": "030405", "DS": "42.5", "IS": "42", "LO": SECRET, "LT": SECRET, "PN": "SECRET^PAT",
        "SH": SECRET, "ST": SECRET, "UC": SECRET, "UT": SECRET, "UR": "http://secret.example/",
        "UI": f"1.2.826.0.1.3680043.10.999.{number}", "AT": 0x00100010, "FL": 42.0, "FD": 42.0,
        "SL": 42, "SS": 42, "SV": 42, "UL": 42, "US": 42, "UV": 42, "SQ": Sequence([nested]),
    }.get(vr, b"SECRET!!")  # fmt: skip


def dataset_with_every_profile_attribute() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for number, rule in enumerate(BASIC_PROFILE):
        tag = int(rule.tag.replace("x", "0"), 16)
        if rule.tag.startswith("50"):  # the curve row stands for every element of 50xx
            tag = 0x50003000
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command and file meta groups: never part of a stored dataset's body
        vr = _vr(tag, rule.keyword)
        ds.add(DataElement(tag, vr, _secret_value(vr, number)))
    ds.add(DataElement(0x60000010, "US", 8))  # OverlayRows: the rest of an overlay group
    ds.add(DataElement(0x00091010, "LO", SECRET))  # and a private attribute
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.10.999.1")
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    return ds


def test_every_attribute_of_the_profile_gets_its_action() -> None:
    original = dataset_with_every_profile_attribute()
    data = to_bytes(original)
    result = shared(data)
    assert result.dataset is not None
    reread = dcmread(BytesIO(data))
    checked = assert_profile_applied(reread, result.dataset)
    outside_a_dataset_body = {"00001000", "00001001", "00020003"}
    assert checked == {rule.tag for rule in BASIC_PROFILE} - outside_a_dataset_body
    assert result.dataset.file_meta.MediaStorageSOPInstanceUID == result.dataset.SOPInstanceUID
    written = result.dicom_bytes()
    assert SECRET.encode() not in written
    assert b"secret" not in written and b"20240102" not in written
    assert b"1.2.826.0.1.3680043.10.999" not in written
    listed = {r.name for r in result.removed}
    assert {rule.keyword for rule in BASIC_PROFILE if "x" not in rule.tag} - listed <= {
        "AffectedSOPInstanceUID", "RequestedSOPInstanceUID", "MediaStorageSOPInstanceUID"
    }  # fmt: skip


# -- burned-in annotation ---------------------------------------------------------------------


def test_burned_in_annotation_is_refused_unless_confirmed() -> None:
    ds = dcmread(BytesIO(bundled("MR_small.dcm")))
    ds.BurnedInAnnotation = "YES"
    data = to_bytes(ds)
    with pytest.raises(BurnedInAnnotation) as refused:
        shared(data)
    assert http_status_of(refused.value) == 422
    assert refused.value.to_json()["error"] == "burned_in_annotation"
    confirmed = shared(data, confirm_burned_in=True)
    assert confirmed.burned_in_confirmed
    assert not shared(bundled("MR_small.dcm")).burned_in_confirmed


# -- rendering --------------------------------------------------------------------------------


def decoded(png: bytes) -> np.ndarray[Any, Any]:
    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def test_frame_renders_losslessly_with_the_images_window() -> None:
    data = bundled("MR_small.dcm")
    original = dcmread(BytesIO(data))
    result = shared(data)
    assert result.media_type == "image/png"
    shown = decoded(result.render_frame(0))
    center, width = float(original.WindowCenter), float(original.WindowWidth)
    slope, intercept = original.get("RescaleSlope", 1), original.get("RescaleIntercept", 0)
    values = pixel_array(original).astype(float) * float(slope) + float(intercept)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    assert (shown[values <= low] == 0).all() and (shown[values > high] == 255).all()
    expected = np.round(np.clip(((values - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255))
    assert np.array_equal(shown, expected.astype(np.uint8))


def test_jpeg_ls_image_renders_from_its_decoded_pixels() -> None:
    # PACSes store CT and MR as JPEG-LS: with a decoder installed (pyjpegls) it is shared like
    # any other image, every pixel kept in order (brighter stays brighter), nothing made up.
    data = bundled("JPEGLSNearLossless_08.dcm")
    original = dcmread(BytesIO(data))
    assert original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.81"
    result = shared(data)
    assert result.media_type == "image/png"
    shown = decoded(result.render_frame(0)).astype(int)
    values = pixel_array(original).astype(int)
    assert shown.shape == values.shape == (original.Rows, original.Columns)
    assert shown.min() == 0 and shown.max() == 255  # no window: its own range
    order = np.argsort(values, axis=None, kind="stable")
    assert (np.diff(shown.ravel()[order]) >= 0).all()


def test_frame_without_a_window_uses_its_range() -> None:
    result = shared(bundled("CT_small.dcm"))
    assert result.dataset is not None and "WindowCenter" not in result.dataset
    shown = decoded(result.render_frame(0))
    assert shown.min() == 0 and shown.max() == 255


def test_rescale_is_applied_before_the_window() -> None:
    ds = dcmread(BytesIO(bundled("MR_small.dcm")))
    ds.VOILUTFunction = "LINEAR_EXACT"  # scales exactly with the values
    plain = render_dicom_frame(ds, 0)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter = float(ds.WindowCenter) * 2 - 100
    ds.WindowWidth = float(ds.WindowWidth) * 2
    assert np.abs(render_dicom_frame(ds, 0).astype(int) - plain.astype(int)).max() <= 1


def test_monochrome1_is_inverted() -> None:
    ds = dcmread(BytesIO(bundled("MR_small.dcm")))
    normal = render_dicom_frame(ds, 0)
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(render_dicom_frame(ds, 0), 255 - normal)


def test_voi_lut_functions() -> None:
    x = np.array([-1000.0, -160.0, -159.0, 40.0, 238.0, 240.0, 1000.0])
    linear = voi_lut(x, 40.0, 400.0)  # 0 up to c - 0.5 - (w - 1) / 2, 255 above c - 0.5 + ...
    assert linear[0] == linear[1] == 0 and linear[-2] == linear[-1] == 255
    assert 0 < linear[2] < linear[3] < linear[4] < 255
    exact = voi_lut(np.array([-160.0, 40.0, 240.0]), 40.0, 400.0, "LINEAR_EXACT")
    assert list(exact) == [0.0, 127.5, 255.0]
    sigmoid = voi_lut(np.array([40.0]), 40.0, 400.0, "SIGMOID")
    assert sigmoid[0] == pytest.approx(127.5)
    assert list(voi_lut(np.array([0.0, 1.0]), 1.0, 1.0)) == [0.0, 255.0]


def test_each_frame_of_a_multiframe_image_is_addressable() -> None:
    data = bundled("rtdose.dcm")
    original = dcmread(BytesIO(data))
    result = shared(data)
    assert result.frame_count == 15 and result.frames == range(15)
    frames = [decoded(result.render_frame(i)) for i in result.frames]
    assert len({f.tobytes() for f in frames}) > 1
    for i in result.frames:  # no window: each frame is scaled to its own range
        raw = pixel_array(original, index=i).astype(float)
        low, high = raw.min(), raw.max()
        expected = np.zeros_like(raw) if high == low else (raw - low) * (255 / (high - low))
        assert np.array_equal(frames[i], np.round(expected).astype(np.uint8))
    with pytest.raises(FrameNotFound) as missing:
        result.render_frame(15)
    assert http_status_of(missing.value) == 404


def test_colour_is_passed_through() -> None:
    data = bundled("SC_rgb_rle_2frame.dcm")
    original = dcmread(BytesIO(data))
    result = shared(data)
    assert result.frame_count == 2
    for i in result.frames:
        shown = decoded(result.render_frame(i))
        assert shown.shape == (100, 100, 3)
        assert np.array_equal(shown, pixel_array(original, index=i))


def test_palette_colour_renders_as_rgb() -> None:
    shown = decoded(shared(bundled("examples_palette.dcm")).render_frame(0))
    assert shown.ndim == 3 and shown.shape[2] == 3 and shown.std() > 0


# -- photos -----------------------------------------------------------------------------------

GPS_IFD = 0x8825


def photo_pixels() -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:60, 0:80]
    base = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1) + rng.integers(0, 20, (60, 80, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def exif_with_gps(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0112] = orientation
    exif[GPS_IFD] = {1: "N", 2: (31.0, 14.0, 3.0), 3: "E", 4: (121.0, 28.0, 9.0)}
    return exif


def chunk_types(png: bytes) -> list[bytes]:
    types, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        types.append(png[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def jpeg_markers(jpeg: bytes) -> list[int]:
    markers, offset = [], 2
    while offset < len(jpeg) and jpeg[offset] == 0xFF:
        marker = jpeg[offset + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        (length,) = struct.unpack(">H", jpeg[offset + 2 : offset + 4])
        offset += 2 + length
    return markers


def test_png_loses_exif_gps_and_text_but_not_a_pixel() -> None:
    pixels = photo_pixels()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "Patient John Doe, MRN 12345")
    info.add_itxt("Author", "Dr. Who")
    info.add_text("Description", "ward 3", zip=True)
    out = BytesIO()
    Image.fromarray(pixels).save(
        out, "PNG", pnginfo=info, exif=exif_with_gps(), icc_profile=b"\x00" * 128
    )
    assert {b"tEXt", b"iTXt", b"zTXt", b"eXIf"} <= set(chunk_types(out.getvalue()))
    result = shared(out.getvalue())
    assert result.kind is ImageKind.PNG and result.dataset is None
    clean = result.render_frame(0)
    types = set(chunk_types(clean))
    assert not types & {b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"tIME"}
    assert b"iCCP" in types  # a colour profile identifies no-one
    assert b"John" not in clean and b"12345" not in clean
    assert np.array_equal(decoded(clean), pixels)
    names = {r.name for r in result.removed}
    assert {"Exif", "GPSInfo", "Comment", "Author", "Description"} <= names
    assert "John" not in repr(result.removed)


@pytest.mark.parametrize(
    ("orientation", "turn", "loss"),
    # Orientation 6: the camera was turned; the viewer must rotate 90° clockwise. Turned
    # pixels meet the chroma subsampling afresh, so they change a little more.
    [(1, 0, 0.5), (6, -1, 2.5)],
)
def test_jpeg_loses_exif_and_comment_and_is_turned_upright(
    orientation: int, turn: int, loss: float
) -> None:
    pixels = photo_pixels()
    out = BytesIO()
    Image.fromarray(pixels).save(
        out,
        "JPEG",
        quality=95,
        exif=exif_with_gps(orientation),
        comment=b"Patient John Doe",
    )
    assert 0xE1 in jpeg_markers(out.getvalue()) and 0xFE in jpeg_markers(out.getvalue())
    result = shared(out.getvalue())
    assert result.kind is ImageKind.JPEG and result.media_type == "image/jpeg"
    clean = result.render_frame(0)
    markers = jpeg_markers(clean)
    assert 0xE1 not in markers and 0xFE not in markers  # no APP1 (EXIF, XMP), no COM
    assert b"John" not in clean and b"PhoneMaker" not in clean
    with Image.open(BytesIO(out.getvalue())) as uploaded:
        expected = np.rot90(np.asarray(uploaded), k=turn).astype(int)
    with Image.open(BytesIO(clean)) as upright:
        assert not upright.getexif()
        assert (result.rows, result.columns) == expected.shape[:2] == upright.size[::-1]
        # Re-encoded with the upload's own quantisation tables: little generation loss.
        assert np.abs(np.asarray(upright).astype(int) - expected).mean() < loss
    assert {"Exif", "GPSInfo", "comment"} <= {r.name for r in result.removed}


def test_photo_pixel_bomb_is_refused_before_decoding() -> None:
    # A PNG header claiming 100 000 × 100 000 pixels, and hardly any data behind it.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
    bomb += chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge):
        shared(bomb)
    small = BytesIO()
    Image.new("L", (100, 100)).save(small, "PNG")
    with pytest.raises(ImageTooLarge):
        shared(small.getvalue(), limits=ImageLimits(max_frame_pixels=9_999))


def test_corrupt_photo_is_refused() -> None:
    with pytest.raises(UnsupportedImage):
        shared(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(UnsupportedImage):
        shared(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
