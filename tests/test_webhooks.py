"""Signed webhooks: the HIS hears of meetings, participants, recordings and refused consent as
signed JSON POSTs, checked here by a real aiohttp receiver on loopback with the exact
verification recipe docs/operations.md gives hospital IT; failures are retried with the same
event id, refusals dead-lettered, and in a cluster each event comes from one node only."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from core.errors import ConfigError
from signaling import webhookformat as wf
from signaling.auditformat import AuditEntry
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER
from signaling.webhooks import DEAD_LETTER_FILE, load_subscribers
from tests.fixtures.metrics import samples
from tests.fixtures.servers import REPO, eventually, free_port, node_settings, running_node

SECRET = b"whsec-test-0123456789abcdef0123"


def docs_recipe() -> Callable[..., bool]:
    """`verify_webhook` exactly as docs/operations.md prints it."""
    text = (REPO / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    recipe = next(block for block in blocks if "def verify_webhook" in block)
    namespace: dict[str, Any] = {}
    exec(compile(recipe, "docs/operations.md", "exec"), namespace)
    return namespace["verify_webhook"]  # type: ignore[no-any-return]


# --- the rules, without a loop ----------------------------------------------------------------


def audit_entry(action: str, outcome: str = "info", **fields: Any) -> AuditEntry:
    return AuditEntry(
        seq=3, ts="2026-12-07T09:00:00.000Z", action=action, outcome=outcome,
        sub=fields.pop("sub", None), room=fields.pop("room", "mdt-1"),
        reason=fields.pop("reason", None), fields=fields, prev="0" * 64, hash="ab" * 32,
    )  # fmt: skip


def test_audited_happenings_become_events_with_identifiers_only() -> None:
    joined = wf.event_for(
        audit_entry("join", "allow", sub="dr-li", participant="p-1", role="chair",
                    jti="j-secretish", ip="10.0.0.7"),
        "node-a",
    )  # fmt: skip
    assert joined is not None and joined.type == "participant.joined"
    assert joined.id == "evt_" + "ab" * 16 and joined.room == "mdt-1" and joined.node == "node-a"
    assert joined.data == {"sub": "dr-li", "participant": "p-1", "role": "chair"}
    refused = wf.event_for(
        audit_entry("recording_consent", "deny", sub="dr-li", decision="declined",
                    method="button", recording="rec-1"),
        "node-a",
    )  # fmt: skip
    assert refused is not None and refused.type == "consent.refused"
    assert refused.data == {"sub": "dr-li", "recording": "rec-1", "method": "button"}
    ready = wf.event_for(
        audit_entry("recording_stopped", recording="rec-1", manifest_sha256="cd" * 32), "n"
    )
    assert ready is not None and ready.type == "recording.ready"
    assert wf.event_for(audit_entry("recording_consent", "allow", sub="dr-li"), "n") is None
    assert wf.event_for(audit_entry("join_refused", "deny", sub="x"), "n") is None
    assert wf.event_for(audit_entry("image_viewed", "allow", sub="x"), "n") is None


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    verify_webhook = docs_recipe()
    body = b'{"id":"evt_1","type":"meeting.started"}'
    headers = wf.headers("evt_1", (SECRET,), 1_765_000_000.7, body)
    assert headers[wf.TIMESTAMP_HEADER] == "1765000000"
    assert wf.verify(SECRET, "1765000000", headers[wf.SIGNATURE_HEADER], body, 1_765_000_100)
    assert verify_webhook(SECRET, headers, body, now=1_765_000_100)
    assert not verify_webhook(
        SECRET, headers, body.replace(b"started", b"ended"), now=1_765_000_100
    )
    assert not verify_webhook(b"another-secret-0123456789", headers, body, now=1_765_000_100)
    assert not verify_webhook(SECRET, headers, body, now=1_765_000_000 + 301)  # replayed later
    assert not verify_webhook(SECRET, headers, body, now=1_765_000_000 - 301)
    # Replacing the secret: signed with both, either verifies; the header alone proves nothing.
    new = b"whsec-next-fedcba9876543210fedc"
    both = wf.headers("evt_1", (new, SECRET), 1_765_000_000, body)
    assert both[wf.SIGNATURE_HEADER].count("v1=") == 2
    assert verify_webhook(SECRET, both, body, now=1_765_000_100)
    assert verify_webhook(new, both, body, now=1_765_000_100)
    assert not verify_webhook(b"whsec-other-0123456789abcdef", both, body, now=1_765_000_100)


def test_retries_back_off_with_jitter_and_stop() -> None:
    low = [wf.retry_delay(attempt, 0.0) for attempt in range(1, wf.MAX_ATTEMPTS)]
    high = [wf.retry_delay(attempt, 0.999) for attempt in range(1, wf.MAX_ATTEMPTS)]
    assert low[:4] == [0.5, 1.0, 2.0, 4.0]
    pairs = zip(low, high, strict=True)
    assert all(h is not None and lo is not None and lo < h <= 2 * lo for lo, h in pairs)
    assert max(h for h in high if h is not None) <= wf.MAX_RETRY_S
    assert wf.retry_delay(wf.MAX_ATTEMPTS, 0.5) is None
    assert [wf.retryable(s) for s in (None, 500, 503, 408, 429, 400, 401, 404, 410)] == [
        True, True, True, True, True, False, False, False, False,
    ]  # fmt: skip


def test_a_subscriber_needs_https_known_events_and_a_real_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    [sub] = load_subscribers([f"https://his.example/hooks {secret} meeting.started"])
    assert sub.secrets == (SECRET,) and sub.events == {"meeting.started"}
    [every] = load_subscribers([f"http://127.0.0.1:9/hooks {secret}"])
    short = tmp_path / "short"
    short.write_bytes(b"hunter2\n")
    assert every.events == set(wf.EVENT_TYPES)
    for bad, why in (
        (f"http://his.example/hooks {secret}", "must be https"),
        (f"https://his.example/hooks {secret} meeting.paused", "unknown event"),
        (f"https://his.example/hooks {tmp_path / 'none'}", "cannot read the secret"),
        (f"https://his.example/hooks {short}", "1 to 2 secrets of at least 16 bytes"),
        ("https://his.example/hooks", "is not 'URL SECRET_FILE"),
    ):
        with pytest.raises(ConfigError, match=why):
            load_subscribers([bad])


# --- a real receiver --------------------------------------------------------------------------


@dataclass
class Receiver:
    """An aiohttp server on loopback that records each delivery and answers as told."""

    url: str
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    """Statuses to answer with, in order; 200 once they run out."""
    held: asyncio.Event | None = None
    """While set to an unset event, every request waits for it (a receiver that hangs)."""

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.deliveries]


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    got = Receiver(f"http://127.0.0.1:{port}/hooks")

    async def hooks(request: web.Request) -> web.Response:
        body = await request.read()
        if got.held is not None:
            await got.held.wait()
        got.deliveries.append((dict(request.headers), body))
        return web.Response(status=got.answers.pop(0) if got.answers else 200)

    app = web.Application()
    app.router.add_post("/hooks", hooks)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield got
    finally:
        await runner.cleanup()


def subscription(tmp_path: Path, url: str, *events: str) -> list[str]:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    return [" ".join([url, str(secret), *events])]


async def test_a_meeting_reaches_the_his_signed_and_without_names(tmp_path: Path) -> None:
    verify_webhook = docs_recipe()
    async with receiver() as his:
        settings = node_settings(
            tmp_path / "data", media=False, webhooks=subscription(tmp_path, his.url)
        )
        async with running_node(settings) as node:
            chair, joined = await node.join("dr-chair", "chair")
            assert joined["type"] == "joined"
            heart, _ = await node.join("dr-heart", "specialist")
            await heart.close()
            await eventually(lambda: len(his.deliveries) >= 4, timeout=10)
            await chair.close()
            await eventually(lambda: len(his.deliveries) >= 6, timeout=10)
    kinds = [(e["type"], e["data"].get("sub")) for e in his.events()]
    assert sorted(kinds, key=str) == sorted([
        ("meeting.started", "dr-chair"), ("participant.joined", "dr-chair"),
        ("participant.joined", "dr-heart"), ("participant.left", "dr-heart"),
        ("participant.left", "dr-chair"), ("meeting.ended", None),
    ], key=str)  # fmt: skip
    for headers, body in his.deliveries:
        assert verify_webhook(SECRET, headers, body)
        event = json.loads(body)
        assert headers[wf.ID_HEADER] == event["id"] and event["room"] == "mdt-1"
        assert event["node"] == settings.node_id
        # The token carried display names ("Dr-Chair"); only subject ids leave.
        assert b"Dr-Chair" not in body and b"Dr-Heart" not in body
    # A body changed on the way no longer verifies.
    headers, body = his.deliveries[0]
    assert not verify_webhook(SECRET, headers, body.replace(b"mdt-1", b"mdt-2"))


async def test_a_receiver_that_hangs_holds_up_no_one(tmp_path: Path) -> None:
    async with receiver() as his:
        his.held = asyncio.Event()
        settings = node_settings(
            tmp_path / "data", media=False, webhooks=subscription(tmp_path, his.url)
        )
        async with running_node(settings) as node:
            for sub, role in (("dr-chair", "chair"), ("dr-a", "specialist"),
                              ("dr-b", "specialist"), ("dr-c", "specialist")):  # fmt: skip
                _, joined = await node.join(sub, role)
                assert joined["type"] == "joined"  # each answered while the HIS hangs
            assert his.deliveries == []
            his.held.set()
            await eventually(lambda: len(his.deliveries) >= 5, timeout=10)
            kinds = sorted(e["type"] for e in his.events())
    assert kinds == ["meeting.started"] + ["participant.joined"] * 4


async def test_a_failing_receiver_gets_the_same_event_on_the_third_attempt(
    tmp_path: Path,
) -> None:
    verify_webhook = docs_recipe()
    async with receiver() as his:
        his.answers = [500, 503]
        settings = node_settings(
            tmp_path / "data", media=False,
            webhooks=subscription(tmp_path, his.url, "meeting.started"),
        )  # fmt: skip
        async with running_node(settings) as node:
            await node.join("dr-chair", "chair")
            await eventually(lambda: len(his.deliveries) >= 3, timeout=15)
            assert node.node is not None
            await eventually(lambda: node.node.webhooks.delivered == 1, timeout=5)  # type: ignore[union-attr]
            http = await node.session()
            async with http.get(f"{node.url}/metrics") as response:
                metrics = samples(await response.text())
            assert metrics["consilium_webhooks_delivered_total"] == 1
            assert metrics["consilium_webhooks_dead_lettered_total"] == 0
    assert [e["type"] for e in his.events()] == ["meeting.started"] * 3
    assert len({headers[wf.ID_HEADER] for headers, _ in his.deliveries}) == 1
    assert all(verify_webhook(SECRET, h, b) for h, b in his.deliveries)


async def test_a_refusing_receiver_is_not_retried_and_the_event_is_dead_lettered(
    tmp_path: Path,
) -> None:
    async with receiver() as his:
        his.answers = [400]
        settings = node_settings(
            tmp_path / "data", media=False,
            webhooks=subscription(tmp_path, his.url, "meeting.started"),
        )  # fmt: skip
        async with running_node(settings) as node:
            await node.join("dr-chair", "chair")
            assert node.node is not None
            await eventually(lambda: node.node.webhooks.dead_lettered == 1, timeout=10)  # type: ignore[union-attr]
            await asyncio.sleep(1.5)  # a retry would come within 1 s
    assert len(his.deliveries) == 1
    letters = (tmp_path / "data" / "webhooks" / DEAD_LETTER_FILE).read_text().splitlines()
    [letter] = [json.loads(line) for line in letters]
    assert letter["failure"] == "HTTP 400" and letter["attempts"] == 1
    assert json.loads(letter["event"])["type"] == "meeting.started"
    segment = tmp_path / "data" / "audit" / "audit-000001.jsonl"
    audit = [json.loads(line) for line in segment.read_text().splitlines()]
    [dead] = [e for e in audit if e["action"] == "webhook_dead_lettered"]
    assert dead["reason"] == "http_400" and dead["fields"]["attempts"] == 1
    assert dead["fields"]["receiver"] == his.url.split("/")[2]  # host:port, not the path


async def test_in_a_cluster_each_event_comes_from_the_node_where_it_happened(
    redis_url: str, tmp_path: Path
) -> None:
    async with receiver() as his:
        hooks = subscription(tmp_path, his.url, "participant.joined")
        a_settings = node_settings(tmp_path / "a", media=False, redis=redis_url, webhooks=hooks)
        async with running_node(a_settings) as a:
            trusting_a = {"jwks": str(a.idp.jwks_path), "jwt_issuer": DEV_ISSUER,
                          "jwt_audience": DEV_AUDIENCE}  # fmt: skip
            b_settings = node_settings(
                tmp_path / "b", media=False, redis=redis_url, webhooks=hooks, **trusting_a
            )
            async with running_node(b_settings) as b:
                b.idp = a.idp
                await a.join("dr-chair", "chair")
                _, joined = await b.join("dr-heart", "specialist")
                assert joined["type"] == "joined"
                await eventually(lambda: len(his.deliveries) >= 2, timeout=10)
                await asyncio.sleep(1.0)  # a duplicate from the other node would be here by now
    by_sub = {e["data"]["sub"]: e["node"] for e in his.events()}
    assert len(his.deliveries) == 2
    assert by_sub == {"dr-chair": a_settings.node_id, "dr-heart": b_settings.node_id}
