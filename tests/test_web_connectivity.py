"""Media that cannot connect is never silent, and the quickstart's defaults connect.

Each test runs a real `consilium serve` and real Chromium in the suite's loopback-only network
namespace. With the quickstart's defaults (HTTP on 127.0.0.1, no `ice_host_addresses`) media
must flow; when it cannot (no candidate the browser can reach), the page says so in words, the
server counts it on /metrics and logs it without names, and chat messages fail visibly.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ROOM,
    OpenTab,
    join_from_the_prejoin_screen,
    meet_through_the_lobby,
    no_page_problems,
    screenshot,
)
from tests.fixtures.servers import REPO

CATALOGUES = {
    lang: json.loads((REPO / "web" / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "zh-CN")
}


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_the_quickstart_defaults_connect_media_on_a_loopback_only_host(
    serve_process: Any, chromium: OpenTab
) -> None:
    # No CONSILIUM_ICE_HOST_ADDRESSES: the node listens on 127.0.0.1 and the namespace has no
    # other interface, so the SFU must offer loopback candidates by itself.
    serve = serve_process()
    meeting = await meet_through_the_lobby(serve, chromium)
    for tab in (meeting.chair, meeting.specialist):
        assert await tab.page.locator("#media-problem").is_hidden()
        no_page_problems(tab)


# A browser behind a firewall that lets no UDP through: every peer connection may use relays
# only, and no TURN server is configured, so ICE has nothing to try.
BLOCK_UDP = """
(() => {
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config = {}) {
    return new Original({ ...config, iceTransportPolicy: "relay" });
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""


async def test_media_that_cannot_connect_is_said_counted_and_chat_fails_visibly(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process()
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    token = idp.mint(
        sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[ROOM]
    )
    assert _metric(serve.url, 'consilium_media_failures_total{cause="no_media"}') == 0
    tab = await chromium("about:blank")
    await tab.context.add_init_script(BLOCK_UDP)
    await tab.page.goto(f"{serve.url}/join/{ROOM}#token={token}")
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'")

    # A chat message sent now can never leave: it says so, with a way to send it again.
    await tab.page.fill("#chat-text", "Case 4: is the margin clear?")
    await tab.page.press("#chat-text", "Enter")

    # Within a few seconds the room says what failed and what IT should check.
    problem = tab.page.locator("#media-problem")
    await problem.wait_for(state="visible", timeout=20_000)
    cause = await problem.get_attribute("data-cause")
    assert cause in ("ice_failed", "no_media")
    for lang in ("en", "zh-CN"):
        await tab.page.select_option("#language-select", lang)
        words = CATALOGUES[lang]
        heading = json.dumps(words[f"media.{cause}_heading"])
        await tab.until(f"document.querySelector('#media-problem h2').textContent === {heading}")
        body = await tab.page.locator("#media-problem-body").inner_text()
        assert body == words[f"media.{cause}"]
        assert ("UDP" in body and "TURN" in body) if lang == "en" else "TURN" in body
        await screenshot(tab, f"media-problem{'' if lang == 'en' else '-' + lang}")
    await tab.page.select_option("#language-select", "en")
    # The catalogue is loaded asynchronously: wait for the details line to be redrawn in English.
    await tab.until(
        "document.getElementById('media-problem-details').textContent.includes('TURN offered')"
    )
    details = await tab.page.locator("#media-problem-details").inner_text()
    assert "publish" in details and "TURN offered: no" in details

    unsent = tab.page.locator("#chat-list li.failed")
    await unsent.wait_for(state="visible", timeout=15_000)
    assert await unsent.locator(".chat-receipts").inner_text() == CATALOGUES["en"]["chat.unsent"]
    again = unsent.locator(".chat-retry")
    assert await again.inner_text() == CATALOGUES["en"]["chat.retry"]
    await again.click()
    sending = json.dumps(CATALOGUES["en"]["chat.sending"])
    await tab.until(
        f"document.querySelector('#chat-list li .chat-receipts').textContent === {sending}"
    )
    assert await tab.page.locator("#chat-list li.failed").count() == 0

    # The server counted it and logged it for IT, without the person's name or id.
    name = f'consilium_media_failures_total{{cause="{cause}"}}'
    for _ in range(25):
        if _metric(serve.url, name) >= 1:
            break
        await asyncio.sleep(0.2)
    assert _metric(serve.url, name) >= 1
    log = serve.output()
    assert "media session did not connect" in log
    assert "Dr Chen Wei" not in log and "dr-chen" not in log
    no_page_problems(tab)


async def test_the_home_page_links_to_the_dev_page_only_in_development_mode(
    serve_process: Any, chromium: OpenTab, tmp_path: Path
) -> None:
    dev = serve_process()
    home = await chromium(f"{dev.url}/")
    link = home.page.locator("#home-dev-link")
    await link.wait_for(state="visible", timeout=10_000)
    assert await link.inner_text() == CATALOGUES["en"]["home.dev_link"]
    await link.click()
    await home.until("location.pathname === '/dev'")
    await home.page.locator("#sub").wait_for(state="visible")
    no_page_problems(home)

    hospital_idp = DevelopmentIdP.load_or_create(tmp_path / "hospital-idp")
    production = serve_process(
        env={
            "CONSILIUM_JWKS": str(hospital_idp.jwks_path),
            "CONSILIUM_JWT_ISSUER": "https://idp.hospital.example",
        }
    )
    home = await chromium(f"{production.url}/")
    await home.until("document.getElementById('home-status').textContent.includes('ready')")
    assert await home.page.locator("#home-dev-link").is_hidden()


def test_the_readme_two_tab_example_has_two_people_and_says_where_consilium_is() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(
        "# Consilium\n\n```sh\npython3 -m venv .venv && .venv/bin/pip install -e . && "
        ".venv/bin/consilium serve\n./scripts/test\n```\n"
    )
    links = [line for line in readme.splitlines() if "consilium token" in line and "--link" in line]
    assert len(links) == 2 and all(line.startswith(".venv/bin/consilium ") for line in links)
    subs = [re.search(r"--sub (\S+)", line).group(1) for line in links]  # type: ignore[union-attr]
    assert len(set(subs)) == 2, subs
    assert "`.venv/bin/consilium`" in readme
