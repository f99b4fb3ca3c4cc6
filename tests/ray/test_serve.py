"""The Serve graph on a local Ray: OpenAI SDK and httpx, streaming, bad input, overload,
replica replacement, the profile store, metrics and logs.

One app for the module (tiny random model, small admission limits, API key on).
"""

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.ray.helpers import running_app, serve_args
from tests.unit.test_personalize import tiny_model_dir

pytestmark = pytest.mark.timeout(300)

KEY = "test-key-123"
MODEL = "fspo-test"
MARKER = "QZV-private-preference-5531"  # must never reach a log line
PREFS = [{"question": f"what should I cook {i}?", "chosen": f"a short recipe {MARKER}", "rejected": "a long essay"}
         for i in range(3)]
AUTH = {"Authorization": f"Bearer {KEY}"}



@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    args = serve_args(
        str(tiny_model_dir(tmp / "model")), MODEL, tmp / "profiles.sqlite3", KEY, num_shots=4, max_ongoing=2,
        max_queued=2, max_batch=2,
        limits={"max_preferences": 4, "max_stored_preferences": 8, "max_text_chars": 200, "max_tokens": 300,
                "max_body_bytes": 8192},
        cache={"ttl_s": 120, "sweep_interval_s": 0.2},
    )
    with running_app(args, "fspo") as url:
        yield {"url": url, "store": tmp / "profiles.sqlite3"}


@pytest.fixture(scope="module")
def client(app):
    with httpx.Client(base_url=app["url"], headers=AUTH, timeout=60) as c:
        yield c


def chat_body(user="alice", prefs=PREFS, **over):
    fspo = {"user_id": user} if prefs is None else {"user_id": user, "preferences": prefs}
    return {"model": MODEL, "messages": [{"role": "user", "content": "what is for dinner?"}], "fspo": fspo, **over}


def handle(name):
    from ray import serve

    return serve.get_deployment_handle(name, app_name="fspo")


# --------------------------------------------------------------------------- the API


def test_openai_sdk_non_streaming_echoes_the_persona_and_hits_the_cache(client, app):
    from openai import OpenAI

    sdk = OpenAI(base_url=app["url"] + "/v1", api_key=KEY, max_retries=0)
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "what is for dinner?"}], max_tokens=8,
                  extra_body={"fspo": {"user_id": "sdk-user", "preferences": PREFS}})
    first = sdk.chat.completions.create(**kwargs)
    fspo = first.model_extra["fspo"]
    assert first.object == "chat.completion" and first.model == MODEL
    assert first.choices[0].message.role == "assistant" and first.choices[0].message.content
    assert fspo["persona"] and fspo["cache_hit"] is False and fspo["preferences_used"] == 3
    assert fspo["preferences_source"] == "request" and fspo["user_id"] == "sdk-user"
    u = first.usage
    assert 1 <= u.completion_tokens <= 8 and u.prompt_tokens > 50 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    second = sdk.chat.completions.create(**kwargs)
    assert second.model_extra["fspo"]["cache_hit"] is True
    assert second.model_extra["fspo"]["persona"] == fspo["persona"]
    assert second.choices[0].message.content == first.choices[0].message.content  # greedy
    assert [m.id for m in sdk.models.list().data] == [MODEL]


