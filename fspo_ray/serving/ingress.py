"""The FastAPI ingress: OpenAI-compatible chat completions, the native /v1/personalize, the
profile store endpoints, and the persona cache in front of the persona stage.

Every error is an OpenAI-style body (FastAPI's 422 is replaced by 400); overload is 503;
nothing user-written reaches a log line.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` annotations.
import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from fspo_ray.engines.config import Sampling
from fspo_ray.personalize import PromptTooLongError
from fspo_ray.serving.cache import PersonaCache, preferences_hash
from fspo_ray.serving.config import ServeConfig
from fspo_ray.serving.errors import (
    APIError,
    check_chat_limits,
    check_personalize_limits,
    check_preferences,
    error_body,
    param_name,
    parse_body,
    question_of,
    too_large,
)
from fspo_ray.serving.metrics import ServeMetrics
from fspo_ray.serving.page import PageService
from fspo_ray.serving.page_routes import page_routes
from fspo_ray.serving.schemas import (
    USER_ID_PATTERN,
    AddPreferencesRequest,
    ChatCompletionRequest,
    PersonalizeRequest,
    PreferenceIn,
    chat_completion,
    chunk,
    completion_id,
    fspo_block,
    models_list,
    usage,
)
from fspo_ray.serving.store import make_store, user_key

logger = logging.getLogger("ray.serve")

api = FastAPI(title="fspo-ray", docs_url=None, redoc_url=None, openapi_url=None)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json_error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


@api.exception_handler(APIError)
async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return _json_error(e)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    errors = e.errors()
    loc = list(errors[0]["loc"]) if errors else []
    if loc and loc[0] in ("path", "query", "body", "header"):
        loc = loc[1:]
    return _json_error(APIError(400, f"{param_name(loc) or 'request'}: {errors[0]['msg'] if errors else 'invalid'}",
                                code="invalid_value", param=param_name(loc) or None))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
    return JSONResponse(error_body(e.status_code, message.get(e.status_code, "request failed"),
                                   code=codes.get(e.status_code, "http_error")), status_code=e.status_code)


class ObserveMiddleware:
    """Pure ASGI (streaming-safe): API-key auth on /v1, request/error counts, and a last-resort
    500 without a stack trace."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ingress: Ingress | None = getattr(scope["app"].state, "ingress", None)
        status = {"code": 500, "started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            if ingress is not None and scope["path"].startswith("/v1/") and not ingress.authorized(scope):
                e = APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await _json_error(e)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception as e:  # a bug: log its type only (a message could quote user text)
            logger.error("unhandled %s on %s %s", type(e).__name__, scope.get("method"), _endpoint(scope))
            if not status["started"]:
                body = error_body(500, "internal server error", code="internal_error")
                await JSONResponse(body, status_code=500)(scope, receive, send_wrapper)
        finally:
            if ingress is not None:
                endpoint = _endpoint(scope)
                ingress.metrics.request(endpoint)
                if status["code"] >= 400:
                    ingress.metrics.error(endpoint, status["code"])


def _endpoint(scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unrouted"


api.add_middleware(ObserveMiddleware)


def _check_user_id(user_id: str) -> None:
    if not re.fullmatch(USER_ID_PATTERN, user_id):
        raise APIError(400, "user_id: must be 1-128 characters of letters, digits and . _ : @ -, starting with a "
                       "letter or digit", code="invalid_value", param="user_id")


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress(page_routes(api)):
    def __init__(self, persona: DeploymentHandle, answer: DeploymentHandle, cfg: ServeConfig, api_key: str | None,
                 baseline: DeploymentHandle | None = None):
        self.cfg = cfg
        self.persona, self.answer = persona, answer
        self.baseline = baseline  # the unpersonalized answer's model (page.unpersonalized_model), if deployed
        self.page = PageService(cfg.page, cfg.limits.max_text_chars) if cfg.page.enabled else None
        self.store = make_store(cfg.store.kind, cfg.store.path, cfg.store.class_path)
        self.cache = PersonaCache(cfg.cache.max_entries, cfg.cache.ttl_s)
        self.metrics = ServeMetrics()
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self._created = int(time.time())
        self._deletion_epoch = 0  # bumped on every deletion seen; a persona generated across one is not cached
        self._deletion_seq, _ = self.store.deletions_since(0, cfg.cache.ttl_s)
        self._sweeper: asyncio.Task | None = None
        api.state.ingress = self

    # ------------------------------------------------------------------ plumbing

    def authorized(self, scope) -> bool:
        if self._key_digest is None:
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # Digests of equal length, compared in constant time: neither content nor length leaks.
        return scheme.lower() == b"bearer" and hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._key_digest)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_deletions())

    async def _sweep_deletions(self) -> None:
        """Drop cached personas of users deleted through another ingress replica."""
        while True:
            await asyncio.sleep(self.cfg.cache.sweep_interval_s)
            try:
                seq, keys = await asyncio.to_thread(self.store.deletions_since, self._deletion_seq, self.cfg.cache.ttl_s)
            except Exception as e:  # e.g. the replica shutting down; the next sweep retries
                logger.debug("deletion sweep failed: %s", type(e).__name__)
                continue
            if keys:
                self.cache.delete_keys(keys)
                self._deletion_epoch += 1
            self._deletion_seq = seq

    async def _read(self, request: Request, model):
        limits = self.cfg.limits
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_large(int(declared), limits)
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limits.max_body_bytes:
                raise too_large(len(raw), limits)
        return parse_body(bytes(raw), model, limits)

    async def _call(self, stage: str, awaitable) -> Any:
        """Await a stage; overload and lost replicas become 503, never 500."""
        try:
            return await awaitable
        except BackPressureError:
            raise APIError(503, f"the {stage} stage is at capacity; retry shortly", code="overloaded",
                           headers={"Retry-After": "1"}) from None
        except (DeploymentUnavailableError, ActorUnavailableError, RayActorError):
            raise APIError(503, f"the {stage} stage is unavailable; retry shortly", code="unavailable",
                           headers={"Retry-After": "1"}) from None
        except PromptTooLongError as e:
            # Raised in a replica: Ray's error is also a PromptTooLongError; its cause holds the plain message.
            raise APIError(400, str(getattr(e, "cause", e)), code="prompt_too_long") from None

    async def _shots(self, user_id: str, prefs: list[PreferenceIn] | None, param: str) -> tuple[tuple, str]:
        n = self.cfg.personalize.num_shots
        if prefs is not None:
            if not prefs:
                raise APIError(400, f"{param}: send at least one preference, or omit it to use the stored ones",
                               code="invalid_value", param=param)
            return tuple(p.to_preference() for p in prefs[-n:]), "request"
        stored = await asyncio.to_thread(self.store.get_preferences, user_id, n)
        if not stored:
            raise APIError(400, f"{param}: user {user_id!r} has no stored preferences; send {param} or "
                           f"POST /v1/users/{user_id}/preferences first", code="no_preferences", param=param)
        return tuple(stored), "store"

    async def _persona(self, user_id: str, shots: tuple) -> tuple[str, bool]:
        h = preferences_hash(shots)
        cached = self.cache.get(user_id, h) if self.cfg.cache.max_entries else None
        self.metrics.cache(cached is not None)
        if cached is not None:
            return cached, True
        epoch, t0 = self._deletion_epoch, time.perf_counter()
        out = await self._call("persona", self.persona.describe.remote(shots))
        self.metrics.latency("persona", time.perf_counter() - t0)
        if epoch == self._deletion_epoch:
            self.cache.put(user_id, h, out["text"])
        return out["text"], False

    def _sampling(self, max_tokens: int | None, temperature: float | None, top_p: float | None,
                  seed: int | None) -> Sampling:
        return self.cfg.personalize.answer.sampling(max_tokens, temperature, top_p, seed)

    # ------------------------------------------------------------------ OpenAI-compatible

    @api.get("/v1/models")
    async def models(self) -> dict:
        return models_list(self.cfg.model_id, self._created)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._ensure_sweeper()
        t0 = time.perf_counter()
        req: ChatCompletionRequest = await self._read(request, ChatCompletionRequest)
        if req.model != self.cfg.model_id:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves {self.cfg.model_id!r} "
                           "(GET /v1/models)", code="model_not_found", param="model")
        check_chat_limits(req, self.cfg.limits)
        question = question_of(req)
        user_id = req.fspo.user_id
        answer = self.answer
        if req.fspo.context == "none":  # unpersonalized: the question alone, no shots, no persona stage
            if req.fspo.preferences is not None:
                raise APIError(400, "fspo.preferences: not used with fspo.context 'none'; omit it",
                               code="invalid_value", param="fspo.preferences")
            shots, source, persona, hit = (), "none", None, False
            answer = self.baseline or self.answer
        else:
            shots, source = await self._shots(user_id, req.fspo.preferences, "fspo.preferences")
            persona, hit = await self._persona(user_id, shots)
        fspo = fspo_block(user_id=user_id, persona=persona, cache_hit=hit, preferences_used=len(shots), source=source)
        sampling = self._sampling(req.requested_max_tokens, req.temperature, req.top_p, req.seed)
        headers = {"X-FSPO-Cache": "hit" if hit else "miss"}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await self._stream_chat(answer, shots, persona, question, sampling, fspo, include_usage, headers, t0)
        t1 = time.perf_counter()
        out = await self._call("answer", answer.answer.remote(shots, persona, question, sampling))
        self.metrics.latency("answer", time.perf_counter() - t1)
        self.metrics.latency("total", time.perf_counter() - t0)
        body = chat_completion(model=self.cfg.model_id, text=out["text"], finish_reason=out["finish_reason"],
                               prompt_tokens=out["prompt_tokens"], completion_tokens=out["tokens"], fspo=fspo)
        return JSONResponse(body, headers=headers)

    async def _stream_chat(self, answer, shots, persona, question, sampling, fspo, include_usage, headers, t0):
        gen = answer.options(stream=True).stream.remote(shots, persona, question, sampling)
        # The first item comes before the response starts, so overload is still a plain 503.
        t1 = time.perf_counter()
        first = await self._call("answer", gen.__anext__())
        cid, created, model = completion_id(), int(time.time()), self.cfg.model_id

        async def events():
            finished = False
            try:
                yield _sse(chunk(id=cid, created=created, model=model, delta={"role": "assistant", "content": ""},
                                 fspo=fspo))
                item = first
                while "done" not in item:
                    yield _sse(chunk(id=cid, created=created, model=model, delta={"content": item["text"]}))
                    item = await gen.__anext__()
                yield _sse(chunk(id=cid, created=created, model=model, finish_reason=item["finish_reason"]))
                if include_usage:
                    yield _sse(chunk(id=cid, created=created, model=model,
                                     usage_block=usage(item["prompt_tokens"], item["tokens"])))
                yield _sse("[DONE]")
                finished = True
                self.metrics.latency("answer", time.perf_counter() - t1)
                self.metrics.latency("total", time.perf_counter() - t0)
            except Exception as e:  # after the 200 went out: an error event, as the OpenAI API sends
                logger.warning("stream failed: %s", type(e).__name__)
                yield _sse(error_body(500, "generation failed", code="internal_error"))
            finally:
                if not finished:
                    gen.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})

    # ------------------------------------------------------------------ native

    @api.post("/v1/personalize")
    async def personalize(self, request: Request):
        self._ensure_sweeper()
        t0 = time.perf_counter()
        req: PersonalizeRequest = await self._read(request, PersonalizeRequest)
        check_personalize_limits(req, self.cfg.limits)
        if not req.question.strip():
            raise APIError(400, "question: is empty", code="invalid_value", param="question")
        shots, source = await self._shots(req.user_id, req.preferences, "preferences")
        persona, hit = await self._persona(req.user_id, shots)
        t1 = time.perf_counter()
        sampling = self._sampling(req.max_tokens, req.temperature, req.top_p, req.seed)
        out = await self._call("answer", self.answer.answer.remote(shots, persona, req.question, sampling))
        self.metrics.latency("answer", time.perf_counter() - t1)
        self.metrics.latency("total", time.perf_counter() - t0)
        return JSONResponse({
            "user_id": req.user_id, "persona": persona, "answer": out["text"], "cache_hit": hit,
            "preferences_used": len(shots), "preferences_source": source, "finish_reason": out["finish_reason"],
            "usage": usage(out["prompt_tokens"], out["tokens"]),
        }, headers={"X-FSPO-Cache": "hit" if hit else "miss"})

    # ------------------------------------------------------------------ profile store

    @api.post("/v1/users/{user_id}/preferences")
    async def add_preferences(self, user_id: str, request: Request) -> dict:
        _check_user_id(user_id)
        req: AddPreferencesRequest = await self._read(request, AddPreferencesRequest)
        check_preferences(req.preferences, "preferences", self.cfg.limits)
        prefs = [p.to_preference() for p in req.preferences]
        stored = await asyncio.to_thread(self.store.add_preferences, user_id, prefs,
                                         self.cfg.limits.max_stored_preferences)
        return {"user_id": user_id, "added": len(prefs), "stored": stored}

    @api.get("/v1/users/{user_id}")
    async def get_user(self, user_id: str) -> dict:
        _check_user_id(user_id)
        prefs = await asyncio.to_thread(self.store.get_preferences, user_id)
        if not prefs:
            raise APIError(404, f"user {user_id!r} has no stored preferences", code="user_not_found", param="user_id")
        return {"user_id": user_id, "count": len(prefs),
                "preferences": [{"question": p.question, "chosen": p.chosen, "rejected": p.rejected} for p in prefs]}

    @api.delete("/v1/users/{user_id}")
    async def delete_user(self, user_id: str) -> dict:
        _check_user_id(user_id)
        n = await asyncio.to_thread(self.store.delete_user, user_id)
        self._deletion_epoch += 1
        k = self.cache.delete_user(user_id)
        logger.info("deleted user %s: %d preferences, %d cached personas", user_key(user_id), n, k)
        return {"user_id": user_id, "deleted": bool(n or k), "preferences_deleted": n, "cache_entries_deleted": k}

    # ------------------------------------------------------------------ health

    @api.get("/healthz")
    async def healthz(self):
        try:
            await asyncio.to_thread(self.store.ping)
        except Exception as e:
            logger.warning("health: store failed: %s", type(e).__name__)
            return JSONResponse(error_body(503, "profile store unavailable", code="unavailable"), status_code=503)
        return {"status": "ok", "model": self.cfg.model_id}

    def check_health(self) -> None:
        self.store.ping()

    def metrics_snapshot(self) -> dict:
        return {**self.metrics.snapshot(), "cache_entries": len(self.cache)}

