"""The logger names docs/operations.md lists ("Logger names") are the ones the code logs under:
hospital IT filters the JSON log lines by their `logger` key."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPERATIONS = REPO / "docs" / "operations.md"


def _packages() -> list[str]:
    """Our packages: the ones mypy checks (pyproject.toml, [tool.mypy])."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(config["tool"]["mypy"]["packages"])


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def loggers_in_code() -> dict[str, set[str]]:
    """Each logger name passed to `logging.getLogger` in our packages → the modules using it
    (`__name__` is the module's own name; the root logger, `getLogger()`, is left out)."""
    found: dict[str, set[str]] = {}
    for package in _packages():
        for path in sorted((REPO / package).rglob("*.py")):
            module = _module_name(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"
                    and node.args
                ):
                    continue
                arg = node.args[0]
                if isinstance(arg, ast.Name) and arg.id == "__name__":
                    name = module
                elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    name = arg.value
                else:
                    raise AssertionError(f"{module}: a logger name the docs cannot list")
                found.setdefault(name, set()).add(module)
    return found


def loggers_in_docs() -> set[str]:
    """The names in the first column of the "Logger names" table of docs/operations.md."""
    text = OPERATIONS.read_text()
    assert "### Logger names" in text, "docs/operations.md has no `### Logger names` section"
    section = text.split("### Logger names", 1)[1].split("\n#", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_.]+)`", line.split("|")[1]))
    return names


def test_the_code_finds_the_loggers_it_should() -> None:
    found = loggers_in_code()
    assert "signaling.rooms" in found["consilium.rooms"]
    assert found["signaling.keysources"] == {"signaling.keysources"}


def test_every_logger_the_code_uses_is_in_the_operations_guide() -> None:
    missing = set(loggers_in_code()) - loggers_in_docs()
    assert not missing, f"docs/operations.md's logger table lacks {sorted(missing)}"


def test_every_logger_the_operations_guide_lists_is_used() -> None:
    gone = loggers_in_docs() - set(loggers_in_code())
    assert not gone, f"docs/operations.md lists loggers nothing logs under: {sorted(gone)}"
