"""De-identification of shared images: DICOM by the PS3.15 Basic Profile, photos by stripping.

A shared image arrives as bytes. `sniff` decides what it is from its content (never its name);
`deidentify` then returns a `DeidentifiedImage` that holds nothing identifying the patient:

- DICOM is parsed with pydicom (size and frame bounds first) and de-identified by the Basic
  Application Level Confidentiality Profile of DICOM PS3.15 Annex E: every attribute of Table
  E.1-1 gets its action (`BASIC_PROFILE`, one table, below), private attributes, curves and
  overlays go, instance UIDs are replaced by keyed hashes that stay consistent within a room,
  and the pixel module, modality, pixel spacing and window survive. Each frame renders to a
  lossless PNG with the image's own window/level (`DeidentifiedImage.render_frame`). An image
  that says identifiers are burned into its pixels is refused unless the uploader confirms.
- PNG and JPEG lose their metadata (EXIF with GPS, XMP, text chunks, comments); the pixels are
  turned upright by the EXIF orientation first, since that tag goes with the rest.

What was removed or replaced is listed by tag and name only, never by value, for the audit log.
Everything here is a pure function over bytes and datasets: no I/O, no event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, JpegImagePlugin
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from core.errors import BadMessage, NotFound, PayloadTooLarge
from imaging.burnedin import (
    NO_HEADER_FINDINGS,
    HeaderFindings,
    carries_burned_in_text,
    header_findings,
)

# -- errors -----------------------------------------------------------------------------------


class UnsupportedImage(BadMessage):
    """Not a DICOM, PNG or JPEG image we can read (judged by content), or not decodable."""

    code = "unsupported_image"
    http_status = 415


class BurnedInAnnotation(BadMessage):
    """The DICOM declares identifiers burned into its pixels; the uploader has to confirm."""

    code = "burned_in_annotation"
    http_status = 422


class ImageTooLarge(PayloadTooLarge):
    """The image exceeds a bound of `ImageLimits` (bytes, pixels per frame, frames)."""

    code = "image_too_large"


class FrameNotFound(NotFound):
    """A frame index outside the image's frames."""

    code = "frame_not_found"


# -- bounds and kinds -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Bounds on one shared image, checked before anything is decoded."""

    max_bytes: int = 256 * 1024 * 1024
    """Size of the uploaded file."""
    max_frame_pixels: int = 64 * 1024 * 1024
    """Rows × columns of one frame (a decompression-bomb guard for photos as well)."""
    max_frames: int = 2000
    """Frames of a multi-frame DICOM (a whole CT series fits)."""
    max_decoded_bytes: int = 512 * 1024 * 1024
    """Decoded pixel data of the whole image (rows × columns × frames × samples × bits), read
    from the header before any pixel is decoded: a small compressed file may declare gigabytes."""
    max_frame_bytes: int = 192 * 1024 * 1024
    """Decoded pixel data of one frame, the unit rendering works on (it holds a few copies):
    a 48-megapixel photo fits, a 64-megapixel RGBA one does not."""


DEFAULT_LIMITS = ImageLimits()
"""The bounds used when the caller gives none."""


class ImageKind(StrEnum):
    """What an uploaded file is, by content."""

    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_DICM_OFFSET = 128
# Two-letter VRs whose explicit-VR header has a 4-byte length after 2 reserved bytes.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
     b"SH", b"SL", b"SS", b"ST", b"SV", b"TM", b"UI", b"UL", b"US", b"UV"}
)  # fmt: skip


def sniff(data: bytes) -> ImageKind:
    """What `data` is, from its bytes alone; `UnsupportedImage` for anything else.

    DICOM is either a Part 10 file ("DICM" after the 128-byte preamble) or a bare little-endian
    dataset whose first elements parse as group 0008 elements (older modalities and some PACS
    exports write those).
    """
    if data.startswith(_PNG_SIGNATURE):
        return ImageKind.PNG
    if data.startswith(_JPEG_SIGNATURE):
        return ImageKind.JPEG
    if data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM":
        return ImageKind.DICOM
    if _looks_like_bare_dataset(data):
        return ImageKind.DICOM
    raise UnsupportedImage("not a DICOM, PNG or JPEG image")


