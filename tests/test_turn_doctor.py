"""`consilium doctor` against a real coturn: it allocates on each configured TURN URL with the
credentials the node would hand out, and says in plain words what fails (a wrong secret, nothing
listening, an untrusted certificate), with a non-zero exit status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consilium.cli import main
from tests.fixtures.servers import free_port
from tests.fixtures.turnserver import TURN_HOST, TurnServer


def doctor(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    turn_urls: list[str],
    secret: str,
    *args: str,
) -> tuple[int, str]:
    """Run `consilium doctor` with these TURN settings; its exit status and what it printed."""
    monkeypatch.setenv("CONSILIUM_TURN_URLS", ",".join(turn_urls))
    monkeypatch.setenv("CONSILIUM_TURN_SECRET", secret)
    monkeypatch.setenv("CONSILIUM_ICE_HOST_ADDRESSES", "127.0.0.1")
    status = main(["doctor", "--timeout", "2", *args])
    return status, capsys.readouterr().out


def checks(output: str) -> dict[str, dict[str, Any]]:
    """The `--json` report's TURN checks by URL."""
    return {check["url"]: check for check in json.loads(output)["turn"]}


def urls(server: TurnServer) -> list[str]:
    return [server.udp_url, server.tcp_url, server.tls_url]


def test_doctor_allocates_on_every_turn_url_and_reports_the_sfu(
    turnserver: TurnServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(turnserver.cert)
    status, out = doctor(monkeypatch, capsys, urls(turnserver), turnserver.secret, "--ca-file", ca)
    assert status == 0, out
    for url in urls(turnserver):
        assert f"TURN {url}: ok (relays from {TURN_HOST}:" in out
    assert "SFU media: host candidates on 127.0.0.1, UDP ports any free port: ok" in out
    # coturn saw the allocations, under credentials derived for the doctor.
    assert ":consilium-doctor>" in turnserver.output()

    status, out = doctor(
        monkeypatch, capsys, urls(turnserver), turnserver.secret, "--ca-file", ca, "--json"
    )
    report = json.loads(out)
    assert status == 0 and report["ok"] is True
    assert all(check["ok"] and check["relayed_address"] for check in report["turn"])
    assert report["sfu"] == {
        "ok": True,
        "addresses": ["127.0.0.1"],
        "port_range": "any free port",
        "problems": [],
    }


def test_doctor_says_the_secret_is_wrong(
    turnserver: TurnServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(turnserver.cert)
    status, out = doctor(
        monkeypatch, capsys, urls(turnserver), "not-the-secret", "--ca-file", ca, "--json"
    )
    assert status == 1
    for check in checks(out).values():
        assert not check["ok"]
        assert "refused the credentials (401" in check["problem"]
        assert "turn_secret" in check["problem"]


def test_doctor_says_nothing_listens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    udp, tcp = f"turn:{TURN_HOST}:{port}?transport=udp", f"turn:{TURN_HOST}:{port}?transport=tcp"
    status, out = doctor(monkeypatch, capsys, [udp, tcp], "any-secret", "--json")
    assert status == 1
    found = checks(out)
    assert f"no answer from {TURN_HOST}:{port} within 2 s" in found[udp]["problem"]
    assert f"connection refused by {TURN_HOST}:{port}" in found[tcp]["problem"]
    # And in words for a person.
    status, out = doctor(monkeypatch, capsys, [udp], "any-secret")
    assert status == 1 and f"TURN {udp}: FAILED: no answer" in out


def test_doctor_refuses_a_turns_certificate_browsers_would_not_trust(
    turnserver: TurnServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = doctor(monkeypatch, capsys, [turnserver.tls_url], turnserver.secret, "--json")
    assert status == 1
    problem = checks(out)[turnserver.tls_url]["problem"]
    assert "TLS certificate is not trusted" in problem and "self-signed" in problem
