"""The meeting's annotations on a PACS image as a DICOM Grayscale Softcopy Presentation State.

A GSPS (PS3.3 A.33.1) is how a PACS viewer keeps what someone drew on an image without changing
the image: it references the original instances by their UIDs and carries graphic and text
objects in image pixel space, in layers. `presentation_states` builds it, with `highdicom`,
from what the room drew on a PACS-sourced image:

- where: each annotated frame of the shared image maps to its original instance and frame
  (`imaging.pacs_source.DicomSource`, kept encrypted by the store); the referenced instances'
  headers are the PACS's own (WADO-RS metadata, read at write time), so the patient and study
  attributes the GSPS must repeat come from the PACS and go back to it: Consilium never keeps
  them.
- what: the room's shapes (`GraphicShape`, plain values: `imaging` does not know
  `annotations`). Coordinates are image pixels on both sides (x: column, y: row, the origin at
  the top-left corner of the top-left pixel), so they map one to one. Lines, measurements and
  freehand strokes are polylines (an arrow's head drawn as two more segments), rectangles closed
  polylines, ellipses ELLIPSE (major axis, then minor), text a text object at its anchor, and a
  measurement's length a text object at its middle. One graphic layer per colour drawn, with
  that colour as the layer's recommended CIELab display value.
- who and why: the content creator is the person who saves it, by the name the directory gives
  (family^given when known), and the content label and description name the meeting.

Pure: values in, Part 10 bytes out; `now` and the new UIDs are passed in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

import highdicom as hd
import numpy as np
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    TextObject,
)
from highdicom.utils import is_multiframe_image
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM, PersonName

from core.errors import Conflict
from imaging.pacs_source import DicomSource

MANUFACTURER = "Consilium"
"""The Manufacturer of the presentation states written (the software is the device)."""
MODEL = "Consilium MDT"
SERIES_NUMBER = 990
"""Presentation states go in a series of their own; a high number keeps it after the images."""
_ARROW_HEAD = 0.03
"""An arrow's head, as a fraction of the image's smaller side (the viewer draws 14 screen px)."""
_ARROW_ANGLE = 0.45
"""Each side of an arrow's head from its shaft, radians (as `web/js/shapes.js` draws it)."""
_LABEL = re.compile(r"[^A-Z0-9]+")


class NothingToWrite(Conflict):
    """The image has no annotations (on frames the PACS knows) to write back."""

    code = "no_annotations"


class UnsupportedForWriteBack(Conflict):
    """The image cannot carry a grayscale presentation state (a colour image, or the PACS's
    instance no longer matches the shared image's geometry)."""

    code = "pacs_write_unsupported"


@dataclass(frozen=True, slots=True)
class GraphicShape:
    """One shape drawn in the room, as the write-back needs it."""

    frame: int
    """The shared image's frame it is drawn on, from 0."""
    type: str
    """`arrow`, `line`, `ellipse`, `rectangle`, `freehand`, `text` or `measure`."""
    points: tuple[tuple[float, float], ...]
    """Image pixels, (x: column, y: row)."""
    text: str = ""
    """A text shape's text."""
    color: str = "#ff0000"
    """`#rrggbb`."""
    length_mm: float | None = None
    """A measurement's length, when the image has a pixel spacing."""


@dataclass(frozen=True, slots=True)
class Authorship:
    """Who writes the presentation state, for which meeting, and the new object's identity."""

    display_name: str
    """The person's name as the directory shows it."""
    family_name: str = ""
    """Their family name from the directory (OIDC `family_name`), when it gives one."""
    given_name: str = ""
    """Their given name (OIDC `given_name`)."""
    institution: str = ""
    """Their institution (the token's `org`)."""
    meeting_title: str = ""
    """The meeting's title (never patient-identifying), for the label and description."""
    series_uid: str = ""
    """The new presentation state series' UID (empty: made here from `sop_instance_uid`)."""
    sop_instance_uid: str = ""
    """The new presentation state's SOPInstanceUID."""
    software_version: str = "0"
    """Consilium's version."""
    device_serial: str = ""
    """The node that wrote it (`node_id`)."""


