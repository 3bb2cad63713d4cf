"""`consilium watermark identify`: find out whom a leaked image was shown to."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from consilium.commands.folders import DEFAULT_DATA_DIR, data_dir
from consilium.commands.usage import UsageError


def cmd_watermark_identify(args: argparse.Namespace) -> int:
    """Name the viewer, room and time hidden in a served image; exit 1 if it carries no mark."""
    # Imported here: imaging pulls in numpy and the image decoders, which `consilium --help`
    # and the other commands should not wait for.
    from imaging.sniff import DEFAULT_LIMITS, ImageTooLarge, UnsupportedImage
    from imaging.watermark import identify, load_watermark_key

    key = load_watermark_key(data_dir(args))  # never created here: a new key finds nothing
    try:
        with open(args.file, "rb") as image:
            data = image.read(DEFAULT_LIMITS.max_bytes + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc}") from None
    if len(data) > DEFAULT_LIMITS.max_bytes:
        raise UsageError(f"{args.file} is larger than any image Consilium serves")
    try:
        mark = identify(data, key)
    except (UnsupportedImage, ImageTooLarge) as exc:
        raise UsageError(f"{args.file}: {exc.message}") from None
    if mark is None:
        if args.json:
            print(json.dumps({"found": False}))
        else:
            print(f"no watermark found in {args.file} (under this server's key)", file=sys.stderr)
        return 1
    found = {
        "found": True,
        "viewer": mark.viewer,
        "room": mark.room,
        "time": mark.time.isoformat().replace("+00:00", "Z"),
        "truncated": mark.truncated,
    }
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
    else:
        cut = " (cut short)" if mark.truncated else ""
        print(f"viewer: {mark.viewer}{cut}\nroom:   {mark.room}\ntime:   {found['time']}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium watermark identify FILE`."""
    mark = sub.add_parser("watermark", help="find out whom a leaked image was shown to")
    mark_sub = mark.add_subparsers(dest="watermark_command", required=True, metavar="ACTION")
    midentify = mark_sub.add_parser(
        "identify", help="print the viewer, room and time hidden in a served image"
    )
    midentify.add_argument("file", type=Path, help="the PNG or JPEG image")
    midentify.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    midentify.add_argument("--json", action="store_true", help="print one JSON object")
    midentify.set_defaults(func=cmd_watermark_identify)
