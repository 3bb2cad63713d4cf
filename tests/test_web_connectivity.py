"""Media that cannot connect is never silent, and the quickstart's defaults connect.

Each test runs a real `consilium serve` and real Chromium in the suite's loopback-only network
namespace. With the quickstart's defaults (HTTP on 127.0.0.1, no `ice_host_addresses`) media
must flow; when it cannot (no candidate the browser can reach), the page says so in words, the
server counts it on /metrics and logs it without names, and chat messages fail visibly.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

from tests.fixtures.browser import OpenTab, meet_through_the_lobby, no_page_problems
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
