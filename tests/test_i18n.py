"""The language catalogues: same keys in every language, nothing empty, nothing hard-coded.

Every user-visible string of the web client lives in web/i18n/<lang>.json. The page and the
modules reach it only through `data-i18n` / `data-i18n-label` keys and `t("key")` lookups; this
checks that statically (text nodes of index.html, and string literals written into the page by
the modules).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "web"
LANGUAGES = ("en", "zh-CN")
USER_VISIBLE_ATTRIBUTES = ("title", "alt", "placeholder", "aria-label", "aria-description")
# Written into the page by JavaScript: assigning a literal to one of these is hard-coded text.
TEXT_SINKS = re.compile(
    r"\.(textContent|innerText|innerHTML|outerHTML|title|placeholder|ariaLabel)\s*=\s*"
    r"(?P<q>[\"'`])(?P<text>(?:(?!(?P=q)).)*)(?P=q)"
)
ATTRIBUTE_SINK = re.compile(
    r"setAttribute\(\s*[\"'](aria-label|title|placeholder|alt)[\"']\s*,\s*[\"'`](?P<text>[^\"'`]*)"
)
ELEMENT_TEXT = re.compile(r"\.(append|prepend|replaceChildren|before|after)\(\s*[\"'`][^\"'`]*\w")
LETTER = re.compile(r"[^\W\d_]")
NEW_OPTION = re.compile(r"new Option\(\s*[\"'`]")
T_CALL = re.compile(r"\bt\(\s*[\"']([\w.-]+)[\"']")
TEMPLATE_KEY = re.compile(r"\bt\(\s*`([\w.-]*)\$\{")


def _catalogue(lang: str) -> dict[str, str]:
    return dict(json.loads((WEB / "i18n" / f"{lang}.json").read_text(encoding="utf-8")))


def _modules() -> list[Path]:
    return sorted((WEB / "js").glob("*.js"))


class _PageText(HTMLParser):
    """Collects the page's text nodes, its i18n keys and literal user-visible attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.keys: set[str] = set()
        self.attributes: list[tuple[str, str, str]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in ("data-i18n", "data-i18n-label") and value:
                self.keys.add(value)
            if name in USER_VISIBLE_ATTRIBUTES and value:
                self.attributes.append((tag, name, value))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.text.append(data.strip())


def _hard_coded(code: str) -> bool:
    """Whether a line of JavaScript writes literal text into the page."""
    for match in TEXT_SINKS.finditer(code):
        # Punctuation between looked-up strings (" · ") is not text; words are.
        if LETTER.search(re.sub(r"\$\{[^}]*\}", "", match.group("text"))):
            return True
    return any(pattern.search(code) for pattern in (ATTRIBUTE_SINK, ELEMENT_TEXT, NEW_OPTION))


def _page() -> _PageText:
    parser = _PageText()
    parser.feed((WEB / "index.html").read_text(encoding="utf-8"))
    return parser


def test_every_language_has_the_same_keys() -> None:
    english = _catalogue("en")
    for lang in LANGUAGES[1:]:
        other = _catalogue(lang)
        assert sorted(set(english) - set(other)) == [], f"missing in {lang}"
        assert sorted(set(other) - set(english)) == [], f"only in {lang}"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_no_catalogue_value_is_empty(lang: str) -> None:
    empty = [key for key, value in _catalogue(lang).items() if not str(value).strip()]
    assert empty == []


@pytest.mark.parametrize("lang", LANGUAGES)
def test_placeholders_match_between_languages(lang: str) -> None:
    english = _catalogue("en")
    for key, value in _catalogue(lang).items():
        assert set(re.findall(r"\{\w+\}", value)) == set(re.findall(r"\{\w+\}", english[key])), key


def test_the_page_has_no_hard_coded_text() -> None:
    page = _page()
    assert page.text == [], "text in web/index.html must come from data-i18n keys"
    assert page.attributes == [], "labels in web/index.html must come from data-i18n-label keys"


def test_the_modules_write_no_literal_text_into_the_page() -> None:
    problems = []
    for module in _modules():
        for number, line in enumerate(module.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("//", 1)[0] if not line.lstrip().startswith("//") else ""
            if _hard_coded(code):
                problems.append(f"{module.name}:{number}: {line.strip()}")
    assert problems == []


def test_every_key_the_client_uses_is_in_the_catalogue() -> None:
    english = _catalogue("en")
    used = set(_page().keys)
    prefixes = set()
    for module in _modules():
        source = module.read_text(encoding="utf-8")
        used.update(T_CALL.findall(source))
        prefixes.update(TEMPLATE_KEY.findall(source))
    assert sorted(used - set(english)) == []
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in english), prefix


def test_the_checker_catches_hard_coded_text() -> None:
    """The static checks above are not vacuous."""
    assert _hard_coded('label.textContent = "Waiting";')
    assert _hard_coded("label.textContent = `Room ${id}`;")
    assert not _hard_coded('label.textContent = "";')
    assert not _hard_coded("label.textContent = `${who} · ${mic}`;")
    assert _hard_coded('label.textContent = "等待";')
    assert not _hard_coded('label.textContent = t("lobby.waiting");')
    assert _hard_coded('b.setAttribute("aria-label", "Mute");')
    assert _hard_coded('li.append("Admit");')
    assert _hard_coded('select.append(new Option("Default", ""));')
    parser = _PageText()
    parser.feed("<p>Hello</p><button aria-label='Go'></button><script>x = 1</script>")
    assert parser.text == ["Hello"]
    assert parser.attributes == [("button", "aria-label", "Go")]