def person_name(author: Authorship) -> PersonName:
    """The author as a DICOM person name: `family^given` when the directory gives them, else the
    display name whole as the one component (a name is not split by guesswork)."""

    def clean(part: str) -> str:
        return " ".join(part.replace("^", " ").replace("=", " ").replace("\\", " ").split())[:64]

    family, given = clean(author.family_name), clean(author.given_name)
    if family:
        return PersonName(f"{family}^{given}" if given else family)
    # The trailing caret: one component on purpose, not a family name missing its given name.
    return PersonName(f"{clean(author.display_name) or 'Unknown'}^")


def content_label(title: str) -> str:
    """The GSPS ContentLabel (a DICOM code string, 16 characters): the meeting's title in
    capitals, each run of other characters one underscore; `MDT` when the title leaves nothing."""
    label = _LABEL.sub("_", title.upper()).strip("_")[:16].rstrip("_")
    return label or "MDT"


def _rgb(color: str) -> tuple[int, int, int]:
    value = int(color[1:7], 16) if re.fullmatch(r"#[0-9a-fA-F]{6}", color) else 0xFF0000
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def _clip(points: Sequence[tuple[float, float]], columns: int, rows: int) -> np.ndarray:
    array = np.array(points, dtype=float).reshape(-1, 2)
    array[:, 0] = np.clip(array[:, 0], 0.0, float(columns))
    array[:, 1] = np.clip(array[:, 1], 0.0, float(rows))
    return array