def _looks_like_bare_dataset(data: bytes, elements: int = 4) -> bool:
    """Whether the first elements parse as an implicit- or explicit-VR little-endian dataset.

    Every composite image IOD starts with group 0008 (character set, image type, SOP class), so
    the first tag must be in it, tags must ascend and each length must fit inside the data.
    """
    offset, previous = 0, -1
    for count in range(elements):
        if offset == len(data) and count > 0:
            return True
        if offset + 8 > len(data):
            return False
        group, element = struct.unpack_from("<HH", data, offset)
        tag = group << 16 | element
        if tag <= previous or (count == 0 and group != 0x0008):
            return False
        vr = data[offset + 4 : offset + 6]
        if vr in _SHORT_VRS:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        elif vr in _LONG_VRS:
            if offset + 12 > len(data):
                return False
            (length,) = struct.unpack_from("<L", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<L", data, offset + 4)
            offset += 8
        if length == 0xFFFFFFFF:  # an undefined-length sequence: the headers so far were sound
            return count > 0
        offset += length
        if offset > len(data):
            return False
        previous = tag
    return True


# -- the Basic Profile ------------------------------------------------------------------------


class Action(StrEnum):
    """The action codes of PS3.15 Table E.1-1a."""

    D = "D"
    """Replace with a non-zero length dummy value consistent with the VR."""
    Z = "Z"
    """Replace with a zero length value (or a dummy value consistent with the VR)."""
    X = "X"
    """Remove."""
    K = "K"
    """Keep (unchanged for non-sequence attributes, cleaned for sequences)."""
    C = "C"
    """Clean: replace with values of similar meaning known not to identify."""
    U = "U"
    """Replace with a non-zero length UID that is internally consistent within the set."""
    Z_D = "Z/D"
    """Z unless D is required to keep the IOD conformant (Type 2 versus Type 1)."""
    X_Z = "X/Z"
    """X unless Z is required to keep the IOD conformant (Type 3 versus Type 2)."""
    X_D = "X/D"
    """X unless D is required to keep the IOD conformant (Type 3 versus Type 1)."""
    X_Z_D = "X/Z/D"
    """X unless Z or D is required to keep the IOD conformant."""
    X_Z_U = "X/Z/U*"
    """X unless Z or replacing the contained instance UIDs (U) is required for conformance."""


# Without each SOP class's module tables we cannot tell a Type 1 from a Type 3 attribute, so a
# combined action takes the alternative that is conformant for every type: D over Z over X.
# None of them keeps an original value. X/Z/U* keeps the sequence and de-identifies its items,
# which replaces the instance UIDs inside (they are U attributes of this same table).
_APPLIED: Mapping[Action, Action] = {
    Action.D: Action.D,
    Action.Z: Action.Z,
    Action.X: Action.X,
    Action.U: Action.U,
    Action.Z_D: Action.D,
    Action.X_Z: Action.Z,
    Action.X_D: Action.D,
    Action.X_Z_D: Action.D,
    Action.X_Z_U: Action.U,
    # K and C appear only in the profile's options, which we do not offer; should a row ever
    # use them, a dummy value is the safe reading.
    Action.K: Action.D,
    Action.C: Action.D,
}


@dataclass(frozen=True, slots=True)
class ProfileRule:
    """One row of Table E.1-1: which attribute, what the Basic Profile does to it."""

    tag: str
    """Tag as 8 hex digits; `x` stands for any digit in repeating groups (curves, overlays)."""
    action: Action
    """The Basic Profile's action code."""
    keyword: str
    """The attribute's DICOM keyword, for people and the audit log."""

    def matches(self, tag: int) -> bool:
        """Whether `tag` is this row's attribute (any group of a repeating one)."""
        mask, value = _pattern(self.tag)
        return tag & mask == value


@cache
def _pattern(tag: str) -> tuple[int, int]:
    mask = int("".join("0" if c == "x" else "f" for c in tag), 16)
    return mask, int(tag.replace("x", "0"), 16)


BASIC_PROFILE_EDITION = "2026d"
"""The edition of DICOM PS3.15 whose Table E.1-1 `BASIC_PROFILE` transcribes."""

# DICOM PS3.15 Table E.1-1, column "Basic Prof.", one row per attribute: tag, action, keyword.
# Ordered by tag. "Private Attributes" (X) is the one row not listed: every private tag goes.
# Transcribed from the 2026d edition and checked row by row against two independent
# transcriptions (idiscore's, scraped 2025-06, and dicom-anonymizer's of 2024b): the actions
# agree wherever they overlap. Ten rows are newer than both (SecondaryCaptureDeviceID,
# HardcopyCreationDeviceID, MultiplexGroupLabel, ChannelLabel, ChannelDerivationDescription,
# AcquisitionContextDescription, WaveformAnnotationSequence, DisplayURI, UnformattedTextValue,
# DoseCalculationModelName). Keywords pydicom does not know yet are the standard's names.
_TABLE_E_1_1 = """
00001000 X      AffectedSOPInstanceUID
00001001 U      RequestedSOPInstanceUID
00020003 U      MediaStorageSOPInstanceUID
00041511 U      ReferencedSOPInstanceUIDInFile
00080012 X/D    InstanceCreationDate
00080013 X/Z/D  InstanceCreationTime
00080014 U      InstanceCreatorUID
00080015 X      InstanceCoercionDateTime
00080017 U      AcquisitionUID
00080018 U      SOPInstanceUID
00080019 U      PyramidUID
00080020 Z      StudyDate
00080021 X/D    SeriesDate
00080022 X/Z    AcquisitionDate
00080023 Z/D    ContentDate
00080024 X      OverlayDate
00080025 X      CurveDate
0008002A X/Z/D  AcquisitionDateTime
00080030 Z      StudyTime
00080031 X/D    SeriesTime
00080032 X/Z    AcquisitionTime
00080033 Z/D    ContentTime
00080034 X      OverlayTime
00080035 X      CurveTime
00080050 Z      AccessionNumber
00080054 X      RetrieveAETitle
00080055 X      StationAETitle
00080058 U      FailedSOPInstanceUIDList
00080080 X/Z/D  InstitutionName
00080081 X      InstitutionAddress
00080082 X/Z/D  InstitutionCodeSequence
00080090 Z      ReferringPhysicianName
00080092 X      ReferringPhysicianAddress
00080094 X      ReferringPhysicianTelephoneNumbers
00080096 X      ReferringPhysicianIdentificationSequence
0008009C Z      ConsultingPhysicianName
0008009D X      ConsultingPhysicianIdentificationSequence
00080106 D      ContextGroupVersion
00080107 D      ContextGroupLocalVersion
00080201 X      TimezoneOffsetFromUTC
00081000 X      NetworkID
00081010 X/Z/D  StationName
00081030 X      StudyDescription
0008103E X      SeriesDescription
00081040 X      InstitutionalDepartmentName
00081041 X      InstitutionalDepartmentTypeCodeSequence
00081048 X      PhysiciansOfRecord
00081049 X      PhysiciansOfRecordIdentificationSequence
00081050 X      PerformingPhysicianName
00081052 X      PerformingPhysicianIdentificationSequence
00081060 X      NameOfPhysiciansReadingStudy
00081062 X      PhysiciansReadingStudyIdentificationSequence
00081070 X/Z/D  OperatorsName
00081072 X/D    OperatorIdentificationSequence
00081080 X      AdmittingDiagnosesDescription
00081084 X      AdmittingDiagnosesCodeSequence
00081088 X      PyramidDescription
00081110 X/Z    ReferencedStudySequence
00081111 X/Z/D  ReferencedPerformedProcedureStepSequence
00081120 X      ReferencedPatientSequence
00081140 X/Z/U* ReferencedImageSequence
00081155 U      ReferencedSOPInstanceUID
00081195 U      TransactionUID
00081301 X      PrincipalDiagnosisCodeSequence
00081302 X      PrimaryDiagnosisCodeSequence
00081303 X      SecondaryDiagnosesCodeSequence
00081304 X      HistologicalDiagnosesCodeSequence
00082111 X      DerivationDescription
00082112 X/Z/U* SourceImageSequence
00083010 U      IrradiationEventUID
00084000 X      IdentifyingComments
00100010 Z      PatientName
00100011 X      PersonNamesToUseSequence
00100012 X      NameToUse
00100013 X      NameToUseComment
00100014 X      ThirdPersonPronounsSequence
00100015 X      PronounCodeSequence
00100016 X      PronounComment
00100020 Z/D    PatientID
00100021 X      IssuerOfPatientID
00100030 Z      PatientBirthDate
00100032 X      PatientBirthTime
00100040 Z      PatientSex
00100041 X      GenderIdentitySequence
00100042 X      SexParametersForClinicalUseCategoryComment
00100043 X      SexParametersForClinicalUseCategorySequence
00100044 X      GenderIdentityCodeSequence
00100045 X      GenderIdentityComment
00100046 X      SexParametersForClinicalUseCategoryCodeSequence
00100047 X      SexParametersForClinicalUseCategoryReference
00100050 X      PatientInsurancePlanCodeSequence
00100101 X      PatientPrimaryLanguageCodeSequence
00100102 X      PatientPrimaryLanguageModifierCodeSequence
00101000 X      OtherPatientIDs
00101001 X      OtherPatientNames
00101002 X      OtherPatientIDsSequence
00101005 X      PatientBirthName
00101010 X      PatientAge
00101020 X      PatientSize
00101030 X      PatientWeight
00101040 X      PatientAddress
00101050 X      InsurancePlanIdentification
00101060 X      PatientMotherBirthName
00101080 X      MilitaryRank
00101081 X      BranchOfService
00101090 X      MedicalRecordLocator
00101100 X      ReferencedPatientPhotoSequence
00102000 X      MedicalAlerts
00102110 X      Allergies
00102150 X      CountryOfResidence
00102152 X      RegionOfResidence
00102154 X      PatientTelephoneNumbers
00102155 X      PatientTelecomInformation
00102160 X      EthnicGroup
00102161 X      EthnicGroupCodeSequence
00102162 X      EthnicGroups
00102180 X      Occupation
001021A0 X      SmokingStatus
001021B0 X      AdditionalPatientHistory
001021C0 X      PregnancyStatus
001021D0 X      LastMenstrualDate
001021F0 X      PatientReligiousPreference
00102203 X/Z    PatientSexNeutered
00102297 X      ResponsiblePerson
00102299 X      ResponsibleOrganization
00104000 X      PatientComments
00120010 D      ClinicalTrialSponsorName
00120020 D      ClinicalTrialProtocolID
00120021 Z      ClinicalTrialProtocolName
00120022 X      IssuerOfClinicalTrialProtocolID
00120023 X      OtherClinicalTrialProtocolIDsSequence
00120030 Z      ClinicalTrialSiteID
00120031 Z      ClinicalTrialSiteName
00120032 X      IssuerOfClinicalTrialSiteID
00120040 D      ClinicalTrialSubjectID
00120041 X      IssuerOfClinicalTrialSubjectID
00120042 D      ClinicalTrialSubjectReadingID
00120043 X      IssuerOfClinicalTrialSubjectReadingID
00120050 Z      ClinicalTrialTimePointID
00120051 X      ClinicalTrialTimePointDescription
00120055 X      IssuerOfClinicalTrialTimePointID
00120060 Z      ClinicalTrialCoordinatingCenterName
00120071 X      ClinicalTrialSeriesID
00120072 X      ClinicalTrialSeriesDescription
00120073 X      IssuerOfClinicalTrialSeriesID
00120081 D      ClinicalTrialProtocolEthicsCommitteeName
00120082 X      ClinicalTrialProtocolEthicsCommitteeApprovalNumber
00120086 X      EthicsCommitteeApprovalEffectivenessStartDate
00120087 X      EthicsCommitteeApprovalEffectivenessEndDate
0014407C X      CalibrationTime
0014407E X      CalibrationDate
0016002B X      MakerNote
0016004B X      DeviceSettingDescription
0016004D X      CameraOwnerName
0016004E X      LensSpecification
0016004F X      LensMake
00160050 X      LensModel
00160051 X      LensSerialNumber
00160070 X      GPSVersionID
00160071 X      GPSLatitudeRef
00160072 X      GPSLatitude
00160073 X      GPSLongitudeRef
00160074 X      GPSLongitude
00160075 X      GPSAltitudeRef
00160076 X      GPSAltitude
00160077 X      GPSTimeStamp
00160078 X      GPSSatellites
00160079 X      GPSStatus
0016007A X      GPSMeasureMode
0016007B X      GPSDOP
0016007C X      GPSSpeedRef
0016007D X      GPSSpeed
0016007E X      GPSTrackRef
0016007F X      GPSTrack
00160080 X      GPSImgDirectionRef
00160081 X      GPSImgDirection
00160082 X      GPSMapDatum
00160083 X      GPSDestLatitudeRef
00160084 X      GPSDestLatitude
00160085 X      GPSDestLongitudeRef
00160086 X      GPSDestLongitude
00160087 X      GPSDestBearingRef
00160088 X      GPSDestBearing
00160089 X      GPSDestDistanceRef
0016008A X      GPSDestDistance
0016008B X      GPSProcessingMethod
0016008C X      GPSAreaInformation
0016008D X      GPSDateStamp
0016008E X      GPSDifferential
00180010 Z/D    ContrastBolusAgent
00180027 X      InterventionDrugStopTime
00180035 X      InterventionDrugStartTime
00181000 X/Z/D  DeviceSerialNumber
00181002 U      DeviceUID
00181004 X      PlateID
00181005 X      GeneratorID
00181007 X      CassetteID
00181008 X      GantryID
00181009 X      UniqueDeviceIdentifier
0018100A X      UDISequence
0018100B U      ManufacturerDeviceClassUID
00181010 X      SecondaryCaptureDeviceID
00181011 X      HardcopyCreationDeviceID
00181012 X      DateOfSecondaryCapture
00181014 X      TimeOfSecondaryCapture
00181030 X/D    ProtocolName
00181042 X      ContrastBolusStartTime
00181043 X      ContrastBolusStopTime
00181072 X      RadiopharmaceuticalStartTime
00181073 X      RadiopharmaceuticalStopTime
00181078 X      RadiopharmaceuticalStartDateTime
00181079 X      RadiopharmaceuticalStopDateTime
001811BB D      AcquisitionFieldOfViewLabel
00181200 X      DateOfLastCalibration
00181201 X      TimeOfLastCalibration
00181202 X      DateTimeOfLastCalibration
00181203 Z      CalibrationDateTime
00181204 X      DateOfManufacture
00181205 X      DateOfInstallation
00181400 X/D    AcquisitionDeviceProcessingDescription
00182042 U      TargetUID
00184000 X      AcquisitionComments
00185011 X      TransducerIdentificationSequence
0018700A X/D    DetectorID
0018700C X/D    DateOfLastDetectorCalibration
0018700E X/D    TimeOfLastDetectorCalibration
00189074 D      FrameAcquisitionDateTime
00189151 D      FrameReferenceDateTime
00189185 X      RespiratoryMotionCompensationTechniqueDescription
00189367 D      XRaySourceID
00189369 D      SourceStartDateTime
0018936A D      SourceEndDateTime
00189371 D      XRayDetectorID
00189373 X      XRayDetectorLabel
0018937B X      MultienergyAcquisitionDescription
0018937F X      DecompositionDescription
00189424 X      AcquisitionProtocolDescription
00189516 X/D    StartAcquisitionDateTime
00189517 X/D    EndAcquisitionDateTime
00189623 D      FunctionalSyncPulse
00189701 D      DecayCorrectionDateTime
00189804 D      ExclusionStartDateTime
00189919 Z/D    InstructionPerformedDateTime
00189937 X      RequestedSeriesDescription
0018A002 X      ContributionDateTime
0018A003 X      ContributionDescription
0020000D U      StudyInstanceUID
0020000E U      SeriesInstanceUID
00200010 Z      StudyID
00200027 X      PyramidLabel
00200052 U      FrameOfReferenceUID
00200200 U      SynchronizationFrameOfReferenceUID
00203401 X      ModifyingDeviceID
00203403 X      ModifiedImageDate
00203405 X      ModifiedImageTime
00203406 X      ModifiedImageDescription
00204000 X      ImageComments
00209158 X      FrameComments
00209161 U      ConcatenationUID
00209164 U      DimensionOrganizationUID
00281199 U      PaletteColorLookupTableUID
00281214 U      LargePaletteColorLookupTableUID
00284000 X      ImagePresentationComments
00320012 X      StudyIDIssuer
00320032 X      StudyVerifiedDate
00320033 X      StudyVerifiedTime
00320034 X      StudyReadDate
00320035 X      StudyReadTime
00321000 X      ScheduledStudyStartDate
00321001 X      ScheduledStudyStartTime
00321010 X      ScheduledStudyStopDate
00321011 X      ScheduledStudyStopTime
00321020 X      ScheduledStudyLocation
00321021 X      ScheduledStudyLocationAETitle
00321030 X      ReasonForStudy
00321032 X      RequestingPhysician
00321033 X      RequestingService
00321040 X      StudyArrivalDate
00321041 X      StudyArrivalTime
00321050 X      StudyCompletionDate
00321051 X      StudyCompletionTime
00321060 X/Z    RequestedProcedureDescription
00321066 X      ReasonForVisit
00321067 X      ReasonForVisitCodeSequence
00321070 X      RequestedContrastAgent
00324000 X      StudyComments
00340001 D      FlowIdentifierSequence
00340002 D      FlowIdentifier
00340005 D      SourceIdentifier
00340007 D      FrameOriginTimestamp
00380004 X      ReferencedPatientAliasSequence
00380010 X      AdmissionID
00380011 X      IssuerOfAdmissionID
00380014 X      IssuerOfAdmissionIDSequence
0038001A X      ScheduledAdmissionDate
0038001B X      ScheduledAdmissionTime
0038001C X      ScheduledDischargeDate
0038001D X      ScheduledDischargeTime
0038001E X      ScheduledPatientInstitutionResidence
00380020 X      AdmittingDate
00380021 X      AdmittingTime
00380030 X      DischargeDate
00380032 X      DischargeTime
00380040 X      DischargeDiagnosisDescription
00380050 X      SpecialNeeds
00380060 X      ServiceEpisodeID
00380061 X      IssuerOfServiceEpisodeID
00380062 X      ServiceEpisodeDescription
00380064 X      IssuerOfServiceEpisodeIDSequence
00380300 X      CurrentPatientLocation
00380400 X      PatientInstitutionResidence
00380500 X      PatientState
00384000 X      VisitComments
003A0020 X      MultiplexGroupLabel
003A0203 X      ChannelLabel
003A020C X      ChannelDerivationDescription
003A0310 U      MultiplexGroupUID
003A0314 D      ImpedanceMeasurementDateTime
003A0329 X      WaveformFilterDescription
003A032B X      FilterLookupTableDescription
00400001 X      ScheduledStationAETitle
00400002 X      ScheduledProcedureStepStartDate
00400003 X      ScheduledProcedureStepStartTime
00400004 X      ScheduledProcedureStepEndDate
00400005 X      ScheduledProcedureStepEndTime
00400006 X      ScheduledPerformingPhysicianName
00400007 X      ScheduledProcedureStepDescription
00400009 X      ScheduledProcedureStepID
0040000B X      ScheduledPerformingPhysicianIdentificationSequence
00400010 X      ScheduledStationName
00400011 X      ScheduledProcedureStepLocation
00400012 X      PreMedication
00400241 X      PerformedStationAETitle
00400242 X      PerformedStationName
00400243 X      PerformedLocation
00400244 X      PerformedProcedureStepStartDate
00400245 X      PerformedProcedureStepStartTime
00400250 X      PerformedProcedureStepEndDate
00400251 X      PerformedProcedureStepEndTime
00400253 X      PerformedProcedureStepID
00400254 X      PerformedProcedureStepDescription
00400275 X      RequestAttributesSequence
00400280 X      CommentsOnThePerformedProcedureStep
00400310 X      CommentsOnRadiationDose
0040050A X      SpecimenAccessionNumber
00400512 D      ContainerIdentifier
00400513 Z      IssuerOfTheContainerIdentifierSequence
0040051A X      ContainerDescription
00400551 D      SpecimenIdentifier
00400554 U      SpecimenUID
00400555 X/Z    AcquisitionContextSequence
00400556 X      AcquisitionContextDescription
00400562 Z      IssuerOfTheSpecimenIdentifierSequence
00400600 X      SpecimenShortDescription
00400602 X      SpecimenDetailedDescription
00400610 Z      SpecimenPreparationSequence
004006FA X      SlideIdentifier
00401001 X      RequestedProcedureID
00401002 X      ReasonForTheRequestedProcedure
00401004 X      PatientTransportArrangements
00401005 X      RequestedProcedureLocation
0040100A X      ReasonForRequestedProcedureCodeSequence
00401010 X      NamesOfIntendedRecipientsOfResults
00401011 X      IntendedRecipientsOfResultsIdentificationSequence
00401101 D      PersonIdentificationCodeSequence
00401102 X      PersonAddress
00401103 X      PersonTelephoneNumbers
00401104 X      PersonTelecomInformation
00401400 X      RequestedProcedureComments
00402001 X      ReasonForTheImagingServiceRequest
00402004 X      IssueDateOfImagingServiceRequest
00402005 X      IssueTimeOfImagingServiceRequest
00402008 X      OrderEnteredBy
00402009 X      OrderEntererLocation
00402010 X      OrderCallbackPhoneNumber
00402011 X      OrderCallbackTelecomInformation
00402016 Z      PlacerOrderNumberImagingServiceRequest
00402017 Z      FillerOrderNumberImagingServiceRequest
00402400 X      ImagingServiceRequestComments
00403001 X      ConfidentialityConstraintOnPatientDataDescription
00404005 X      ScheduledProcedureStepStartDateTime
00404008 X      ScheduledProcedureStepExpirationDateTime
00404010 X      ScheduledProcedureStepModificationDateTime
00404011 X      ExpectedCompletionDateTime
00404023 U      ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
00404025 X      ScheduledStationNameCodeSequence
00404027 X      ScheduledStationGeographicLocationCodeSequence
00404028 X      PerformedStationNameCodeSequence
00404030 X      PerformedStationGeographicLocationCodeSequence
00404034 X      ScheduledHumanPerformersSequence
00404035 X      ActualHumanPerformersSequence
00404036 X      HumanPerformerOrganization
00404037 X      HumanPerformerName
00404050 X      PerformedProcedureStepStartDateTime
00404051 X      PerformedProcedureStepEndDateTime
00404052 X      ProcedureStepCancellationDateTime
0040A023 X      FindingsGroupRecordingDateTrial
0040A024 X      FindingsGroupRecordingTimeTrial
0040A027 D      VerifyingOrganization
0040A030 D      VerificationDateTime
0040A032 X/D    ObservationDateTime
0040A033 X      ObservationStartDateTime
0040A034 X      EffectiveStartDateTime
0040A035 X      EffectiveStopDateTime
0040A073 D      VerifyingObserverSequence
0040A075 D      VerifyingObserverName
0040A078 X      AuthorObserverSequence
0040A07A X      ParticipantSequence
0040A07C X      CustodialOrganizationSequence
0040A082 Z      ParticipationDateTime
0040A088 Z      VerifyingObserverIdentificationCodeSequence
0040A110 X      DateOfDocumentOrVerbalTransactionTrial
0040A112 X      TimeOfDocumentCreationOrVerbalTransactionTrial
0040A120 D      DateTime
0040A121 D      Date
0040A122 D      Time
0040A123 D      PersonName
0040A124 U      UID
0040A13A D      ReferencedDateTime
0040A171 U      ObservationUID
0040A172 U      ReferencedObservationUIDTrial
0040A192 X      ObservationDateTrial
0040A193 X      ObservationTimeTrial
0040A307 X      CurrentObserverTrial
0040A352 X      VerbalSourceTrial
0040A353 X      AddressTrial
0040A354 X      TelephoneNumberTrial
0040A358 X      VerbalSourceIdentifierCodeSequenceTrial
0040A402 U      ObservationSubjectUIDTrial
0040A730 D      ContentSequence
0040B020 X/D    WaveformAnnotationSequence
0040B034 X      AnnotationDateTime
0040B036 X      SegmentDefinitionDateTime
0040B03B X      MontageName
0040B03F X      MontageChannelLabel
0040DB06 X      TemplateVersion
0040DB07 X      TemplateLocalVersion
0040DB0C U      TemplateExtensionOrganizationUID
0040DB0D U      TemplateExtensionCreatorUID
0040E004 X      HL7DocumentEffectiveTime
0040E012 X      DisplayURI
00420011 D      EncapsulatedDocument
00440004 X      ApprovalStatusDateTime
0044000B X      ProductExpirationDateTime
00440010 X      SubstanceAdministrationDateTime
00440104 D      AssertionDateTime
00440105 X      AssertionExpirationDateTime
0050001B X      ContainerComponentID
00500020 X      DeviceDescription
00500021 X      LongDeviceDescription
00620021 U      TrackingUID
00640003 U      SourceFrameOfReferenceUID
00686226 D      EffectiveDateTime
00686270 D      InformationIssueDateTime
006A0003 D      AnnotationGroupUID
006A0005 D      AnnotationGroupLabel
006A0006 X      AnnotationGroupDescription
00700001 D      GraphicAnnotationSequence
00700006 D      UnformattedTextValue
00700082 X      PresentationCreationDate
00700083 X      PresentationCreationTime
00700084 Z/D    ContentCreatorName
00700086 X      ContentCreatorIdentificationCodeSequence
0070031A U      FiducialUID
00701101 U      PresentationDisplayCollectionUID
00701102 U      PresentationSequenceCollectionUID
0072000A D      HangingProtocolCreationDateTime
0072005E D      SelectorAEValue
0072005F D      SelectorASValue
00720061 D      SelectorDAValue
00720063 D      SelectorDTValue
00720065 D      SelectorOBValue
00720066 D      SelectorLOValue
00720068 D      SelectorLTValue
0072006A D      SelectorPNValue
0072006B D      SelectorTMValue
0072006C D      SelectorSHValue
0072006D D      SelectorUNValue
0072006E D      SelectorSTValue
00720070 D      SelectorUTValue
00720071 D      SelectorURValue
00741234 X      ReceivingAE
00741236 X      RequestingAE
00880140 U      StorageMediaFileSetUID
00880200 X      IconImageSequence
00880904 X      TopicTitle
00880906 X      TopicSubject
00880910 X      TopicAuthor
00880912 X      TopicKeywords
01000420 X      SOPAuthorizationDateTime
04000100 U      DigitalSignatureUID
04000105 D      DigitalSignatureDateTime
04000115 D      CertificateOfSigner
04000310 X      CertifiedTimestamp
04000402 X      ReferencedDigitalSignatureSequence
04000403 X      ReferencedSOPInstanceMACSequence
04000404 X      MAC
04000550 X      ModifiedAttributesSequence
04000551 X      NonconformingModifiedAttributesSequence
04000552 X      NonconformingDataElementValue
04000561 X      OriginalAttributesSequence
04000562 D      AttributeModificationDateTime
04000563 D      ModifyingSystem
04000564 Z      SourceOfPreviousValues
04000565 D      ReasonForTheAttributeModification
04000600 X      InstanceOriginStatus
20300020 X      TextString
21000040 X      CreationDate
21000050 X      CreationTime
21000070 X      Originator
21000140 D      DestinationAE
22000002 X/Z    LabelText
22000005 X/Z    BarcodeValue
30020121 X      PositionAcquisitionTemplateName
30020123 X      PositionAcquisitionTemplateDescription
3004007F X      DoseCalculationModelName
30060002 D      StructureSetLabel
30060004 X      StructureSetName
30060006 X      StructureSetDescription
30060008 Z      StructureSetDate
30060009 Z      StructureSetTime
30060024 U      ReferencedFrameOfReferenceUID
30060026 Z      ROIName
30060028 X      ROIDescription
3006002D X      ROIDateTime
3006002E X      ROIObservationDateTime
30060038 X      ROIGenerationDescription
3006004D X      ROICreatorSequence
3006004E X      ROIInterpreterSequence
30060085 X      ROIObservationLabel
30060088 X      ROIObservationDescription
300600A6 Z      ROIInterpreter
300600C2 U      RelatedFrameOfReferenceUID
30080024 D      TreatmentControlPointDate
30080025 D      TreatmentControlPointTime
30080054 X/D    FirstTreatmentDate
30080056 X/D    MostRecentTreatmentDate
30080105 X/Z    SourceSerialNumber
30080162 D      SafePositionExitDate
30080164 D      SafePositionExitTime
30080166 D      SafePositionReturnDate
30080168 D      SafePositionReturnTime
30080250 X/D    TreatmentDate
30080251 X/D    TreatmentTime
300A0002 D      RTPlanLabel
300A0003 X      RTPlanName
300A0004 X      RTPlanDescription
300A0006 X/D    RTPlanDate
300A0007 X/D    RTPlanTime
300A000B X      TreatmentSites
300A000E X      PrescriptionDescription
300A0013 U      DoseReferenceUID
300A0016 X      DoseReferenceDescription
300A0054 U      TableTopPositionAlignmentUID
300A0072 X      FractionGroupDescription
300A0083 U      ReferencedDoseReferenceUID
300A00B2 X/Z    TreatmentMachineName
300A00C3 X      BeamDescription
300A00DD X      BolusDescription
300A0196 X      FixationDeviceDescription
300A01A6 X      ShieldingDeviceDescription
300A01B2 X      SetupTechniqueDescription
300A0216 X      SourceManufacturer
300A022C D      SourceStrengthReferenceDate
300A022E D      SourceStrengthReferenceTime
300A02EB X      CompensatorDescription
300A0608 D      TreatmentPositionGroupLabel
300A0609 U      TreatmentPositionGroupUID
300A0611 Z      RTAccessoryHolderSlotID
300A0615 Z      RTAccessoryDeviceSlotID
300A0619 D      RadiationDoseIdentificationLabel
300A0623 D      RadiationDoseInVivoMeasurementLabel
300A062A D      RTToleranceSetLabel
300A0650 U      PatientSetupUID
300A0676 X      EquipmentFrameOfReferenceDescription
300A067C D      RadiationGenerationModeLabel
300A067D Z      RadiationGenerationModeDescription
300A0700 U      TreatmentSessionUID
300A0734 D      TreatmentToleranceViolationDescription
300A0736 D      TreatmentToleranceViolationDateTime
300A073A D      RecordedRTControlPointDateTime
300A0741 D      InterlockDateTime
300A0742 D      InterlockDescription
300A0760 D      OverrideDateTime
300A0783 D      InterlockOriginDescription
300A0785 U      ReferencedTreatmentPositionGroupUID
300A078E X      PatientTreatmentPreparationProcedureParameterDescription
300A0792 X      PatientTreatmentPreparationMethodDescription
300A0794 X      PatientSetupPhotoDescription
300A079A X      DisplacementReferenceLabel
300C0113 X      ReasonForOmissionDescription
300C0127 D      BeamHoldTransitionDateTime
300E0004 Z      ReviewDate
300E0005 Z      ReviewTime
300E0008 X/Z    ReviewerName
30100006 U      ConceptualVolumeUID
3010000B U      ReferencedConceptualVolumeUID
3010000F Z      ConceptualVolumeCombinationDescription
30100013 U      ConstituentConceptualVolumeUID
30100015 U      SourceConceptualVolumeUID
30100017 Z      ConceptualVolumeDescription
3010001B Z      DeviceAlternateIdentifier
3010002D D      DeviceLabel
30100031 U      ReferencedFiducialsUID
30100033 D      UserContentLabel
30100034 D      UserContentLongLabel
30100035 D      EntityLabel
30100036 X      EntityName
30100037 X      EntityDescription
30100038 D      EntityLongLabel
3010003B U      RTTreatmentPhaseUID
30100043 Z      ManufacturerDeviceIdentifier
3010004C X/D    IntendedPhaseStartDate
3010004D X/D    IntendedPhaseEndDate
30100054 D      RTPrescriptionLabel
30100056 X/D    RTTreatmentApproachLabel
3010005A Z      RTPhysicianIntentNarrative
3010005C Z      ReasonForSuperseding
30100061 X      PriorTreatmentDoseDescription
3010006E U      DosimetricObjectiveUID
3010006F U      ReferencedDosimetricObjectiveUID
30100077 X/D    TreatmentSite
3010007A Z      TreatmentTechniqueNotes
3010007B Z      PrescriptionNotes
3010007F Z      FractionationNotes
30100081 Z      PrescriptionNotesSequence
30100085 X      IntendedFractionStartTime
40000010 X      Arbitrary
40004000 X      TextComments
40080040 X      ResultsID
40080042 X      ResultsIDIssuer
40080100 X      InterpretationRecordedDate
40080101 X      InterpretationRecordedTime
40080102 X      InterpretationRecorder
40080108 X      InterpretationTranscriptionDate
40080109 X      InterpretationTranscriptionTime
4008010A X      InterpretationTranscriber
4008010B X      InterpretationText
4008010C X      InterpretationAuthor
40080111 X      InterpretationApproverSequence
40080112 X      InterpretationApprovalDate
40080113 X      InterpretationApprovalTime
40080114 X      PhysicianApprovingInterpretation
40080115 X      InterpretationDiagnosisDescription
40080118 X      ResultsDistributionListSequence
40080119 X      DistributionName
4008011A X      DistributionAddress
40080200 X      InterpretationID
40080202 X      InterpretationIDIssuer
40080300 X      Impressions
40084000 X      ResultsComments
50xxxxxx X      CurveData
60xx3000 X      OverlayData
60xx4000 X      OverlayComments
FFFAFFFA X      DigitalSignaturesSequence
FFFCFFFC X      DataSetTrailingPadding
"""

BASIC_PROFILE: tuple[ProfileRule, ...] = tuple(
    ProfileRule(tag.lower(), Action(action), keyword)
    for tag, action, keyword in (line.split() for line in _TABLE_E_1_1.strip().splitlines())
)
"""Every row of Table E.1-1 with its Basic Profile action."""

_RULES_BY_TAG: Mapping[int, ProfileRule] = {
    int(rule.tag, 16): rule for rule in BASIC_PROFILE if "x" not in rule.tag
}
_REPEATING_RULES: tuple[ProfileRule, ...] = tuple(r for r in BASIC_PROFILE if "x" in r.tag)
_OVERLAY_GROUPS = range(0x6000, 0x6020, 2)
_CURVE_GROUPS = range(0x5000, 0x5100, 2)


def profile_rule(tag: int) -> ProfileRule | None:
    """The Table E.1-1 row for `tag`, or None when the profile keeps the attribute."""
    rule = _RULES_BY_TAG.get(tag)
    if rule is not None:
        return rule
    for repeating in _REPEATING_RULES:
        if repeating.matches(tag):
            return repeating
    return None


# -- UIDs -------------------------------------------------------------------------------------


def replace_uid(uid: str, secret: bytes) -> str:
    """The replacement for `uid`: HMAC-SHA256 under the room's secret, as a `2.25.` UID.

    The same UID maps to the same replacement within a room (a study's images keep referring to
    each other), differs between rooms, and cannot be reversed without the secret.
    """
    digest = hmac.new(secret, b"consilium-dicom-uid\x00" + uid.encode(), hashlib.sha256).digest()
    # 2.25 is the UUID arc (PS3.5 B.2): a 128-bit integer, at most 39 digits, fits in 64 chars.
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


# -- de-identifying a dataset -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Removal:
    """One thing de-identification removed or replaced: where and what, never the value."""

    where: str
    """Tag path like `(0008,1140)[0](0008,1155)`, or a metadata location like `EXIF`."""
    name: str
    """Attribute keyword or metadata name."""
    action: str
    """The action applied: X, Z, D or U (for DICOM), or `removed` (for photo metadata)."""


_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: Mapping[str, Any] = {
    "AE": _DUMMY_TEXT,
    "AS": "000Y",
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "UC": _DUMMY_TEXT,
    "UT": _DUMMY_TEXT,
    "UR": "urn:anonymized",
    "AT": 0,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}

DEIDENTIFICATION_METHOD = f"Consilium: DICOM PS3.15 E.1-1 Basic Profile ({BASIC_PROFILE_EDITION})"
"""Value of DeidentificationMethod (0012,0063) on every de-identified dataset."""


@dataclass
class _Run:
    """One de-identification pass: the room's UID secret and what was done so far."""

    secret: bytes
    removals: list[Removal] = field(default_factory=list)

    def note(self, where: str, tag: BaseTag, action: Action | str) -> None:
        self.removals.append(Removal(where, _keyword(tag), str(action)))


def _keyword(tag: BaseTag) -> str:
    if tag.is_private:
        return "Private"
    rule = profile_rule(int(tag))
    if rule is not None and "x" not in rule.tag:
        return rule.keyword
    return keyword_for_tag(tag) or "Unknown"


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def deidentify_dataset(ds: Dataset, *, uid_secret: bytes) -> tuple[Removal, ...]:
    """Apply the Basic Profile to `ds` in place; return what was removed or replaced.

    Nested sequences are walked: the table applies at every depth. Private attributes, curves
    and whole overlay groups are removed (an overlay group stripped of its data and comments,
    as the profile requires, would describe a bitmap that no longer exists). The file meta is
    rebuilt around the replaced SOP Instance UID. PatientIdentityRemoved, DeidentificationMethod
    and its code sequence (DCM 113100) record what was done.
    """
    if len(uid_secret) < 16:
        raise ValueError("the UID secret must be at least 16 bytes")
    run = _Run(uid_secret)
    _deidentify_items(ds, run, "")
    _rebuild_file_meta(ds, run)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return tuple(run.removals)


def _deidentify_items(ds: Dataset, run: _Run, path: str) -> None:
    for tag in list(ds.keys()):
        where = path + _tag_text(tag)
        if tag.is_private or tag.group in _CURVE_GROUPS or tag.group in _OVERLAY_GROUPS:
            del ds[tag]
            run.note(where, tag, Action.X)
            continue
        rule = profile_rule(int(tag))
        if rule is None:
            _keep(ds, tag, run, where)
            continue
        action = _APPLIED[rule.action]
        try:
            _apply(ds, tag, action, run, where)
        except Exception:  # an unreadable value: dropping it is the one safe reading
            if tag in ds:
                del ds[tag]
            action = Action.X
        run.note(where, tag, action)


def _keep(ds: Dataset, tag: BaseTag, run: _Run, where: str) -> None:
    """Keep an attribute the profile does not list; walk into it if it is a sequence.

    Reading the value also settles its VR, which a file that contradicts its own transfer
    syntax leaves unset (and pydicom then cannot write).
    """
    try:
        element = ds[tag]
    except Exception:  # an unreadable value: dropping it is the one safe reading
        del ds[tag]
        run.note(where, tag, Action.X)
        return
    if element.VR == "SQ":
        for index, item in enumerate(element.value):
            _deidentify_items(item, run, f"{where}[{index}]")


def _apply(ds: Dataset, tag: BaseTag, action: Action, run: _Run, where: str) -> None:
    if action is Action.X:
        del ds[tag]
        return
    element = ds[tag]
    vr = element.VR.split(" or ")[0]
    if action is Action.Z:
        ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else None)
    elif action is Action.U and vr == "SQ":
        for index, item in enumerate(element.value):
            _deidentify_items(item, run, f"{where}[{index}]")
    elif action is Action.U:
        element.value = _replaced_uids(element.value, run.secret)
    else:
        _dummy(ds, element, run)


