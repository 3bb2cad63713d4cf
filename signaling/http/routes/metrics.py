"""The node as operators watch it: `/healthz`, `/readyz` and Prometheus `/metrics`."""

from __future__ import annotations

import secrets

from aiohttp import web
from prometheus_client import exposition

from core import __version__
from core.errors import PolicyDenied
from signaling.http import drain as drain_node
from signaling.http.node import NODE
from signaling.http.node_metrics import METRICS_REGISTRY
from signaling.settings import is_loopback


async def healthz(request: web.Request) -> web.Response:
    """200 when the node is ready to serve, 503 otherwise."""
    node = request.app[NODE]
    status = 200 if node.ready else 503
    return web.json_response(
        {
            "status": "ok" if node.ready else "starting",
            "node": node.settings.node_id,
            "version": __version__,
        },
        status=status,
    )


async def readyz(request: web.Request) -> web.Response:
    """200 when the node can take joins now: started, not draining (`signaling.http.drain`), and its
    shared state (Redis) answers; 503 otherwise (a load balancer stops sending new clients;
    `/healthz` says it is alive)."""
    node = request.app[NODE]
    state_ok = node.ready and await node.store.ping()
    draining = node.rooms.draining
    ready = node.ready and state_ok and not draining
    return web.json_response(
        {
            "status": "ready" if ready else "draining" if draining else "not_ready",
            "node": node.settings.node_id,
            "started": node.ready,
            "draining": draining,
            "shared_state": "ok" if state_ok else "unreachable",
        },
        status=200 if ready else 503,
    )


_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host")


def direct_loopback(request: web.Request) -> bool:
    """Whether the request comes from this host itself. A reverse proxy on this host connects
    from loopback on behalf of anyone: a request that carries a forwarding header is the
    forwarded client's."""
    forwarded = any(name in request.headers for name in _FORWARDING_HEADERS)
    return is_loopback(request.remote or "") and not forwarded


async def drain(request: web.Request) -> web.Response:
    """`POST /api/node/drain` (`consilium drain`), from this host only: stop this node the way
    SIGTERM does, its rooms moved to other nodes first (`signaling.http.drain`). Answers 202 at
    once; the node stops when drained."""
    node = request.app[NODE]
    if not direct_loopback(request):
        raise PolicyDenied("a node is drained from its own host (consilium drain)")
    node.audit.append("node_drain_requested", "info", node=node.settings.node_id,
                      ip=request.remote or "")  # fmt: skip
    drain_node.begin(node)  # unready from this answer on
    return web.json_response({"state": "draining", "node": node.settings.node_id}, status=202)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (`signaling.http.node_metrics`): from loopback, or with
    `Authorization: Bearer <metrics_token>`."""
    node = request.app[NODE]
    token = node.settings.metrics_token
    given = request.headers.get("Authorization", "").partition(" ")[2].strip()
    local = direct_loopback(request)
    if not (local or (token and secrets.compare_digest(given.encode(), token.encode()))):
        raise PolicyDenied(
            "metrics are served to direct loopback clients, or with the metrics token"
        )
    registry = request.app[METRICS_REGISTRY]
    # Read in the event loop: the collector reads the SFU's and the rooms' live state.
    body = exposition.generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": exposition.CONTENT_TYPE_LATEST})
