"""The write-back of a meeting's annotations as a GSPS, without a PACS: the original UIDs a share
remembers (encrypted, never sent to clients), and the presentation state built from the room's
shapes, read back with pydicom."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from imaging.pacs_source import DicomSource, SourceFrame, read_source
from imaging.presentation_state import (
    Authorship,
    GraphicShape,
    NothingToWrite,
    UnsupportedForWriteBack,
    content_label,
    encode,
    header_from_json,
    person_name,
    presentation_states,
)
from imaging.sniff import UnsupportedImage
from imaging.store import ImageStore
from recorder.roomkeys import RoomKeys, open_keyring

NOW = datetime(2026, 12, 7, 9, 30, 5, tzinfo=UTC)
AUTHOR = Authorship(
    "Dr Jane Smith",
    family_name="Smith",
    given_name="Jane",
    institution="St Elsewhere",
    meeting_title="Lung MDT, ward 7",
    series_uid="1.2.826.0.1.3680043.8.498.1",
    sop_instance_uid="1.2.826.0.1.3680043.8.498.2",
    software_version="0.1.0",
    device_serial="node-a",
)


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    assert isinstance(path, str)
    return Path(path).read_bytes()


def header(data: bytes) -> Dataset:
    return dcmread(BytesIO(data), stop_before_pixels=True)


def written(state: Dataset) -> Dataset:
    return dcmread(BytesIO(encode(state)))


def build(source: DicomSource, refs: dict[str, Dataset], shapes: list[GraphicShape]) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # highdicom warns on a badly formed name: none here
        (state,) = presentation_states(source, refs, shapes, AUTHOR, NOW)
        return written(state)


def multiframe(frames: int = 10) -> bytes:
    """CT_small's header as an enhanced (multi-frame) CT instance (the pixels are never read)."""
    ds = header(bundled("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = frames
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [Dataset() for _ in range(frames)]
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ct() -> tuple[DicomSource, dict[str, Dataset]]:
    data = bundled("CT_small.dcm")
    source = read_source(data)
    return source, {source.frames[0].sop_instance_uid: header(data)}


# -- what a share remembers --------------------------------------------------------------------


def test_source_names_the_original_uids_of_every_frame() -> None:
    data = bundled("CT_small.dcm")
    original = header(data)
    source = read_source(data)
    assert (source.study_uid, source.series_uid) == (
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
    )
    assert source.frames == (SourceFrame(original.SOPInstanceUID, original.SOPClassUID, 1),)
    ten = read_source(multiframe(10))
    assert [f.frame_number for f in ten.frames] == list(range(1, 11))
    assert {f.sop_instance_uid for f in ten.frames} == {original.SOPInstanceUID}
    assert ten.frame(10) is None


def test_a_stacked_series_maps_each_frame_to_its_slice() -> None:
    one = DicomSource("1.2", "1.2.3", (SourceFrame("1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", 1),))
    two = DicomSource("1.2", "1.2.3", (SourceFrame("1.2.3.2", "1.2.840.10008.5.1.4.1.1.2", 1),))
    stacked = DicomSource.stacked([one, two])
    assert [f.sop_instance_uid for f in stacked.frames] == ["1.2.3.1", "1.2.3.2"]
    assert DicomSource.from_record(json.loads(json.dumps(stacked.to_record()))) == stacked
    with pytest.raises(ValueError):
        DicomSource.stacked([one, DicomSource("1.2", "1.2.4", two.frames)])


def test_not_dicom_has_no_source() -> None:
    with pytest.raises(UnsupportedImage):
        read_source(b"not a dicom file" * 20)


def test_the_store_keeps_the_source_encrypted_and_never_in_the_wire(tmp_path: Path) -> None:
    keys = RoomKeys(open_keyring(tmp_path))
    store = ImageStore(tmp_path, keys.key_for)
    data = bundled("CT_small.dcm")
    source = read_source(data)
    record = store.share("mdt-1", data, shared_by_participant="p1", source=source)
    upload = store.share("mdt-1", data, shared_by_participant="p1")
    assert record.source == source and upload.source is None
    wire = json.dumps([record.to_wire(), record.announcement()])
    assert source.study_uid not in wire and source.frames[0].sop_instance_uid not in wire
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*.seg"))
    assert source.study_uid.encode() not in on_disk  # encrypted at rest
    reopened = ImageStore(tmp_path, keys.key_for)  # read back from disk
    assert reopened.info("mdt-1", record.image_id).source == source
    assert reopened.info("mdt-1", upload.image_id).source is None


def test_a_source_that_does_not_name_every_frame_is_not_kept(tmp_path: Path) -> None:
    keys = RoomKeys(open_keyring(tmp_path))
    store = ImageStore(tmp_path, keys.key_for)
    source = read_source(multiframe(10))
    record = store.share("mdt-1", bundled("CT_small.dcm"), shared_by_participant="p1",
                         source=source)  # fmt: skip
    assert record.source is None


# -- the presentation state --------------------------------------------------------------------


def test_gsps_references_the_original_instance_and_carries_the_shapes() -> None:
    source, refs = ct()
    original = next(iter(refs.values()))
    shapes = [
        GraphicShape(0, "line", ((10.0, 20.0), (30.5, 40.25))),
        GraphicShape(0, "rectangle", ((5.0, 5.0), (25.0, 15.0))),
        GraphicShape(0, "ellipse", ((60.0, 60.0), (100.0, 80.0)), color="#00ff00"),
        GraphicShape(0, "text", ((50.0, 50.0),), text="Mass, 2 cm"),
        GraphicShape(0, "measure", ((0.0, 0.0), (30.0, 40.0)), length_mm=12.34),
    ]
    state = build(source, refs, shapes)
    assert state.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy PS
    assert state.Modality == "PR"
    assert state.StudyInstanceUID == original.StudyInstanceUID
    assert state.SOPInstanceUID == AUTHOR.sop_instance_uid
    assert state.SeriesInstanceUID == AUTHOR.series_uid != original.SeriesInstanceUID
    assert state.PatientID == original.PatientID and state.PatientName == original.PatientName
    series = state.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == original.SeriesInstanceUID
    image = series.ReferencedImageSequence[0]
    assert image.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert image.ReferencedSOPClassUID == original.SOPClassUID
    by_layer = {a.GraphicLayer: a for a in state.GraphicAnnotationSequence}
    layers = {layer.GraphicLayer: layer for layer in state.GraphicLayerSequence}
    assert {layers[name].GraphicLayerDescription for name in by_layer} == {
        "Drawn in #00ff00",
        "Drawn in #ff0000",
    }
    red = next(
        a for n, a in by_layer.items() if layers[n].GraphicLayerDescription.endswith("ff0000")
    )
    green = next(a for a in by_layer.values() if a is not red)
    for annotation in (red, green):
        ref = annotation.ReferencedImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == original.SOPInstanceUID
    graphics = [
        (g.GraphicType, [float(v) for v in g.GraphicData]) for g in red.GraphicObjectSequence
    ]
    assert ("POLYLINE", [10.0, 20.0, 30.5, 40.25]) in graphics
    assert ("POLYLINE", [5.0, 5.0, 25.0, 5.0, 25.0, 15.0, 5.0, 15.0, 5.0, 5.0]) in graphics
    assert ("POLYLINE", [0.0, 0.0, 30.0, 40.0]) in graphics  # the measurement
    texts = {
        t.UnformattedTextValue: [float(v) for v in t.AnchorPoint] for t in red.TextObjectSequence
    }
    assert texts == {"Mass, 2 cm": [50.0, 50.0], "12.3 mm": [15.0, 20.0]}
    (ellipse,) = green.GraphicObjectSequence
    assert ellipse.GraphicType == "ELLIPSE"
    assert [float(v) for v in ellipse.GraphicData] == [60, 70, 100, 70, 80, 60, 80, 80]
    assert all(t.BoundingBoxAnnotationUnits if "BoundingBoxAnnotationUnits" in t else
               t.AnchorPointAnnotationUnits == "PIXEL" for t in red.TextObjectSequence)  # fmt: skip
    assert all(g.GraphicAnnotationUnits == "PIXEL" for g in red.GraphicObjectSequence)


def test_gsps_names_its_author_and_the_meeting() -> None:
    source, refs = ct()
    state = build(source, refs, [GraphicShape(0, "arrow", ((10.0, 10.0), (60.0, 60.0)))])
    assert str(state.ContentCreatorName) == "Smith^Jane"
    assert state.ContentLabel == "LUNG_MDT_WARD_7"
    assert state.ContentDescription == "MDT annotations: Lung MDT, ward 7, 2026-12-07"
    assert state.InstitutionName == "St Elsewhere"
    assert (state.PresentationCreationDate, state.PresentationCreationTime) == (
        "20261207",
        "093005",
    )
    assert state.Manufacturer == "Consilium"
    (arrow,) = state.GraphicAnnotationSequence[0].GraphicObjectSequence
    data = [float(v) for v in arrow.GraphicData]
    assert data[:4] == [10.0, 10.0, 60.0, 60.0] and data[4:6] != data[8:10]  # shaft, two sides
    assert data[6:8] == [60.0, 60.0]  # back to the tip between the sides


def test_display_name_alone_is_one_component() -> None:
    assert str(person_name(Authorship("Dr Jane Smith"))) == "Dr Jane Smith^"
    assert str(person_name(Authorship("x^y=z", family_name="Wang", given_name="Li"))) == "Wang^Li"
    assert content_label("") == "MDT" and content_label("多学科") == "MDT"


def test_shapes_of_a_multiframe_image_reference_their_frame() -> None:
    data = multiframe(10)
    source = read_source(data)
    refs = {source.frames[0].sop_instance_uid: header(data)}
    state = build(source, refs, [GraphicShape(3, "line", ((1.0, 1.0), (5.0, 5.0)))])
    ref = state.GraphicAnnotationSequence[0].ReferencedImageSequence[0]
    assert ref.ReferencedFrameNumber == 4


def test_a_stacked_series_references_each_slice_drawn_on() -> None:
    data = bundled("CT_small.dcm")
    slices, refs = [], {}
    for n in range(3):
        ds = header(data)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        refs[ds.SOPInstanceUID] = ds
        frame = SourceFrame(ds.SOPInstanceUID, ds.SOPClassUID, 1)
        slices.append(DicomSource(ds.StudyInstanceUID, ds.SeriesInstanceUID, (frame,)))
    source = DicomSource.stacked(slices)
    shapes = [GraphicShape(2, "line", ((1.0, 1.0), (5.0, 5.0))),
              GraphicShape(0, "freehand", ((1.0, 1.0), (2.0, 3.0), (4.0, 2.0)))]  # fmt: skip
    state = build(source, refs, shapes)
    referenced = {
        a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        for a in state.GraphicAnnotationSequence
    }
    assert referenced == {
        slices[0].frames[0].sop_instance_uid,
        slices[2].frames[0].sop_instance_uid,
    }
    assert all("ReferencedFrameNumber" not in a.ReferencedImageSequence[0]
               for a in state.GraphicAnnotationSequence)  # fmt: skip


def test_slices_with_another_rescale_get_a_presentation_state_each() -> None:
    # One GSPS has one Modality LUT: CT slices whose intercept differs cannot share one.
    data = bundled("CT_small.dcm")
    slices, refs = [], {}
    for n, intercept in enumerate((-1024, -1024, -1000)):
        ds = header(data)
        ds.SOPInstanceUID = generate_uid()
        ds.RescaleIntercept = intercept
        ds.WindowCenter, ds.WindowWidth = 40 + n, 400  # a window of its own each: one state
        refs[ds.SOPInstanceUID] = ds
        frame = SourceFrame(ds.SOPInstanceUID, ds.SOPClassUID, 1)
        slices.append(DicomSource(ds.StudyInstanceUID, ds.SeriesInstanceUID, (frame,)))
    source = DicomSource.stacked(slices)
    shapes = [GraphicShape(i, "line", ((1.0, 1.0), (5.0, 5.0))) for i in range(3)]
    extra = iter(["1.2.826.0.1.3680043.8.498.3"])
    states = [written(s) for s in presentation_states(source, refs, shapes, AUTHOR, NOW,
                                                      new_uid=lambda: next(extra))]  # fmt: skip
    assert [s.SOPInstanceUID for s in states] == [AUTHOR.sop_instance_uid,
                                                   "1.2.826.0.1.3680043.8.498.3"]  # fmt: skip
    assert {s.SeriesInstanceUID for s in states} == {AUTHOR.series_uid}
    assert [s.InstanceNumber for s in states] == [1, 2]
    assert [float(s.RescaleIntercept) for s in states] == [-1024.0, -1000.0]
    referenced = [
        {r.ReferencedSOPInstanceUID for r in s.ReferencedSeriesSequence[0].ReferencedImageSequence}
        for s in states
    ]
    uids = [f.sop_instance_uid for f in source.frames]
    assert referenced == [{uids[0], uids[1]}, {uids[2]}]


def test_points_outside_the_image_are_clipped_to_it() -> None:
    source, refs = ct()
    state = build(source, refs, [GraphicShape(0, "line", ((-5.0, 10.0), (500.0, 600.0)))])
    data = [
        float(v) for v in state.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData
    ]
    assert data == [0.0, 10.0, 128.0, 128.0]


def test_nothing_to_write_is_refused() -> None:
    source, refs = ct()
    with pytest.raises(NothingToWrite):
        presentation_states(source, refs, [], AUTHOR, NOW)
    with pytest.raises(NothingToWrite):  # a frame the source does not name
        presentation_states(source, refs, [GraphicShape(4, "line", ((1, 1), (2, 2)))], AUTHOR, NOW)


def test_a_colour_image_is_refused_for_a_grayscale_state() -> None:
    data = bundled("SC_rgb_rle_2frame.dcm")
    source = read_source(data)
    refs = {source.frames[0].sop_instance_uid: header(data)}
    with pytest.raises(UnsupportedForWriteBack):
        presentation_states(source, refs, [GraphicShape(0, "line", ((1, 1), (2, 2)))], AUTHOR, NOW)


def test_header_from_the_pacs_metadata_fills_type_2_attributes() -> None:
    ds = header(bundled("CT_small.dcm"))
    item = ds.to_json_dict()
    del item["00100030"]  # PatientBirthDate
    back = header_from_json(item)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PatientBirthDate == ""
    with pytest.raises(ValueError):
        header_from_json({"00100010": {"vr": "XX", "Value": 3}})


# -- STOW-RS -----------------------------------------------------------------------------------


def test_stow_request_is_a_multipart_related_body_of_the_instances() -> None:
    from imaging.dicomweb import MultipartRelated, multipart_boundary
    from imaging.stow import stow_request

    source, refs = ct()
    (state,) = presentation_states(source, refs, [GraphicShape(0, "line", ((1, 1), (2, 2)))],
                                   AUTHOR, NOW)  # fmt: skip
    first = encode(state)
    second = b"DICM-like" + first
    content_type, body = stow_request([first, second])
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    parts = MultipartRelated(multipart_boundary(content_type), len(body)).feed(body)
    assert parts == [first, second]
    with pytest.raises(ValueError):
        stow_request([b"--x--"], boundary="x")


def test_store_outcome_reads_what_the_pacs_kept_and_refused() -> None:
    from imaging.stow import StoreOutcome

    def sop(uid: str, reason: int | None = None) -> dict[str, object]:
        item: dict[str, object] = {"00081155": {"vr": "UI", "Value": [uid]}}
        if reason is not None:
            item["00081197"] = {"vr": "US", "Value": [reason]}
        return item

    kept = StoreOutcome.from_json({"00081199": {"vr": "SQ", "Value": [sop("1.2.3")]}})
    assert kept.kept(["1.2.3"]) and not kept.kept(["1.2.4"])
    refused = StoreOutcome.from_json([{"00081198": {"vr": "SQ", "Value": [sop("1.2.3", 0xA700)]}}])
    assert refused.failed == (("1.2.3", 0xA700),) and not refused.kept(["1.2.3"])
    assert not StoreOutcome.from_json("<xml/>").kept(["1.2.3"])