def _replaced_uids(value: Any, secret: bytes) -> Any:
    if isinstance(value, bytes):  # an unknown tag read as UN
        value = value.decode("ascii", "replace").strip("\x00 ")
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return replace_uid(value.strip("\x00 "), secret)
    return [replace_uid(str(v).strip("\x00 "), secret) for v in value]


def _dummy(ds: Dataset, element: DataElement, run: _Run) -> None:
    """Replace the element's value by one of its VR that identifies no-one.

    A sequence keeps its items but every value inside them is replaced in turn: its structure
    may be required, its content never is.
    """
    vr = element.VR.split(" or ")[0]
    if vr == "SQ":
        for item in element.value:
            for tag in list(item.keys()):
                if tag.is_private:
                    del item[tag]
                    continue
                try:
                    _dummy(item, item[tag], run)
                except Exception:
                    del item[tag]
    elif vr == "UI":
        element.value = _replaced_uids(element.value, run.secret)
    elif vr in _DUMMY_BY_VR:
        ds[element.tag] = DataElement(element.tag, vr, _DUMMY_BY_VR[vr])
    else:  # OB, OW, OF, OD, OL, OV, UN: two zero bytes are a valid dummy for every one of them
        ds[element.tag] = DataElement(element.tag, vr, b"\x00\x00")


