"""The documents for hospital IT stay true: settings, example config, commands, policy, codes."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from consilium.cli import build_parser
from core.codes import ErrorCode
from signaling import settings as settings_module
from signaling.policy import Policy
from signaling.protocol import CLOSE_CODES
from signaling.settings import load_settings, settings_fields

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = REPO / "docs" / "operations.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
PROTOCOL = REPO / "docs" / "protocol.md"
README = REPO / "README.md"
DEPLOY_README = REPO / "deploy" / "README.md"
EXAMPLE_CONFIG = REPO / "deploy" / "consilium.toml.example"
SERVICE_UNIT = REPO / "deploy" / "consilium.service"

FIELD_NAMES = [f.name for f in settings_fields()]


def field_docstrings() -> dict[str, str]:
    """Each Settings field's docstring (the string right under it), whitespace collapsed."""
    source = Path(settings_module.__file__).read_text("utf-8")
    cls = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    found: dict[str, str] = {}
    for node, after in zip(cls.body, cls.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            found[node.target.id] = " ".join(after.value.value.split())
    return found


def shown_default(f: dataclasses.Field[Any]) -> str:
    """A field's default as the settings table in docs/operations.md spells it."""
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        value = f.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f'`"{value if value.is_absolute() else f"./{value}"}"`'
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def settings_rows() -> dict[str, list[str]]:
    """The settings table in docs/operations.md: setting name -> its cells."""
    rows: dict[str, list[str]] = {}
    for line in OPERATIONS.read_text("utf-8").splitlines():
        match = re.match(r"\| `([a-z0-9_]+)` \|", line)
        if match and match.group(1) in FIELD_NAMES:
            rows[match.group(1)] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a Markdown text."""
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)


def consilium_command_lines(path: Path) -> list[str]:
    """Every `consilium ...` command in a document's code blocks, continuations joined."""
    commands = []
    for block in code_blocks(path.read_text("utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and (words[0] == "consilium" or words[0].endswith("/bin/consilium")):
                commands.append(line.strip())
    return commands


# -- the settings table ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_every_setting_is_in_the_operations_guide(name: str) -> None:
    rows = settings_rows()
    assert name in rows, f"docs/operations.md has no settings row for `{name}`"
    _, env, _flag, default, meaning = rows[name]
    field = next(f for f in settings_fields() if f.name == name)
    assert env == f"`CONSILIUM_{name.upper()}`"
    assert default == shown_default(field), f"default of {name} changed; update the table"
    assert meaning == field_docstrings()[name], f"docstring of {name} changed; update the table"


def test_flags_in_the_settings_table_exist_on_serve() -> None:
    serve = subcommands(build_parser())["serve"]
    options = {option for action in serve._actions for option in action.option_strings}
    for name, cells in settings_rows().items():
        flag = cells[2].strip("`")
        assert not flag or flag in options, f"{name}: `consilium serve {flag}` does not exist"


# -- the example configuration -----------------------------------------------------------------


def test_example_config_names_only_settings() -> None:
    with EXAMPLE_CONFIG.open("rb") as fh:
        keys = set(tomllib.load(fh))
    assert keys <= set(FIELD_NAMES), f"not settings: {sorted(keys - set(FIELD_NAMES))}"


def test_example_config_shows_every_setting() -> None:
    with EXAMPLE_CONFIG.open("rb") as fh:
        keys = set(tomllib.load(fh))
    text = EXAMPLE_CONFIG.read_text("utf-8")
    for name in FIELD_NAMES:
        shown = name in keys or re.search(rf"^# {name} = ", text, re.M)
        assert shown, f"{name} is neither set nor shown commented out in the example"


def test_example_config_loads_as_a_production_node() -> None:
    # Only paths are given for the TLS files; they need not exist for the settings to load.
    settings = load_settings({}, env={}, config_file=EXAMPLE_CONFIG)
    assert settings.tls and not settings.dev_mode and settings.redis
    assert settings.jwt_issuer and settings.jwt_audience and settings.public_url


def test_service_unit_writes_only_the_example_data_dir_and_stops_gracefully() -> None:
    with EXAMPLE_CONFIG.open("rb") as fh:
        data_dir = tomllib.load(fh)["data_dir"]
    unit = SERVICE_UNIT.read_text("utf-8")
    assert f"ReadWritePaths={data_dir}\n" in unit
    assert "ProtectSystem=strict\n" in unit and "KillSignal=SIGTERM\n" in unit
    assert "--config /etc/consilium/consilium.toml" in unit


# -- commands ----------------------------------------------------------------------------------


def test_every_command_in_the_readme_exists() -> None:
    section = README.read_text("utf-8").split("## The command", 1)[1]
    table = code_blocks(section)[0]
    listed = [line.split()[1] for line in table.splitlines() if line.startswith("consilium ")]
    assert listed, "README.md lists no commands"
    available = subcommands(build_parser())
    for name in listed:
        assert name in available, f"README.md lists `consilium {name}`, which does not exist"


@pytest.mark.parametrize("path", [OPERATIONS, DEPLOY_README], ids=lambda p: p.name)
def test_every_command_line_in_the_guides_parses(path: Path) -> None:
    commands = consilium_command_lines(path)
    assert commands
    for line in commands:
        words = shlex.split(line, comments=True)[1:]
        # Drop shell redirections and pipes: they are not the command's arguments.
        for index, word in enumerate(words):
            if word.startswith((">", "|", "<")):
                words = words[:index]
                break
        try:
            build_parser().parse_args(words)
        except SystemExit:
            pytest.fail(f"{path.name}: `{line}` is not a valid consilium command")


# -- policy and close codes --------------------------------------------------------------------


def test_policy_table_in_the_guide_is_what_policy_show_prints() -> None:
    text = OPERATIONS.read_text("utf-8")
    pasted = text.split("<!-- consilium policy show: begin -->", 1)[1].split(
        "<!-- consilium policy show: end -->", 1
    )[0]
    assert pasted.strip() == Policy.load().describe().strip()


def test_every_close_code_is_in_the_protocol_document() -> None:
    if not PROTOCOL.exists():
        pytest.skip("docs/protocol.md is not written yet")
    text = PROTOCOL.read_text("utf-8")
    for code in CLOSE_CODES:
        assert re.search(rf"\b{code}\b", text), f"close code {code} missing from docs/protocol.md"


def our_packages() -> list[str]:
    """The top-level packages of ours: the import-linter contracts' root packages."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        packages: list[str] = tomllib.load(fh)["tool"]["importlinter"]["root_packages"]
    return packages


def package_section(text: str, package: str) -> str:
    """The architecture document's module table of one package: its `### `package/`` section."""
    heading = f"\n### `{package}/`"
    assert heading in text, f"docs/architecture.md has no section `### `{package}/``"
    section = text.split(heading, 1)[1]
    return re.split(r"^##+ ", section, maxsplit=1, flags=re.M)[0]


@pytest.mark.parametrize("package", our_packages())
def test_every_module_is_in_the_architecture_document(package: str) -> None:
    # Each module by its path inside the package (`http/routes/archive.py` in signalling's table,
    # `archive.py` in the recorder's), in its package's section: a module added, moved or split
    # without a row fails here, so the document cannot go stale silently.
    section = package_section(ARCHITECTURE.read_text("utf-8"), package)
    root = REPO / package
    missing = [
        module.relative_to(root).as_posix()
        for module in sorted(root.rglob("*.py"))
        if module.name != "__init__.py"
        and f"`{module.relative_to(root).as_posix()}`" not in section
    ]
    assert not missing, f"docs/architecture.md's `{package}/` table lacks {missing}"


@pytest.mark.parametrize("package", our_packages())
def test_every_module_the_architecture_document_names_exists(package: str) -> None:
    # The other way round: a row for a module that was moved, renamed or split away is stale.
    section = package_section(ARCHITECTURE.read_text("utf-8"), package)
    named = [
        name
        for row in re.findall(r"^\| ([^|]+) \|", section, re.M)
        for name in re.findall(r"`([\w/]+\.py)`", row)
    ]
    assert named, f"docs/architecture.md's `{package}/` table names no module"
    gone = [name for name in named if not (REPO / package / name).is_file()]
    assert not gone, (
        f"docs/architecture.md's `{package}/` table names modules that are not there: {gone}"
    )


def test_every_in_room_error_code_is_in_the_protocol_document() -> None:
    text = PROTOCOL.read_text("utf-8")
    for code in ErrorCode:
        assert f"| `{code}` |" in text, f"error code {code} missing from docs/protocol.md"


# Where the web client shows each code in words: the room's notice (`room.error_<code>`, chosen in
# web/js/call.js) for requests outside the recording, the recording panel
# (`recording.error_<code>`, web/js/recording.js) for requests about it; a code may answer both.
_SHOWN_IN_ROOM = {
    ErrorCode.ALREADY_JOINED,
    ErrorCode.NOT_ADMITTED,
    ErrorCode.NOT_ALLOWED,
    ErrorCode.NOT_FOUND,
    ErrorCode.MEDIA_UNAVAILABLE,
    ErrorCode.BAD_MEDIA_REQUEST,
    ErrorCode.MEDIA_FAILED,
    ErrorCode.CODEC_UNSUPPORTED,
    ErrorCode.RECEIVE_CODEC_UNSUPPORTED,
}
_SHOWN_IN_RECORDING = {
    ErrorCode.NOT_ALLOWED,
    ErrorCode.NOT_FOUND,
    ErrorCode.RECORDING_UNAVAILABLE,
    ErrorCode.RECORDING_RUNNING,
    ErrorCode.NOT_RECORDING,
    ErrorCode.CONSENT_MISSING,
    ErrorCode.RECORDING_FAILED,
}
# Codes the client recovers from without a word (web/js/call.js).
_RECOVERED_SILENTLY = {ErrorCode.DATA_CHANNEL_CLOSED}


@pytest.mark.parametrize("language", ["en", "zh-CN"])
def test_every_in_room_error_code_has_words_in_each_language(language: str) -> None:
    catalogue = json.loads((REPO / "web" / "i18n" / f"{language}.json").read_text("utf-8"))
    call = (REPO / "web" / "js" / "call.js").read_text("utf-8")
    assert "`room.error_${code}`" in call, "web/js/call.js no longer shows a code's own words"
    for code in ErrorCode:
        shown = code in _SHOWN_IN_ROOM or code in _SHOWN_IN_RECORDING
        assert shown or code in _RECOVERED_SILENTLY, f"say where the web client shows {code}"
        if code in _RECOVERED_SILENTLY:
            assert f'"{code}"' in call, f"web/js/call.js no longer handles {code}"
        if code in _SHOWN_IN_ROOM:
            assert catalogue.get(f"room.error_{code}"), f"{language} lacks room words for {code}"
        if code in _SHOWN_IN_RECORDING:
            words = catalogue.get(f"recording.error_{code}")
            assert words, f"{language} lacks recording words for {code}"