def _ellipse(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    """The four points of a DICOM ELLIPSE (major axis ends, then minor axis ends) for the
    ellipse the viewer draws in the box from (x0, y0) to (x1, y1)."""
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    across = [(cx - rx, cy), (cx + rx, cy)]
    down = [(cx, cy - ry), (cx, cy + ry)]
    return across + down if rx >= ry else down + across


def _arrow(x0: float, y0: float, x1: float, y1: float, head: float) -> list[tuple[float, float]]:
    """The shaft, then both sides of the head, as one polyline (tip, side, tip, side)."""
    angle = math.atan2(y1 - y0, x1 - x0)
    sides = [
        (
            x1 - head * math.cos(angle + s * _ARROW_ANGLE),
            y1 - head * math.sin(angle + s * _ARROW_ANGLE),
        )
        for s in (-1, 1)
    ]
    return [(x0, y0), (x1, y1), sides[0], (x1, y1), sides[1]]


def graphic_objects(
    shape: GraphicShape, columns: int, rows: int
) -> tuple[list[GraphicObject], list[TextObject]]:
    """The GSPS objects of one shape in an image of `columns` x `rows` (points clipped to it)."""
    pixel = AnnotationUnitsValues.PIXEL
    points = shape.points
    if not points:
        return [], []
    (x0, y0), (x1, y1) = points[0], points[1] if len(points) > 1 else points[0]
    if shape.type == "text":
        anchor = _clip([points[0]], columns, rows)[0]
        text = shape.text.strip()[:1024]
        if not text:
            return [], []
        return [], [TextObject(text, pixel, anchor_point=(anchor[0], anchor[1]),
                               anchor_point_visible=False)]  # fmt: skip
    if len(points) == 1 or (shape.type != "freehand" and (x0, y0) == (x1, y1)):
        return [
            GraphicObject(GraphicTypeValues.POINT, _clip([points[0]], columns, rows), pixel)
        ], []
    texts: list[TextObject] = []
    kind = GraphicTypeValues.POLYLINE
    outline: list[tuple[float, float]]
    if shape.type == "arrow":
        outline = _arrow(x0, y0, x1, y1, _ARROW_HEAD * min(columns, rows))
    elif shape.type == "rectangle":
        outline = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    elif shape.type == "ellipse":
        if x0 == x1 or y0 == y1:  # a flat ellipse is the line it collapsed to
            outline = [(x0, y0), (x1, y1)]
        else:
            kind, outline = GraphicTypeValues.ELLIPSE, _ellipse(x0, y0, x1, y1)
    elif shape.type == "freehand":
        outline = list(points)
    else:  # line, measure
        outline = [(x0, y0), (x1, y1)]
        if shape.type == "measure":
            if shape.length_mm is not None:
                label = f"{shape.length_mm:.1f} mm"
            else:
                label = f"{math.hypot(x1 - x0, y1 - y0):.0f} px"
            middle = _clip([((x0 + x1) / 2, (y0 + y1) / 2)], columns, rows)[0]
            texts.append(TextObject(label, pixel, anchor_point=(middle[0], middle[1]),
                                    anchor_point_visible=False))  # fmt: skip
    return [GraphicObject(kind, _clip(outline, columns, rows), pixel)], texts


def presentation_states(
    source: DicomSource,
    referenced: Mapping[str, Dataset],
    shapes: Sequence[GraphicShape],
    author: Authorship,
    now: datetime,
    new_uid: Callable[[], str] = hd.UID,
) -> list[Dataset]:
    """The GSPS of `shapes` drawn on a PACS-sourced image whose frames come from `source`.

    `referenced`: the PACS's header of every instance an annotated frame comes from, by original
    SOPInstanceUID (its patient and study attributes are repeated in the GSPS, as PS3.3 asks).
    Shapes on frames the source does not name are left out; `NothingToWrite` when nothing is
    left, `UnsupportedForWriteBack` for a colour image or a header that does not fit.

    Usually one presentation state. A GSPS carries one Modality LUT for all it references, so
    slices whose rescale differs (CT slices can) get one each per rescale, in the same series:
    the first is `author.sop_instance_uid`, the others' UIDs come from `new_uid`.
    """
    by_place: dict[tuple[str, int, str], list[GraphicShape]] = {}
    for shape in shapes:
        frame = source.frame(shape.frame)
        if frame is None or frame.sop_instance_uid not in referenced:
            continue
        by_place.setdefault((frame.sop_instance_uid, frame.frame_number, shape.color.lower()),
                            []).append(shape)  # fmt: skip
    colours = sorted({colour for _sop, _n, colour in by_place})
    layers = {
        colour: GraphicLayer(f"COLOUR_{index + 1}", index + 1, description=f"Drawn in {colour}",
                             display_color=hd.color.CIELabColor.from_rgb(*_rgb(colour)))
        for index, colour in enumerate(colours)
    }  # fmt: skip
    groups: dict[tuple[str, ...], list[tuple[Dataset, str, GraphicAnnotation]]] = {}
    for (sop, number, colour), placed in by_place.items():
        image = referenced[sop]
        _check_image(image, source)
        annotation = _annotation(image, number, layers[colour], placed)
        if annotation is not None:
            groups.setdefault(_modality_lut(image, sop), []).append((image, colour, annotation))
    if not groups:
        raise NothingToWrite("this image has no annotations to write back to the PACS")
    title = " ".join(author.meeting_title.split())
    when = now.strftime("%Y-%m-%d")
    description = f"MDT annotations: {title}, {when}" if title else f"MDT annotations, {when}"
    series_uid = author.series_uid or new_uid()
    states: list[Dataset] = []
    for number, placed_in_group in enumerate(groups.values(), start=1):
        images = {id(image): image for image, _colour, _annotation in placed_in_group}
        used = sorted({colour for _image, colour, _annotation in placed_in_group})
        uid = author.sop_instance_uid if number == 1 and author.sop_instance_uid else new_uid()
        try:
            state = _gsps(list(images.values()), [a for _i, _c, a in placed_in_group],
                          [layers[c] for c in used], author, series_uid, uid, number, title,
                          description)  # fmt: skip
        except (ValueError, AttributeError) as exc:  # the images disagree (their VOI LUTs) or
            # lack what highdicom needs of them (an enhanced image without its functional groups)
            raise UnsupportedForWriteBack(
                f"the PACS's instances cannot carry a presentation state: {exc}"[:300]
            ) from None
        # highdicom stamps its own clock: the time passed in is the one written.
        date, time = DA(now.strftime("%Y%m%d")), TM(now.strftime("%H%M%S"))
        state.PresentationCreationDate, state.PresentationCreationTime = date, time
        state.ContentDate, state.ContentTime = date, time
        state.SeriesDescription = "MDT annotations (Consilium)"
        states.append(state)
    return states


def _annotation(
    image: Dataset, number: int, layer: GraphicLayer, placed: list[GraphicShape]
) -> GraphicAnnotation | None:
    """The graphic annotation of the shapes on one frame of one instance in one colour."""
    columns, rows = int(image.Columns), int(image.Rows)
    graphics: list[GraphicObject] = []
    texts: list[TextObject] = []
    for shape in placed:
        drawn, written = graphic_objects(shape, columns, rows)
        graphics += drawn
        texts += written
    if not graphics and not texts:
        return None
    # A frame number when the instance's IOD has frames (enhanced CT/MR...), as PS3.3 asks.
    multiframe = is_multiframe_image(image)
    return GraphicAnnotation(
        [image],
        layer,
        referenced_frame_number=number if multiframe else None,
        graphic_objects=graphics or None,
        text_objects=texts or None,
    )


def _modality_lut(image: Dataset, sop: str) -> tuple[str, ...]:
    """What one presentation state's instances must share: their rescale (a multi-frame
    instance goes alone, as highdicom takes its Modality LUT from its functional groups)."""
    if is_multiframe_image(image):
        return ("instance", sop)
    return tuple(str(image.get(k, "")) for k in ("RescaleSlope", "RescaleIntercept", "RescaleType"))


def _gsps(
    images: list[Dataset],
    annotations: list[GraphicAnnotation],
    layers: list[GraphicLayer],
    author: Authorship,
    series_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    title: str,
    description: str,
) -> GrayscaleSoftcopyPresentationState:
    return GrayscaleSoftcopyPresentationState(
        referenced_images=images,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL,
        software_versions=author.software_version,
        device_serial_number=author.device_serial or "consilium",
        content_label=content_label(title),
        content_description=description[:64],
        graphic_annotations=annotations,
        graphic_layers=layers,
        institution_name=author.institution[:64] or None,
        content_creator_name=person_name(author),
    )


def _check_image(image: Dataset, source: DicomSource) -> None:
    if image.get("StudyInstanceUID") != source.study_uid:
        raise UnsupportedForWriteBack("the PACS's instance is no longer in the study shared")
    if int(image.get("SamplesPerPixel") or 1) != 1:
        raise UnsupportedForWriteBack(
            "annotations on colour images cannot be written back as a grayscale presentation state"
        )
    if not image.get("Rows") or not image.get("Columns"):
        raise UnsupportedForWriteBack("the PACS's instance does not say its size")


def encode(state: Dataset) -> bytes:
    """The presentation state as a DICOM Part 10 file (what STOW-RS sends)."""
    out = BytesIO()
    state.save_as(out, enforce_file_format=True)
    return out.getvalue()


def header_from_json(item: dict[str, object]) -> Dataset:
    """An instance's header from its WADO-RS metadata (DICOM JSON, PS3.18 F.2), with the
    patient and study attributes a presentation state must repeat present (empty when the
    PACS had none: they are type 2). Bulk data (pixels) is not in the metadata and not needed.
    `ValueError` when it is not DICOM JSON."""
    try:
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_args: b"")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError("not DICOM JSON") from exc
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):  # fmt: skip
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds
