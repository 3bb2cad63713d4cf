"""The edge's error table: every error answers with its documented close code and HTTP status."""

from __future__ import annotations

import pytest

import imaging.pacs_source
import imaging.presentation_state
import imaging.sniff
import imaging.store
import recorder.holds
import recorder.keyring
import recorder.retention
import signaling.dpop
import signaling.http.device_binding
import signaling.http.routes.pacs_store
import signaling.meeting_end
import signaling.oidc
import signaling.pacs
import signaling.resume
from core import errors
from core.errors import ConsiliumError
from signaling.errors import ANSWERS, answer_of, close_code_of, http_status_of
from signaling.protocol import CLOSE_CODES, CloseCode

DOCUMENTED: dict[type[ConsiliumError], tuple[int, int]] = {
    errors.ConsiliumError: (4500, 500),
    errors.BadMessage: (4400, 400),
    errors.AuthenticationError: (4401, 401),
    errors.PolicyDenied: (4403, 403),
    errors.NotFound: (4404, 404),
    errors.TimedOut: (4408, 408),
    errors.Replaced: (4409, 409),
    errors.Conflict: (4409, 409),
    errors.PreconditionFailed: (4409, 412),
    errors.PayloadTooLarge: (4400, 413),
    errors.RateLimited: (4429, 429),
    errors.Unavailable: (4500, 503),
    errors.ServerError: (4500, 500),
    imaging.sniff.UnsupportedImage: (4400, 415),
    imaging.sniff.BurnedInAnnotation: (4400, 422),
    imaging.sniff.ImageTooLarge: (4400, 413),
    imaging.sniff.FrameNotFound: (4404, 404),
    imaging.store.UnknownImage: (4404, 404),
    imaging.store.ImageNotHeld: (4409, 409),
    imaging.store.TooManyImages: (4429, 429),
    recorder.keyring.RecordingShredded: (4404, 410),
    recorder.retention.RecordingOnHold: (4409, 409),
    recorder.retention.RecordingInProgress: (4409, 409),
    recorder.holds.NotOnHold: (4409, 409),
    signaling.resume.ResumeRefused: (4410, 410),
    signaling.meeting_end.MeetingEnded: (4411, 410),
    signaling.pacs.PacsUnavailable: (4500, 503),
    signaling.pacs.PacsNotConfigured: (4500, 503),
    imaging.pacs_source.NotFromPacs: (4409, 409),
    imaging.presentation_state.NothingToWrite: (4409, 409),
    imaging.presentation_state.UnsupportedForWriteBack: (4409, 409),
    signaling.http.routes.pacs_store.AnnotationsNotHere: (4409, 409),
    signaling.oidc.SignInError: (4401, 401),
    signaling.oidc.StepUpRequired: (4401, 401),
    signaling.dpop.InvalidDpopProof: (4401, 401),
    signaling.http.device_binding.TokenBindingRefused: (4401, 401),
}
"""Close code and HTTP status of every error class, as docs/protocol.md and clients know them."""


OUR_PACKAGES = {
    "core",
    "imaging",
    "recorder",
    "signaling",
    "sfu",
    "annotations",
    "bot",
    "consilium",
}


def every_error_class() -> set[type[ConsiliumError]]:
    found: set[type[ConsiliumError]] = set()
    todo = [ConsiliumError]
    while todo:
        cls = todo.pop()
        if cls.__module__.split(".")[0] not in OUR_PACKAGES:
            continue  # e.g. a class a test declares
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_is_in_the_documented_table() -> None:
    assert every_error_class() == set(DOCUMENTED)


@pytest.mark.parametrize("cls", sorted(DOCUMENTED, key=lambda c: c.__qualname__))
def test_error_answers_with_its_documented_close_code_and_status(
    cls: type[ConsiliumError],
) -> None:
    close_code, status = DOCUMENTED[cls]
    assert (close_code_of(cls), http_status_of(cls)) == (close_code, status)
    # An instance answers as its class does.
    error = cls("refused", room="mdt-1")
    assert (close_code_of(error), http_status_of(error)) == (close_code, status)


def test_error_codes_are_distinct_so_the_table_can_tell_them_apart() -> None:
    # Only the base shares its code: an unknown failure is a `server_error`.
    codes = [cls.code for cls in DOCUMENTED if cls is not ConsiliumError]
    assert len(codes) == len(set(codes))


def test_every_close_code_in_the_table_is_documented() -> None:
    assert {answer.close_code for answer in ANSWERS.values()} <= set(CLOSE_CODES)
    # And every error close code the protocol documents is one an error can get.
    error_codes = {code for code in CloseCode if code >= 4000}
    assert error_codes == {answer.close_code for answer in ANSWERS.values()}


def test_every_row_is_the_code_of_an_error_class() -> None:
    assert set(ANSWERS) <= {cls.code for cls in DOCUMENTED}


def test_a_new_error_answers_as_its_parent_until_it_has_a_row() -> None:
    class ScanUnreadable(imaging.sniff.UnsupportedImage):
        code = "scan_unreadable"

    assert answer_of(ScanUnreadable("no")) == ANSWERS["unsupported_image"]
    assert http_status_of(ScanUnreadable) == 415


def test_the_json_body_carries_code_message_and_details_only() -> None:
    body = recorder.keyring.RecordingShredded("shredded at 12:00", recording="r-1").to_json()
    assert body == {"error": "shredded", "message": "shredded at 12:00", "recording": "r-1"}


def test_core_errors_know_nothing_of_the_edge() -> None:
    for cls in every_error_class():
        assert not hasattr(cls, "close_code") and not hasattr(cls, "http_status"), cls
