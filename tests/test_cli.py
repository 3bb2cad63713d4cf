"""The `consilium` command as a user runs it (real `consilium serve` processes), and its parser
and what its commands print, checked without a process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consilium.cli import build_parser
from consilium.commands.audit import entry_line
from consilium.commands.client import query, with_client
from consilium.commands.folders import data_dir, key_dir
from consilium.commands.recordings import (
    VERIFY_BUNDLE_NOT_AUTHENTICATED,
    bundle_verdict,
    verify_verdict,
)
from consilium.commands.retention import cmd_retention_run
from recorder.bundle import BundleReport
from signaling.audit import AuditEntry
from signaling.devidp import DevelopmentIdP
from tests.fixtures.servers import REPO, close_code, free_port, next_message

SUBCOMMANDS = [
    ["serve"], ["token"], ["audit"], ["audit", "verify"], ["audit", "show"], ["keys"],
    ["keys", "list"], ["keys", "export-audit-public"], ["keys", "rotate"], ["keys", "data"],
    ["revoke"], ["policy"], ["policy", "show"], ["bot"], ["watermark"], ["watermark", "identify"],
    ["recordings"], ["recordings", "verify-bundle"], ["retention"], ["retention", "run"],
]  # fmt: skip


def consilium(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "consilium.cli", *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(args: list[str]) -> None:
    result = consilium(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: consilium" in result.stdout


# -- the parser and what the commands print: no process, no event loop ----------------------------


def leaf_commands(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every runnable command line (`keys rotate`, `bot`, ...) with the handler it dispatches to."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path.strip(), parser.get_default("func")
        return
    for name, sub in groups[0].choices.items():
        yield from leaf_commands(sub, f"{path} {name}")


def test_every_command_runs_a_handler() -> None:
    commands = dict(leaf_commands(build_parser()))
    assert len(commands) == 23, sorted(commands)
    for name, handler in commands.items():
        assert callable(handler), f"`consilium {name}` has no handler"


def test_help_lists_the_commands_in_their_order() -> None:
    listed = [name for name, _ in leaf_commands(build_parser())]
    firsts = list(dict.fromkeys(name.split()[0] for name in listed))
    assert firsts == ["serve", "token", "audit", "keys", "revoke", "policy", "watermark",
                      "recordings", "retention", "bot", "doctor", "drain"]  # fmt: skip
    assert [n for n in listed if n.startswith("keys ")] == [
        "keys list", "keys export-audit-public", "keys rotate", "keys data"
    ]  # fmt: skip


def test_building_the_command_line_loads_no_media_stack() -> None:
    # `consilium --help` and the quick commands must not wait for aiortc, av or numpy.
    probe = "import sys; from consilium.cli import build_parser; build_parser(); " + (
        "print(sorted({'aiortc', 'av', 'numpy', 'aiohttp'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_key_folder_defaults_to_keys_under_the_data_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONSILIUM_KEY_DIR", raising=False)
    monkeypatch.setenv("CONSILIUM_DATA_DIR", "/srv/consilium")
    args = argparse.Namespace(data_dir=None, key_dir=None)
    assert data_dir(args) == Path("/srv/consilium")
    assert key_dir(args) == Path("/srv/consilium/keys")
    monkeypatch.setenv("CONSILIUM_KEY_DIR", "/etc/consilium/keys")
    assert key_dir(args) == Path("/etc/consilium/keys")
    flagged = argparse.Namespace(data_dir="/data", key_dir="/keys")
    assert (data_dir(flagged), key_dir(flagged)) == (Path("/data"), Path("/keys"))


def test_archive_search_leaves_out_criteria_not_given() -> None:
    assert query(room="mdt 1", since=None, case=2) == "?room=mdt+1&case=2"
    assert query(room=None) == ""


def test_audit_show_line_names_who_where_and_why() -> None:
    entry = AuditEntry(
        seq=12,
        ts="2026-11-25T10:00:00.000Z",
        action="join_refused",
        outcome="deny",
        sub=None,
        room="mdt-1",
        reason="origin_not_allowed",
        fields={"ip": "192.0.2.7", "jti": None},
        prev="0" * 64,
        hash="1" * 64,
    )
    assert entry_line(entry) == (
        "     12 2026-11-25T10:00:00.000Z join_refused       deny  sub=- room=mdt-1 "
        "reason=origin_not_allowed ip=192.0.2.7"
    )


def test_recording_that_stopped_by_itself_says_where_and_why() -> None:
    report = {"ok": True, "status": "failed", "stopped_at_ms": 62_003, "failure": "disk_full",
              "segments_checked": 31, "interrupted": False, "problems": []}  # fmt: skip
    (line,) = verify_verdict("rec-1", report)
    assert line.startswith("FAILED AT 01:02.003 (disk_full): rec-1: the recording stopped there")
    assert "the 31 segments before it verified" in line


def test_verify_notes_crash_recovery_and_lists_every_problem() -> None:
    intact = {"ok": True, "segments_checked": 4, "interrupted": True, "problems": []}
    assert verify_verdict("rec-2", intact) == [
        "OK: rec-2: 4 segments verified, manifest signed and in the audit log "
        "(interrupted: closed by crash recovery)"
    ]
    broken = {"ok": False, "segments_checked": 1, "interrupted": False,
              "problems": ["segment 2: tag mismatch", "manifest: bad signature"]}  # fmt: skip
    assert verify_verdict("rec-3", broken) == [
        "FAILED: rec-3", "  - segment 2: tag mismatch", "  - manifest: bad signature"
    ]  # fmt: skip


def test_bundle_whole_but_signer_unchecked_is_not_called_authentic() -> None:
    bundle = Path("case-1.bundle")
    status, lines = bundle_verdict(BundleReport(bundle, fingerprint="SHA256:ab"))
    assert status == VERIFY_BUNDLE_NOT_AUTHENTICATED == 3
    assert lines[0].startswith("INTACT, AUTHENTICITY NOT ESTABLISHED: case-1.bundle:")
    status, lines = bundle_verdict(
        BundleReport(bundle, fingerprint="SHA256:ab", authenticated=True)
    )
    assert status == 0 and lines == [
        "OK: case-1.bundle: every member matches and it is signed by the expected key SHA256:ab"
    ]
    failed = BundleReport(bundle, authenticated=True, problems=["media.webm: hash differs"])
    assert bundle_verdict(failed) == (1, ["FAILED: case-1.bundle", "  - media.webm: hash differs"])


def test_archive_command_without_a_token_exits_1_saying_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONSILIUM_TOKEN", raising=False)
    args = argparse.Namespace(server=None, token=None, cacert=None)
    assert with_client(cmd_retention_run)(args) == 1
    said = capsys.readouterr().err
    assert said == "error: give --token or set CONSILIUM_TOKEN (your own token)\n"


def test_plain_http_off_loopback_is_refused(tmp_path: Path) -> None:
    result = consilium("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_unknown_role_token_is_refused(tmp_path: Path) -> None:
    result = consilium("token", "--data-dir", str(tmp_path), "--sub", "x", "--role", "wizard")
    assert result.returncode == 2 and "unknown role" in result.stderr


async def test_fresh_serve_runs_in_development_mode_and_token_joins(serve_process: Any) -> None:
    serve = serve_process()
    out = serve.output()
    assert "DEVELOPMENT MODE" in out and "consilium token" in out
    assert f"Open {serve.url}/" in out
    token = consilium(
        "token", "--data-dir", str(serve.data_dir), "--sub", "dr-li", "--role", "chair",
        "--dept", "cardiology", "--room", "mdt-1",
    ).stdout.strip()  # fmt: skip
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(serve.url.replace("http", "ws") + "/ws")
        await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
        joined = await next_message(ws, "joined")
        assert joined["you"]["sub"] == "dr-li"
        await ws.close()
    assert token not in serve.output(), "a token reached the server's log"


async def test_audit_verify_after_shutdown_then_tamper(serve_process: Any) -> None:
    serve = serve_process()
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            ws = await http.ws_connect(serve.url.replace("http", "ws") + "/ws")
            token = idp.mint(sub=f"dr-{i}", role="chair", depts=["cardiology"], rooms=["mdt-1"])
            await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
            await next_message(ws, "joined")
            await ws.close()
        ws = await http.ws_connect(serve.url.replace("http", "ws") + "/ws")
        await ws.send_json({"type": "join", "token": "garbage", "room": "mdt-1"})
        assert await close_code(ws) == 4401
    assert serve.stop() == 0

    data = str(serve.data_dir)
    # The key beside the log proves nothing about who wrote it: only the key kept apart does.
    unproven = consilium("audit", "verify", "--data-dir", data)
    assert unproven.returncode == 3, unproven.stderr
    assert "AUTHENTICITY NOT ESTABLISHED" in unproven.stdout
    kept_apart = serve.data_dir.parent / "audit-kept-apart.pub.pem"
    kept_apart.write_text(consilium("keys", "export-audit-public", "--data-dir", data).stdout)
    ok = consilium("audit", "verify", "--data-dir", data, "--public-key", str(kept_apart))
    assert ok.returncode == 0 and "OK: intact" in ok.stdout, ok.stderr
    shown = consilium("audit", "show", "--data-dir", data, "--sub", "dr-1", "--json")
    entries = [json.loads(line) for line in shown.stdout.splitlines()]
    assert entries and {e["sub"] for e in entries} == {"dr-1"}
    refused = consilium("audit", "show", "--data-dir", data, "--action", "join_refused")
    assert "malformed" in refused.stdout or "invalid" in refused.stdout

    segment = sorted((serve.data_dir / "audit").glob("audit-*.jsonl"))[0]
    lines = segment.read_text().splitlines()
    victim = next(i for i, line in enumerate(lines) if '"sub":"dr-1"' in line)
    lines[victim] = lines[victim].replace('"sub":"dr-1"', '"sub":"dr-9"')
    segment.write_text("\n".join(lines) + "\n")
    bad = consilium("audit", "verify", "--data-dir", data, "--public-key", str(kept_apart))
    assert bad.returncode == 1
    assert f"line {victim + 1}" in bad.stderr


def test_keys_list_and_export(serve_process: Any) -> None:
    serve = serve_process()
    listed = consilium("keys", "list", "--data-dir", str(serve.data_dir))
    assert "audit-signing" in listed.stdout and "SHA256:" in listed.stdout
    assert "dev-idp-signing" in listed.stdout
    exported = consilium("keys", "export-audit-public", "--data-dir", str(serve.data_dir))
    assert exported.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in exported.stdout


async def test_revoke_command_closes_the_connection(serve_process: Any) -> None:
    serve = serve_process()
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(serve.url.replace("http", "ws") + "/ws")
        token = idp.mint(sub="dr-lost", role="chair", depts=["cardiology"], rooms=["mdt-1"])
        await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
        await next_message(ws, "joined")
        admin = idp.mint(sub="it-1", role="admin", depts=["it"])
        started = time.monotonic()
        result = consilium(
            "revoke", "--server", serve.url, "--sub", "dr-lost", "--reason", "stolen laptop",
            "--token", admin,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert await close_code(ws, timeout=2) == 4401
        assert time.monotonic() - started < 3
        denied = consilium("revoke", "--server", serve.url, "--sub", "x", "--token", token)
        assert denied.returncode == 1 and "401" in denied.stderr


async def test_revocations_survive_a_restart(serve_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "persist"
    port = free_port()
    serve = serve_process(data_dir=data, port=port)
    idp = DevelopmentIdP.load_or_create(data)
    admin = idp.mint(sub="it-1", role="admin", depts=["it"])
    result = consilium("revoke", "--server", serve.url, "--sub", "dr-gone", "--token", admin)
    assert result.returncode == 0, result.stderr
    serve.stop()
    serve = serve_process(data_dir=data, port=free_port())
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(serve.url.replace("http", "ws") + "/ws")
        token = idp.mint(sub="dr-gone", role="chair", depts=["cardiology"], rooms=["mdt-1"])
        await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
        assert await close_code(ws) == 4401


def test_settings_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "consilium.toml"
    config.write_text("[consilium]\nport = 9001\nmax_participants_per_room = 7\n")
    env = {"PATH": "/usr/bin:/bin", "CONSILIUM_PORT": "9002"}
    result = subprocess.run(
        [sys.executable, "-c",
         "from pathlib import Path; from signaling.settings import load_settings;"
         f"s = load_settings({{}}, config_file=Path({str(config)!r}));"
         "print(s.port, s.max_participants_per_room)"],
        capture_output=True, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    assert result.stdout.split() == ["9002", "7"], result.stderr
