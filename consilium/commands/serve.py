"""`consilium serve`: run a node (HTTP(S), the signalling WebSocket, the web client)."""

from __future__ import annotations

import argparse
import gc
import ssl
from pathlib import Path
from typing import Any

from consilium.commands.folders import DEFAULT_DATA_DIR
from core import __version__
from core.errors import ConfigError

GC_GEN0_THRESHOLD = 50_000
"""Container allocations between two young-generation collections (CPython's default: 700)."""


def _tune_gc() -> None:
    """Collect cycles less often in a long-running server: the startup objects (modules,
    policy, keys) move to the permanent generation and young collections run every 50,000
    allocations instead of 700. Measured with bench/forwarding.py: at default settings about a
    tenth of the SFU's CPU went to the collector while forwarding, nearly none after."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run a node: HTTP(S) + signalling WebSocket + web client."""
    # Imported here, not at the top: the server pulls in aiohttp, aiortc and av, which every
    # other command (and `consilium --help`) would otherwise wait for.
    from aiohttp import web

    from consilium.node import build_node, create_app
    from signaling import logs
    from signaling.logs import AccessLogger
    from signaling.settings import is_loopback, load_settings

    flags: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "key_dir": args.key_dir,
        "redis": args.redis,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "public_url": args.public_url,
        "allowed_origins": args.allowed_origin,
        "policy_file": args.policy,
        "node_id": args.node_id,
        "node_url": args.node_url,
        "cluster_key_file": args.cluster_key_file,
        "log_level": args.log_level,
    }
    settings = load_settings(flags, config_file=args.config)
    logs.configure(settings.log_level)
    ssl_context = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ssl_context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS certificate/key: {exc}") from None
    node = build_node(settings)
    app = create_app(settings, node)
    _tune_gc()

    url = settings.own_origin + "/"
    print(f"Consilium {__version__} serving on {url}", flush=True)
    if not settings.tls and is_loopback(settings.host):
        print(
            "warning: plain HTTP on loopback only; use --tls-cert/--tls-key for anything else",
            flush=True,
        )
    if node.dev_idp is not None:
        print(
            "DEVELOPMENT MODE: tokens are signed by a development identity provider whose key is "
            f"in {settings.data_dir / 'dev-idp'}.\n"
            "  Not for patient data. Set CONSILIUM_JWKS (or CONSILIUM_OIDC_ISSUER) and "
            "CONSILIUM_JWT_ISSUER to use the hospital identity provider.\n"
            "  Mint a token:  consilium token --data-dir "
            f"{settings.data_dir} --sub dr-li --role chair --dept cardiology --room mdt-1\n"
            "  Media test page (two tabs see each other): add --link "
            f"{settings.own_origin} to that command and open the link it prints.\n"
            f"  Or open {url}dev in a browser on this machine to mint links for any role.",
            flush=True,
        )
    print(f"Open {url}", flush=True)

    app.on_startup.append(_drain_on_sigterm)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        ssl_context=ssl_context,
        access_log_class=AccessLogger,
        print=None,
        shutdown_timeout=5.0,
    )
    return 0


async def _drain_on_sigterm(app: Any) -> None:
    """SIGTERM drains the node while it still serves (`signaling.http.drain.begin`), then stops
    it; this replaces aiohttp's own handler (installed just before startup), which would close
    the listener at once. SIGINT (Ctrl-C) still stops at once."""
    import asyncio
    import signal

    from signaling.http import drain
    from signaling.http.node import NODE

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, drain.begin, app[NODE])


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`consilium serve` and its flags (each one a setting; see docs/operations.md)."""
    serve = sub.add_parser("serve", help="run the server (signalling, API, web client)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8443)")
    serve.add_argument("--data-dir", help=f"data folder (default {DEFAULT_DATA_DIR})")
    serve.add_argument("--key-dir", help="key folder, apart from the data (default <data>/keys)")
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="Redis URL for shared state across nodes (redis://host:6379/0), or its Sentinels "
        "(sentinel://host1:26379,host2:26379,host3:26379/<service>)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate chain for HTTPS")
    serve.add_argument("--tls-key", help="PEM private key for HTTPS")
    serve.add_argument("--public-url", help="the URL users open, if not host:port")
    serve.add_argument(
        "--allowed-origin", action="append", help="browser origin allowed to connect (repeat)"
    )
    serve.add_argument("--policy", help="policy table (TOML); default: the packaged one")
    serve.add_argument("--node-id", help="stable node name in a cluster")
    serve.add_argument("--node-url", help="the URL the other nodes reach this one at")
    serve.add_argument(
        "--cluster-key-file", help="secret shared by the cluster's nodes (32+ random bytes)"
    )
    serve.add_argument("--config", type=Path, help="TOML settings file (or CONSILIUM_CONFIG)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)
