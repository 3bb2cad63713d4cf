"""`consilium doctor`: tells IT whether clients could reach the media paths the settings describe.

Run on the Consilium host with the node's settings (the same `--config` and `CONSILIUM_*`
environment as `consilium serve`). For each TURN URL in `turn_urls` it derives credentials from
`turn_secret` exactly as the node does for a joining client and asks that TURN server for an
allocation (aioice's TURN client: UDP, TCP, or TLS for `turns:`), then gives the allocation back.
It reports, per URL, ok with the relayed address, or what failed in plain words. It then reports
the addresses and UDP port range the SFU would gather its ICE candidates on, and whether a port
of the range can be bound on each. Exit status: 0 when everything checked is fine, 1 when
something failed (2 for a configuration error, from `consilium.cli`).

It runs from the server, so it proves the TURN server is up, agrees on the secret and can relay;
whether a client's firewall lets it reach those ports is what the TURN URLs' ports (3478 UDP/TCP,
443 or 5349 TLS) must be opened for (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aioice import stun
from aioice.turn import create_turn_endpoint

from signaling.settings import Settings, load_settings

# aiortc (through sfu.ice and consilium.node) is imported where it is used, not here: it pulls in
# av, which every other command (and `consilium --help`) would otherwise wait for.

DOCTOR_USER = "consilium-doctor"
"""The user the test credentials are derived for (coturn logs it with each allocation)."""
TIMEOUT_S = 5.0
"""How long one TURN server may take to allocate before it counts as unreachable."""


@dataclass
class TurnCheck:
    """The outcome of allocating on one TURN URL."""

    url: str
    """The URL as configured in `turn_urls`."""
    ok: bool
    """The allocation succeeded."""
    relayed_address: str | None = None
    """Where the TURN server relays from (what a client's relay candidate would be)."""
    mapped_address: str | None = None
    """This host as the TURN server saw it."""
    problem: str | None = None
    """What failed, in plain words."""


@dataclass
class SfuCheck:
    """Where the SFU would gather ICE host candidates, and whether its port range is usable."""

    ok: bool
    """Every address can bind a port of the range."""
    addresses: list[str]
    """The addresses host candidates would be gathered on."""
    port_range: str
    """`min-max`, or "any free port" without a range."""
    problems: list[str] = field(default_factory=list)
    """What failed, in plain words, one entry per address."""


def explain(exc: BaseException, host: str, port: int, timeout_s: float) -> str:
    """A failed allocation in the words IT needs (what to check next)."""
    if isinstance(exc, stun.TransactionFailed):
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "no error code"))
        if code == 401:
            return (
                f"the TURN server refused the credentials ({code} {reason}): turn_secret is not "
                "its static-auth-secret (use-auth-secret), or the two hosts' clocks differ"
            )
        if code == 403:
            return f"the TURN server forbids this allocation ({code} {reason}): check its limits"
        return f"the TURN server refused the allocation ({code} {reason})"
    if isinstance(exc, stun.TransactionTimeout | TimeoutError):
        return (
            f"no answer from {host}:{port} within {timeout_s:g} s: nothing listens there, or a "
            "firewall drops the traffic"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the TURN server's TLS certificate is not trusted ({exc.verify_message}): browsers "
            "will refuse it too; use a certificate from a CA they trust (or --ca-file to check "
            "against your own CA)"
        )
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with {host}:{port} failed ({exc.reason}): is it a TLS port?"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {host}:{port}: nothing listens there"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host} ({exc.strerror})"
    if isinstance(exc, OSError):
        return f"cannot reach {host}:{port} ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


async def check_turn(
    url: str, settings: Settings, *, ca_file: Path | None, timeout_s: float
) -> TurnCheck:
    """Allocate on one TURN URL with freshly derived credentials, then release the allocation."""
    import aiortc.rtcicetransport

    from sfu.ice import turn_credentials

    try:
        parsed = aiortc.rtcicetransport.parse_stun_turn_uri(url)
    except ValueError as exc:
        return TurnCheck(url, False, problem=f"cannot read the URL ({exc})")
    host, port, transport = parsed["host"], int(parsed["port"]), parsed["transport"]
    context: ssl.SSLContext | None = None
    if parsed["scheme"] == "turns":
        if transport != "tcp":
            return TurnCheck(url, False, problem="turns over UDP (DTLS) is not checked; use tcp")
        context = ssl.create_default_context()
        if ca_file is not None:
            context.load_verify_locations(cafile=ca_file)
    assert settings.turn_secret is not None  # ice_settings() refused turn_urls without it
    username, password = turn_credentials(settings.turn_secret, DOCTOR_USER, settings.turn_ttl_s)
    try:
        relay, _ = await asyncio.wait_for(
            create_turn_endpoint(
                asyncio.DatagramProtocol,
                (host, port),
                username=username,
                password=password,
                ssl=context,
                transport=transport,
            ),
            timeout_s,
        )
    except Exception as exc:  # each one explained, none of them fatal to the other checks
        return TurnCheck(url, False, problem=explain(exc, host, port, timeout_s))
    relayed, mapped = relay.get_extra_info("sockname"), relay.get_extra_info("related_address")
    relay.close()  # deletes the allocation (a task); give it a moment to go out
    await asyncio.sleep(0.1)
    return TurnCheck(
        url, True, relayed_address=f"{relayed[0]}:{relayed[1]}", mapped_address=_address(mapped)
    )