def _rebuild_file_meta(ds: Dataset, run: _Run) -> None:
    """A fresh file meta: the old one may name the sending system (Source AE Title)."""
    old = getattr(ds, "file_meta", None)
    syntax = old.get("TransferSyntaxUID") if old is not None else None
    if syntax is None:
        implicit, _little = getattr(ds, "original_encoding", (False, True))
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if old is not None and "MediaStorageSOPInstanceUID" in old:
            run.note("(0002,0003)", Tag(0x00020003), Action.U)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


# -- the result -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PixelSpacing:
    """Physical size of a pixel, for measurements drawn on the image."""

    row_mm: float
    """Distance between the centres of adjacent rows, in mm."""
    column_mm: float
    """Distance between the centres of adjacent columns, in mm."""
    source: str
    """Attribute it came from: `PixelSpacing`, or `ImagerPixelSpacing` (at the detector,
    divided by the estimated radiographic magnification when the image gives one)."""


@dataclass(frozen=True)
class DeidentifiedImage:
    """A shared image with nothing identifying left: what the room may see, store and audit."""

    kind: ImageKind
    """What was uploaded."""
    rows: int
    """Height in pixels (after EXIF orientation, for photos)."""
    columns: int
    """Width in pixels."""
    frame_count: int
    """Frames (1 for photos and single-frame DICOM)."""
    removed: tuple[Removal, ...]
    """What was removed or replaced (tags and names only: safe for the audit log)."""
    pixel_spacing: PixelSpacing | None = None
    """Pixel size for measurements in mm; None when the image does not say."""
    burned_in_confirmed: bool = False
    """The DICOM declared burned-in annotation and the uploader confirmed sharing it."""
    dataset: Dataset | None = None
    """The de-identified DICOM dataset (None for photos)."""
    photo: bytes | None = None
    """The cleaned photo, PNG or JPEG as uploaded (None for DICOM)."""
    text_check: HeaderFindings | None = None
    """For an image that may carry burned-in text (`carries_burned_in_text`): what deid's
    filters read from its original header (none for a photo); None when out of scope."""

    @property
    def frames(self) -> range:
        """The addressable frame indexes."""
        return range(self.frame_count)

    @property
    def media_type(self) -> str:
        """MIME type of what `render_frame` returns."""
        return "image/jpeg" if self.kind is ImageKind.JPEG else "image/png"

    def render_frame(self, index: int = 0) -> bytes:
        """Frame `index` for the browser: a lossless PNG (or the cleaned JPEG of a photo)."""
        if not 0 <= index < self.frame_count:
            raise FrameNotFound(f"frame {index} does not exist", frames=self.frame_count)
        if self.photo is not None:
            return self.photo
        assert self.dataset is not None
        return _encode_png(render_dicom_frame(self.dataset, index))

    def frame_pixels(self, index: int = 0) -> npt.NDArray[np.uint8]:
        """Frame `index` as 8-bit display values (grey, RGB or RGBA), a writable copy."""
        if not 0 <= index < self.frame_count:
            raise FrameNotFound(f"frame {index} does not exist", frames=self.frame_count)
        if self.photo is not None:
            with Image.open(BytesIO(self.photo)) as img:
                return np.array(display_mode(img))
        assert self.dataset is not None
        return np.array(render_dicom_frame(self.dataset, index))

    def encode_frame(self, pixels: npt.NDArray[np.uint8]) -> bytes:
        """Frame pixels (as `frame_pixels` gave, changed) encoded as `render_frame` would."""
        if self.kind is ImageKind.JPEG:
            out = BytesIO()
            Image.fromarray(pixels).convert("RGB").save(out, format="JPEG", quality=95)
            return out.getvalue()
        return _encode_png(pixels)

    def dicom_bytes(self) -> bytes:
        """The de-identified DICOM as a Part 10 file (for storage); photos have none."""
        if self.dataset is None:
            raise ValueError("a photo has no DICOM dataset")
        out = BytesIO()
        dcmwrite(out, self.dataset, enforce_file_format=True)
        return out.getvalue()


