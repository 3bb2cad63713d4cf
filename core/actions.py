"""The actions the policy decides, named once: every part checks permissions by these names."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """One action a token's roles may allow; the value is the name tokens, tables and docs use.

    Declared in the order the policy table and the docs list them. A `StrEnum`: a member equals
    its name as a string, so a set of permission strings answers `Action.ANNOTATE in permissions`.
    """

    JOIN_ROOM = "join_room"
    PUBLISH_AUDIO = "publish_audio"
    PUBLISH_VIDEO = "publish_video"
    SHARE_SCREEN = "share_screen"
    SHARE_IMAGE = "share_image"
    PACS_WRITE = "pacs_write"
    ANNOTATE = "annotate"
    MODERATE_ANNOTATIONS = "moderate_annotations"
    ADMIT = "admit"
    MUTE_OTHERS = "mute_others"
    REMOVE_PARTICIPANT = "remove_participant"
    START_RECORDING = "start_recording"
    STOP_RECORDING = "stop_recording"
    LIST_RECORDINGS = "list_recordings"
    PLAY_RECORDING = "play_recording"
    EXPORT_RECORDING = "export_recording"
    HOLD_RECORDING = "hold_recording"
    MANAGE_KEYS = "manage_keys"
    RUN_RETENTION = "run_retention"
    READ_AUDIT = "read_audit"
    REVOKE = "revoke"
    SCHEDULE_MEETINGS = "schedule_meetings"