def _address(address: tuple[str, int] | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


def check_sfu(settings: Settings) -> SfuCheck:
    """The SFU's candidate addresses (as it would gather them) and a bind in its port range."""
    import aioice.ice

    from consilium.node import ice_settings
    from sfu import ice

    sfu_ice = ice_settings(settings)  # ConfigError (exit 2) for settings serve would refuse
    # The SFU's own choice of addresses: its hook on aioice, installed just for this call.
    ice.install(sfu_ice)
    try:
        addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    finally:
        ice.uninstall()
    port_range = sfu_ice.port_range
    shown = "any free port" if port_range is None else f"{port_range[0]}-{port_range[1]}"
    problems = []
    if not addresses:
        problems.append("no address to gather host candidates on: set ice_host_addresses")
    for address in addresses:
        problem = _bind_problem(address, port_range)
        if problem is not None:
            problems.append(problem)
    return SfuCheck(not problems, addresses, shown, problems)


def _bind_problem(address: str, port_range: tuple[int, int] | None) -> str | None:
    """Why no UDP port of the range can be bound on `address`, or None when one can."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    ports = [0] if port_range is None else list(range(port_range[0], port_range[1] + 1))
    # A few random tries are enough to tell "not this host's address" from "range in use".
    tries = random.sample(ports, min(len(ports), 20))
    error: OSError | None = None
    for port in tries:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, port))
                return None
            except OSError as exc:
                error = exc
    return f"cannot bind a UDP port of the range on {address} ({error})"


async def diagnose(
    settings: Settings, *, ca_file: Path | None, timeout_s: float
) -> tuple[list[TurnCheck], SfuCheck]:
    """The SFU's ICE settings (first: they validate the TURN settings), and every TURN URL
    checked at once."""
    sfu = check_sfu(settings)
    turn = await asyncio.gather(
        *(
            check_turn(url, settings, ca_file=ca_file, timeout_s=timeout_s)
            for url in settings.turn_urls
        )
    )
    return list(turn), sfu


def report_text(settings: Settings, turn: list[TurnCheck], sfu: SfuCheck) -> str:
    """The report for a person."""
    lines = []
    if not turn:
        lines.append(
            "TURN: none configured (turn_urls): clients whose network blocks UDP to the SFU "
            "cannot connect media"
        )
    for check in turn:
        if check.ok:
            lines.append(
                f"TURN {check.url}: ok (relays from {check.relayed_address}; "
                f"saw this host as {check.mapped_address})"
            )
        else:
            lines.append(f"TURN {check.url}: FAILED: {check.problem}")
    if settings.ice_transport_policy == "relay":
        lines.append("Clients use TURN only (ice_transport_policy = relay).")
    addresses = ", ".join(sfu.addresses) or "none"
    state = "ok" if sfu.ok else "FAILED: " + "; ".join(sfu.problems)
    lines.append(f"SFU media: host candidates on {addresses}, UDP ports {sfu.port_range}: {state}")
    return "\n".join(lines)


def report_json(settings: Settings, turn: list[TurnCheck], sfu: SfuCheck) -> dict[str, Any]:
    """The report for a machine (one JSON object)."""
    return {
        "ok": all(check.ok for check in turn) and sfu.ok,
        "turn": [asdict(check) for check in turn],
        "ice_transport_policy": settings.ice_transport_policy,
        "sfu": asdict(sfu),
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the TURN servers and the SFU's ICE settings; 1 when something failed."""
    settings = load_settings({}, config_file=args.config)
    turn, sfu = asyncio.run(diagnose(settings, ca_file=args.ca_file, timeout_s=args.timeout))
    if args.json:
        print(json.dumps(report_json(settings, turn, sfu)))
    else:
        print(report_text(settings, turn, sfu))
    return 0 if all(check.ok for check in turn) and sfu.ok else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium doctor [--config FILE] [--json] [--ca-file PEM] [--timeout S]`."""
    doctor = sub.add_parser(
        "doctor", help="check that the TURN servers and the SFU's media ports are usable"
    )
    doctor.add_argument("--config", type=Path, help="TOML settings file (or CONSILIUM_CONFIG)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.add_argument(
        "--ca-file", type=Path, help="trust this CA (PEM) for turns: URLs, besides the system's"
    )
    doctor.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="seconds per TURN server (default 5)"
    )
    doctor.set_defaults(func=cmd_doctor)