# -- entry points -----------------------------------------------------------------------------


def deidentify(
    data: bytes,
    *,
    uid_secret: bytes,
    confirm_burned_in: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> DeidentifiedImage:
    """Sniff `data` and de-identify it: the one entry point for an uploaded image.

    `uid_secret` is the room's secret for replacing DICOM UIDs (at least 16 bytes).
    Raises `UnsupportedImage`, `ImageTooLarge` or `BurnedInAnnotation`.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLarge("the image file is too large", limit=limits.max_bytes)
    kind = sniff(data)
    if kind is ImageKind.DICOM:
        return deidentify_dicom(
            data, uid_secret=uid_secret, confirm_burned_in=confirm_burned_in, limits=limits
        )
    return strip_photo_metadata(data, kind, limits=limits)


def deidentify_dicom(
    data: bytes,
    *,
    uid_secret: bytes,
    confirm_burned_in: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> DeidentifiedImage:
    """Parse, bound, check, de-identify and test-decode a DICOM image."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge("the image file is too large", limit=limits.max_bytes)
    ds = _read_dicom(data)
    rows, columns, frames = _image_geometry(ds, limits)
    burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
    if burned_in and not confirm_burned_in:
        raise BurnedInAnnotation(
            "the image declares identifying text burned into its pixels; confirm to share it"
        )
    spacing = pixel_spacing(ds)
    # deid's device rules read manufacturer, model and the like: before they are removed.
    text_check = header_findings(ds) if carries_burned_in_text(ds) else None
    removed = deidentify_dataset(ds, uid_secret=uid_secret)
    try:  # decode now, so an undecodable image is refused at upload, not when first viewed
        render_dicom_frame(ds, 0)
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedImage(f"the pixel data cannot be decoded ({name})") from exc
    return DeidentifiedImage(
        kind=ImageKind.DICOM,
        rows=rows,
        columns=columns,
        frame_count=frames,
        removed=removed,
        pixel_spacing=spacing,
        burned_in_confirmed=burned_in,
        dataset=ds,
        text_check=text_check,
    )


def _read_dicom(data: bytes) -> Dataset:
    part10 = data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"
    if not part10 and not _looks_like_bare_dataset(data):
        raise UnsupportedImage("not a DICOM file")
    if part10 and part10_transfer_syntax(data) == DeflatedExplicitVRLittleEndian:
        # pydicom inflates the whole dataset with no bound: a zip bomb would exhaust memory.
        raise UnsupportedImage("deflated DICOM is not accepted")
    try:
        # force only for a bare dataset, and only after its first elements parsed as one.
        ds = dcmread(BytesIO(data), force=not part10)
    except Exception as exc:
        raise UnsupportedImage("the DICOM file cannot be parsed") from exc
    if "PixelData" not in ds:
        raise UnsupportedImage("the DICOM object has no image (Pixel Data) to share")
    if not part10 or "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if not little:
            raise UnsupportedImage("big-endian DICOM without file meta is not accepted")
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        )
    return ds