def test_openai_sdk_streaming_matches_the_non_streamed_answer(client, app):
    from openai import OpenAI

    sdk = OpenAI(base_url=app["url"] + "/v1", api_key=KEY, max_retries=0)
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "what is for dinner?"}], max_tokens=8,
                  extra_body={"fspo": {"user_id": "sdk-user", "preferences": PREFS}})
    whole = sdk.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(sdk.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["fspo"]["cache_hit"] is True and chunks[0].model_extra["fspo"]["persona"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and 1 <= chunks[-1].usage.completion_tokens <= 8


def test_sse_wire_format(client):
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, max_tokens=4)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"} and len({e["id"] for e in events}) == 1
    assert "fspo" in events[0] and events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(e["choices"][0]["delta"].get("content") for e in events[1:-1])


def test_models_healthz_and_personalize(client, app):
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
    r = httpx.get(app["url"] + "/healthz")  # no key needed
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": MODEL}
    body = {"user_id": "native", "question": "what is for dinner?", "preferences": PREFS, "max_tokens": 5}
    a = client.post("/v1/personalize", json=body)
    assert a.status_code == 200, a.text
    out = a.json()
    assert set(out) == {"user_id", "persona", "answer", "cache_hit", "preferences_used", "preferences_source",
                        "finish_reason", "usage"}
    assert out["persona"] and out["answer"] and out["cache_hit"] is False and a.headers["x-fspo-cache"] == "miss"
    b = client.post("/v1/personalize", json=body)
    assert b.json()["cache_hit"] is True and b.headers["x-fspo-cache"] == "hit" and b.json()["persona"] == out["persona"]


def test_auth(app):
    url = app["url"] + "/v1/models"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"error": {"message": "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                      "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
    assert httpx.get(url, headers=AUTH).status_code == 200


def test_profile_store_endpoints_and_deletion_really_deletes(client, app):
    r = client.post("/v1/users/bob/preferences", json={"preferences": PREFS[:2]})
    assert r.status_code == 200 and r.json() == {"user_id": "bob", "added": 2, "stored": 2}
    r = client.post("/v1/users/bob/preferences", json={"preferences": PREFS[2:]})
    assert r.json()["stored"] == 3
    got = client.get("/v1/users/bob").json()
    assert got["count"] == 3 and got["preferences"][2] == PREFS[2]
    r = client.post("/v1/chat/completions", json=chat_body(user="bob", prefs=None, max_tokens=4))
    assert r.status_code == 200, r.text
    assert r.json()["fspo"]["preferences_source"] == "store" and r.json()["fspo"]["preferences_used"] == 3
    r = client.post("/v1/chat/completions", json=chat_body(user="bob", prefs=None, max_tokens=4))
    assert r.json()["fspo"]["cache_hit"] is True

    d = client.delete("/v1/users/bob")
    assert d.status_code == 200
    assert d.json() == {"user_id": "bob", "deleted": True, "preferences_deleted": 3, "cache_entries_deleted": 1}
    assert client.get("/v1/users/bob").status_code == 404
    r = client.post("/v1/chat/completions", json=chat_body(user="bob", prefs=None))
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_preferences"
    assert r.json()["error"]["param"] == "fspo.preferences"
    on_disk = b"".join(p.read_bytes() for p in app["store"].parent.glob("profiles.sqlite3*"))
    assert b"bob" not in on_disk and MARKER.encode() not in on_disk
    assert client.delete("/v1/users/bob").json()["deleted"] is False


# --------------------------------------------------------------------------- bad input

LONG = "x" * 201


@pytest.mark.parametrize(
    "method, path, payload, status, param, code",
    [
        ("POST", "/v1/chat/completions", b"{oops", 400, None, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[]", 400, None, "invalid_json"),
        ("POST", "/v1/chat/completions", {"model": MODEL, "fspo": {"user_id": "a"}}, 400, "messages", "invalid_value"),
        ("POST", "/v1/chat/completions", chat_body(tools=[]), 400, "tools", "invalid_value"),
        ("POST", "/v1/chat/completions", chat_body(max_tokens="8"), 400, "max_tokens", "invalid_value"),
        ("POST", "/v1/chat/completions", chat_body(prefs=[{"question": "q", "chosen": "c"}]), 400,
         "fspo.preferences[0].rejected", "invalid_value"),
        ("POST", "/v1/chat/completions", chat_body(prefs=[{**PREFS[0], "chosen": 1}]), 400,
         "fspo.preferences[0].chosen", "invalid_value"),
        ("POST", "/v1/chat/completions", chat_body(prefs=[]), 400, "fspo.preferences", "invalid_value"),
        ("POST", "/v1/chat/completions", chat_body(user="no spaces allowed"), 400, "fspo.user_id", "invalid_value"),
        ("POST", "/v1/chat/completions", chat_body(prefs=PREFS * 2), 400, "fspo.preferences", "too_many_preferences"),
        ("POST", "/v1/chat/completions", chat_body(prefs=[{**PREFS[0], "chosen": LONG}]), 400,
         "fspo.preferences[0].chosen", "string_too_long"),
        ("POST", "/v1/chat/completions", chat_body(max_tokens=301), 400, "max_tokens", "max_tokens_too_large"),
        ("POST", "/v1/chat/completions", {**chat_body(), "pad": "y" * 9000}, 413, None, "request_too_large"),
        ("POST", "/v1/chat/completions", chat_body(model="gpt-4o"), 404, "model", "model_not_found"),
        ("POST", "/v1/chat/completions", chat_body(messages=[{"role": "assistant", "content": "hi"}]), 400,
         "messages[0].role", "invalid_value"),
        ("GET", "/v1/chat/completions", None, 405, None, "method_not_allowed"),
        ("GET", "/v1/nothing-here", None, 404, None, "not_found"),
        ("POST", "/v1/personalize", {"user_id": "a", "question": LONG}, 400, "question", "string_too_long"),
        ("POST", "/v1/users/bad%20id/preferences", {"preferences": PREFS}, 400, "user_id", "invalid_value"),
        ("POST", "/v1/users/carol/preferences", {"preferences": []}, 400, "preferences", "invalid_value"),
        ("DELETE", "/v1/users/bad%20id", None, 400, "user_id", "invalid_value"),
    ],
)
def test_bad_input_is_an_openai_error_naming_the_field(client, method, path, payload, status, param, code):
    content = payload if isinstance(payload, bytes) else None if payload is None else json.dumps(payload).encode()
    r = client.request(method, path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(r.json()) == {"error"} and set(err) == {"message", "type", "param", "code"}
    assert (err["param"], err["code"]) == (param, code)
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    if param:
        assert param in err["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    limit_in_message = {"too_many_preferences": "the limit is 4", "string_too_long": "the limit is 200",
                        "max_tokens_too_large": "the limit is 300", "request_too_large": "the limit is 8192"}
    if code in limit_in_message:
        assert limit_in_message[code] in err["message"]


# --------------------------------------------------------------------------- cancellation and overload


def _answer_stats():
    return handle("AnswerDeployment").stats.remote().result()


def test_client_disconnect_cancels_generation(client):
    before = _answer_stats()["streams"]
    with client.stream("POST", "/v1/chat/completions", json=chat_body(user="streamer", stream=True, max_tokens=300)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content": "' in line and '"role"' not in line:
                break  # one token in: hang up
    deadline = time.time() + 30
    while time.time() < deadline:
        after = _answer_stats()["streams"]
        if after.get("cancelled", 0) > before.get("cancelled", 0):
            break
        time.sleep(0.2)
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1
    assert after.get("completed", 0) == before.get("completed", 0)
    assert after["tokens_cancelled"] - before.get("tokens_cancelled", 0) < 300
    # the engine is free again: a short request completes
    r = client.post("/v1/chat/completions", json=chat_body(user="streamer", max_tokens=4), timeout=30)
    assert r.status_code == 200


def test_overload_gives_only_200_and_503_and_stays_healthy(client, app):
    async def burst():
        async with httpx.AsyncClient(base_url=app["url"], headers=AUTH, timeout=120) as ac:
            return await asyncio.gather(*[
                ac.post("/v1/chat/completions", json=chat_body(user=f"load-{i}", max_tokens=8)) for i in range(50)
            ])

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    for r in responses:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
            assert r.json()["error"]["message"].endswith("stage is at capacity; retry shortly")
    assert httpx.get(app["url"] + "/healthz").status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body(user="after-load", max_tokens=4)).status_code == 200
    from ray import serve

    status = serve.status().applications["fspo"]
    assert status.status == "RUNNING"
    assert {d.status for d in status.deployments.values()} == {"HEALTHY"}


def test_metrics_are_recorded(client):
    snap = handle("Ingress").metrics_snapshot.remote().result()
    assert snap["requests:/v1/chat/completions"] >= 50
    assert snap["errors:/v1/chat/completions:503"] >= 1 and snap["errors:/v1/chat/completions:400"] >= 10
    assert snap["errors:unrouted:401"] >= 4
    assert snap["cache:hit"] >= 3 and 0 < snap["cache_hit_ratio"] < 1
    assert snap["latency_n:persona"] >= 1 and snap["latency_n:answer"] >= 1 and snap["latency_n:total"] >= 1
    answer = _answer_stats()["metrics"]
    persona = handle("PersonaDeployment").stats.remote().result()
    assert answer["tokens:answer"] > 0 and persona["metrics"]["tokens:persona"] > 0
    assert sum(persona["batch_sizes"].values()) >= 1 and max(persona["batch_sizes"]) <= 2  # max_batch_size


def test_metrics_reach_prometheus(client):
    import ray

    port = ray._private.worker._global_node.metrics_export_port
    wanted = ["ray_fspo_requests_total", "ray_fspo_errors_total", "ray_fspo_stage_latency_s_bucket",
              "ray_fspo_persona_cache_lookups_total", "ray_fspo_persona_cache_hit_ratio", "ray_fspo_generated_tokens_total"]
    deadline, text = time.time() + 40, ""
    while time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    assert [w for w in wanted if w not in text] == []
    line = next(x for x in text.splitlines() if x.startswith("ray_fspo_errors_total{") and 'code="503"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert 'stage="persona"' in text and 'stage="answer"' in text


# --------------------------------------------------------------------------- faults


def _replica(deployment):
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::fspo#{deployment}#")]
    assert len(names) == 1, names
    return names[0]


def test_killed_replicas_are_replaced_and_the_store_survives(client, app):
    import ray

    assert client.post("/v1/users/dora/preferences", json={"preferences": PREFS}).status_code == 200
    old = {d: _replica(d) for d in ("Ingress", "AnswerDeployment")}
    for name in old.values():
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline, last = time.time() + 90, None
    while time.time() < deadline:
        try:
            last = client.post("/v1/chat/completions", json=chat_body(user="dora", prefs=None, max_tokens=4), timeout=10)
            if last.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    assert last is not None and last.status_code == 200, last and last.text
    assert last.json()["fspo"]["preferences_source"] == "store"  # a new ingress replica read the SQLite file
    for d, name in old.items():
        assert _replica(d) != name


def test_no_raw_preferences_or_personas_in_logs(client):
    import ray

    persona = client.post("/v1/chat/completions", json=chat_body(user="logcheck", max_tokens=4)).json()["fspo"]["persona"]
    time.sleep(1.0)  # let log files flush
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    blob = b"".join(p.read_bytes() for p in logs.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err"))
    assert len(blob) > 10_000  # we did read the Serve logs
    assert MARKER.encode() not in blob
    assert persona.encode() not in blob
