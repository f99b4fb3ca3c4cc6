"""The proxy middleware: a request whose replica was lost before answering gets 503 + Retry-After;
every response the app started passes through unchanged."""

import asyncio
import json

import pytest

from fspo_ray.serving.proxy import ReplicaLostAs503, middlewares


def call(app) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(ReplicaLostAs503(app)({"type": "http", "method": "POST", "path": "/v1/x"}, receive, send))
    return sent


async def no_response(scope, receive, send):  # what Serve's proxy does when the replica died
    return None


async def dies(scope, receive, send):
    raise RuntimeError("ActorDiedError")


async def answers_500(scope, receive, send):
    await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"error": "app"}'})


@pytest.mark.parametrize("app", [no_response, dies])
def test_no_response_becomes_503_with_retry_after(app):
    start, body = call(app)
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    err = json.loads(body["body"])["error"]
    assert err["code"] == "unavailable" and "retry" in err["message"]


def test_a_started_response_passes_unchanged():
    assert call(answers_500) == [
        {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": b'{"error": "app"}'},
    ]


def test_a_failure_after_the_response_started_is_not_masked():
    async def fails_midway(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        call(fails_midway)


def test_the_callback_returns_starlette_middleware():
    from starlette.middleware import Middleware

    (m,) = middlewares()
    assert isinstance(m, Middleware) and m.cls is ReplicaLostAs503