_META_BOUND = 64 * 1024


def part10_transfer_syntax(data: bytes) -> str | None:
    """The Transfer Syntax UID (0002,0010) of a Part 10 file, found as pydicom finds it.

    pydicom reads the file meta element by element for as long as the group is 0002, whatever
    the group length (0002,0000) says, so this walks the elements the same way: a group length
    that understates the header must not hide the syntax (a deflated dataset behind it is
    inflated by pydicom with no bound). None when the meta has no such element.
    """
    offset = _DICM_OFFSET + 4
    end = min(len(data), offset + _META_BOUND)
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            return None
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS or vr not in _SHORT_VRS:
            if offset + 12 > end:
                return None
            (length,) = struct.unpack_from("<L", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        if length == 0xFFFFFFFF:
            return None
        if element == 0x0010:
            return data[offset : offset + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset += length
    return None


def _image_geometry(ds: Dataset, limits: ImageLimits) -> tuple[int, int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:
        raise UnsupportedImage("the DICOM image has no valid Rows, Columns or frame count") from exc
    if rows < 1 or columns < 1 or frames < 1:
        raise UnsupportedImage("the DICOM image is empty")
    if rows * columns > limits.max_frame_pixels:
        raise ImageTooLarge("a frame has too many pixels", limit=limits.max_frame_pixels)
    if frames > limits.max_frames:
        raise ImageTooLarge("the image has too many frames", limit=limits.max_frames)
    frame_bytes = rows * columns * _samples(ds) * _bytes_allocated(ds)
    check_decoded_size(frame_bytes, frames, limits)
    return rows, columns, frames


def check_decoded_size(frame_bytes: int, frames: int, limits: ImageLimits) -> None:
    """Refuse (`ImageTooLarge`) an image whose decoded pixels would pass the limits: computed
    from its header, before anything is decoded."""
    if frame_bytes > limits.max_frame_bytes:
        raise ImageTooLarge("a frame decodes to too much data", limit=limits.max_frame_bytes)
    if frame_bytes * frames > limits.max_decoded_bytes:
        raise ImageTooLarge("the image decodes to too much data", limit=limits.max_decoded_bytes)


def _samples(ds: Dataset) -> int:
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        raise UnsupportedImage("the DICOM image has no valid Samples per Pixel") from None
    if not 1 <= samples <= 4:
        raise UnsupportedImage("the DICOM image has no valid Samples per Pixel")
    # A palette image renders to RGB.
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return 3 if photometric == "PALETTE COLOR" else samples


def _bytes_allocated(ds: Dataset) -> int:
    try:
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        raise UnsupportedImage("the DICOM image has no valid Bits Allocated") from None
    if not 1 <= bits <= 64:
        raise UnsupportedImage("the DICOM image has no valid Bits Allocated")
    # Decoders hand out whole bytes (1-bit images unpack to one byte a pixel); rendering
    # works in float64 whatever the stored depth.
    return max(8, (bits + 7) // 8 * 8) // 8


def pixel_spacing(ds: Dataset) -> PixelSpacing | None:
    """Pixel size in mm: PixelSpacing (top level or the functional groups' Pixel Measures),
    else ImagerPixelSpacing corrected by the estimated radiographic magnification."""
    measures = _functional_group(ds, 0, "PixelMeasuresSequence")
    for source in (ds, measures):
        if source is not None and source.get("PixelSpacing"):
            return _spacing(source.PixelSpacing, 1.0, "PixelSpacing")
    if ds.get("ImagerPixelSpacing"):
        magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 1.0) or 1.0
        return _spacing(ds.ImagerPixelSpacing, magnification, "ImagerPixelSpacing")
    return None


def _spacing(value: Any, magnification: float, source: str) -> PixelSpacing | None:
    try:
        row, column = (float(v) / magnification for v in value[:2])
    except (TypeError, ValueError):
        return None
    if not (row > 0 and column > 0):
        return None
    return PixelSpacing(row, column, source)


# -- rendering --------------------------------------------------------------------------------


def render_dicom_frame(ds: Dataset, index: int) -> npt.NDArray[np.uint8]:
    """Frame `index` as 8-bit display values: grayscale (rows × columns) or RGB (× 3).

    Grayscale goes through the modality transform (Rescale Slope/Intercept, or a Modality
    LUT), then the VOI transform with the image's first window (VOI LUT Function LINEAR unless
    the image says LINEAR_EXACT or SIGMOID), or the frame's min..max when it has no window;
    MONOCHROME1 is inverted so that high values are dark. Colour is passed through.
    """
    frame = pixel_array(ds, index=index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 8]
        return _to_8bit(apply_color_lut(frame, ds), int(descriptor[2]))
    if frame.ndim == 3:  # pydicom already converted YBR to RGB
        return _to_8bit(frame, int(ds.get("BitsStored") or frame.dtype.itemsize * 8))
    values = _modality_values(ds, frame, index)
    window = _window(ds, index)
    if window is None:
        display = _min_max(values)
    else:
        center, width, function = window
        display = voi_lut(values, center, width, function)
    if photometric == "MONOCHROME1":
        display = 255.0 - display
    return np.asarray(np.round(display), dtype=np.uint8)


def voi_lut(
    values: npt.NDArray[np.float64], center: float, width: float, function: str = "LINEAR"
) -> npt.NDArray[np.float64]:
    """PS3.3 C.11.2.1.2's window functions, mapping onto 0..255."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        scaled = (values - center) / width + 0.5
    elif width <= 1.0:  # LINEAR with width 1 is a threshold
        return np.where(values <= center - 0.5, 0.0, 255.0)
    else:  # LINEAR, the default: the half-pixel offsets are the standard's, not a typo
        scaled = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(scaled * 255.0, 0.0, 255.0)


def _modality_values(ds: Dataset, frame: npt.NDArray[Any], index: int) -> npt.NDArray[np.float64]:
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    transform = _functional_group(ds, index, "PixelValueTransformationSequence")
    source = ds if "RescaleSlope" in ds or transform is None else transform
    slope = float(source.get("RescaleSlope") or 1.0)
    intercept = float(source.get("RescaleIntercept") or 0.0)
    return frame.astype(np.float64) * slope + intercept


def _window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    frame_voi = _functional_group(ds, index, "FrameVOILUTSequence")
    for source in (ds, frame_voi):
        if source is None or not source.get("WindowCenter") or not source.get("WindowWidth"):
            continue
        try:
            center = float(_first(source.WindowCenter))
            width = float(_first(source.WindowWidth))
        except (TypeError, ValueError):
            continue
        function = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
        if width > 0 and np.isfinite(center) and np.isfinite(width):
            return center, width, function
    return None


def _first(value: Any) -> Any:
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return value
    return value[0]


def _min_max(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _to_8bit(rgb: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    if rgb.dtype == np.uint8:
        return rgb
    top = float((1 << bits) - 1)
    return np.asarray(np.round(np.clip(rgb, 0, top) * (255.0 / top)), dtype=np.uint8)


def _functional_group(ds: Dataset, index: int, name: str) -> Dataset | None:
    """Item of macro `name` for frame `index` in an enhanced (functional group) image."""
    for groups, pick in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if not items or pick >= len(items):
            continue
        inner = items[pick].get(name)
        if inner:
            item: Dataset = inner[0]
            return item
    return None


def display_mode(img: Image.Image) -> Image.Image:
    """The image in a mode whose pixels are 8-bit display values: L, RGB or RGBA."""
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    return img.convert("RGBA" if "transparency" in img.info else "RGB")


def _encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    out = BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=6)
    return out.getvalue()


# -- photos -----------------------------------------------------------------------------------


def strip_photo_metadata(
    data: bytes, kind: ImageKind, *, limits: ImageLimits = DEFAULT_LIMITS
) -> DeidentifiedImage:
    """Re-encode a PNG or JPEG with no metadata but its colour profile, upright.

    PNG is re-encoded losslessly. JPEG is re-encoded with its own quantisation tables and
    chroma subsampling, so the pixels barely change; a plain copy of the compressed data
    would be lossless but would also keep anything a parser misses (trailers, odd segments).
    """
    pillow_format = {ImageKind.PNG: "PNG", ImageKind.JPEG: "JPEG"}[kind]
    try:
        with Image.open(BytesIO(data), formats=[pillow_format]) as img:
            if img.width * img.height > limits.max_frame_pixels:
                raise ImageTooLarge("the image has too many pixels", limit=limits.max_frame_pixels)
            # What Pillow will hold once decoded, from the header alone: a few hundred
            # kilobytes of PNG or JPEG can decode to gigabytes.
            check_decoded_size(img.width * img.height * _photo_bytes_per_pixel(img), 1, limits)
            img.load()  # text chunks after the image data only show up once it is read
            found = tuple(_photo_metadata(img))
            upright = ImageOps.exif_transpose(img)
            icc = img.info.get("icc_profile")
            transparency = img.info.get("transparency")
            jpeg_options = _jpeg_options(img) if kind is ImageKind.JPEG else {}
    except (ImageTooLarge, UnsupportedImage):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("the image has too many pixels") from exc
    except Exception as exc:
        raise UnsupportedImage(f"the {kind.value.upper()} image cannot be decoded") from exc
    clean = upright.copy()
    clean.info = {}  # Pillow writes a JPEG comment from info unless told otherwise
    options: dict[str, Any] = dict(jpeg_options)
    if icc:
        options["icc_profile"] = icc
    if transparency is not None and kind is ImageKind.PNG:
        options["transparency"] = transparency
    out = BytesIO()
    clean.save(out, format=pillow_format, **options)
    return DeidentifiedImage(
        kind=kind,
        rows=clean.height,
        columns=clean.width,
        frame_count=1,
        removed=found,
        photo=out.getvalue(),
        text_check=NO_HEADER_FINDINGS,
    )


# Bytes a pixel takes in Pillow's memory by mode (3-band modes are stored 4 bytes a pixel).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _photo_bytes_per_pixel(img: Image.Image) -> int:
    """Bytes a pixel takes once Pillow has decoded the image (4 for every mode not listed)."""
    return _PILLOW_PIXEL_BYTES.get(img.mode, 4)


def _jpeg_options(img: Image.Image) -> dict[str, Any]:
    options: dict[str, Any] = {"quality": 95}
    if isinstance(img, JpegImagePlugin.JpegImageFile) and img.quantization:
        options = {"qtables": img.quantization}
        sampling = JpegImagePlugin.get_sampling(img)
        if sampling != -1:
            options["subsampling"] = sampling
    return options


# info keys Pillow fills from structure rather than metadata; re-derived or not worth listing.
_STRUCTURAL_INFO = frozenset(
    {"icc_profile", "transparency", "dpi", "aspect", "gamma", "chromaticity", "srgb", "jfif",
     "jfif_version", "jfif_unit", "jfif_density", "adobe", "adobe_transform", "progressive",
     "progression", "interlace", "default_image", "loop", "duration", "disposal", "blend",
     "bbox"}
)  # fmt: skip


def _photo_metadata(img: Image.Image) -> Iterator[Removal]:
    """Name the metadata the re-encode drops (names only: text chunk values may identify)."""
    exif = img.getexif()
    if len(exif):
        yield Removal("EXIF", "Exif", "removed")
        if exif.get_ifd(0x8825):  # the GPS IFD
            yield Removal("EXIF", "GPSInfo", "removed")
    for key in img.info:
        if key in _STRUCTURAL_INFO or key == "exif":
            continue
        yield Removal(img.format or "image", str(key)[:64], "removed")
    for marker, payload in getattr(img, "applist", []):
        if marker.startswith("APP") and marker not in ("APP0", "APP14"):
            name = payload.split(b"\x00", 1)[0][:32].decode("latin-1")
            if name != "Exif" and not name.startswith("ICC_PROFILE"):
                yield Removal(f"JPEG {marker}", name or marker, "removed")
