"""A middleware for Serve's HTTP proxies: a request whose replica was lost before it answered (its
node died mid-request) gets 503 with Retry-After, like an overloaded stage, instead of the bare
500 the proxy sends. Clients and the OpenAI SDK retry a 503; nothing else changes (every response
the app started, errors included, passes through as it is).

Serve loads it in every proxy from the environment of the Ray nodes:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=fspo_ray.serving.proxy:middlewares

(cluster/aws.yaml's start commands and cluster/kuberay/rayservice.yaml's containers set it).
"""

from __future__ import annotations

import json
import logging

from fspo_ray.serving.errors import error_body

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 1
LOST = error_body(503, "the replica serving this request was lost (its node went away); retry shortly",
                  code="unavailable")


class ReplicaLostAs503:
    """ASGI middleware: when the proxied app ends (or fails) without starting a response, answer 503."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            logger.warning("proxy: request failed before a response started; answering 503")
        if not started:
            await _send_503(send)


async def _send_503(send) -> None:
    body = json.dumps(LOST).encode()
    try:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", str(RETRY_AFTER_S).encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # the client is gone too
        pass


def middlewares() -> list:
    """What RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH names: the proxy's Starlette middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLostAs503)]
