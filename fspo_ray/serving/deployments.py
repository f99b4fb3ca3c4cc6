"""The two model stages as Serve deployments: thin shells around fspo_ray.personalize.

Non-streamed calls are batched (serving.batching.Batcher: one engine call per batch, formed when
the engine becomes free); engine work runs in a thread pool so the replica's event loop keeps
answering health checks and cancellations.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from fspo_ray.engines.config import Sampling
from fspo_ray.episodes import Preference
from fspo_ray.personalize import Generation, Personalizer, PromptTooLongError
from fspo_ray.serving.batching import Batcher
from fspo_ray.serving.config import ServeConfig
from fspo_ray.serving.metrics import ServeMetrics

logger = logging.getLogger("ray.serve")

UNHEALTHY_AFTER_FAILURES = 3


class EngineHealth:
    """check_health fails after several engine calls in a row failed (a wedged or OOM engine)."""

    def __init__(self):
        self.failures_in_row = 0
        self.last_error = ""

    def ok(self) -> None:
        self.failures_in_row = 0

    def failed(self, e: BaseException) -> None:
        self.failures_in_row += 1
        self.last_error = type(e).__name__

    def check(self) -> None:
        if self.failures_in_row >= UNHEALTHY_AFTER_FAILURES:
            raise RuntimeError(f"engine failed {self.failures_in_row} calls in a row (last: {self.last_error})")


def _result(g: Generation) -> dict:
    return {"text": g.text, "tokens": g.tokens, "prompt_tokens": g.prompt_tokens,
            "finish_reason": g.finish_reason, "shots_used": g.shots_used}


class _Stage:
    def __init__(self, cfg: ServeConfig, stage: str, max_ongoing: int):
        self.stage = stage
        self.personalizer = Personalizer.from_config(cfg.personalize, stages=(stage,))
        self.pool = ThreadPoolExecutor(max_workers=max_ongoing + 2, thread_name_prefix=f"fspo-{stage}")
        self.metrics = ServeMetrics()
        self.health = EngineHealth()

    async def run(self, fn, *args):
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except PromptTooLongError:
            raise
        except Exception as e:
            self.health.failed(e)
            raise
        self.health.ok()
        return out

    async def generate_batch(self, prompts: list, sampling_of: list[Sampling]) -> list:
        """prompts[i] is (prompt, n_prompt, kept) or a PromptTooLongError; one engine call per distinct sampling."""
        results: list = [p if isinstance(p, Exception) else None for p in prompts]
        groups: dict[Sampling, list[int]] = {}
        for i, p in enumerate(prompts):
            if not isinstance(p, Exception):
                groups.setdefault(sampling_of[i], []).append(i)
        for sampling, idx in groups.items():
            gens = await self.run(self.personalizer.generate_from_prompts, self.stage, [prompts[i] for i in idx], sampling)
            for i, g in zip(idx, gens, strict=True):
                results[i] = _result(g)
                self.metrics.tokens(self.stage, g.tokens)
        return results


def _prepare(fn, *args):
    try:
        return fn(*args)
    except PromptTooLongError as e:
        return e


def _unwrap(result):
    if isinstance(result, Exception):
        raise result
    return result


@serve.deployment(name="PersonaDeployment")
class PersonaDeployment:
    """Stage 1: the RAT user description from the user's shots."""

    def __init__(self, cfg: ServeConfig):
        self._s = _Stage(cfg, "persona", cfg.deployments.persona.max_ongoing_requests)
        self._sampling = cfg.personalize.persona.sampling()
        b = cfg.deployments.persona_batching
        self._batcher = Batcher(self._describe_batch, b.max_batch_size, b.batch_wait_timeout_s)

    async def _describe_batch(self, shots_list: list[Sequence[Preference]]) -> list:
        p = self._s.personalizer
        prompts = [_prepare(p.describe_prompt, shots, self._sampling.max_new_tokens) for shots in shots_list]
        return await self._s.generate_batch(prompts, [self._sampling] * len(prompts))

    async def describe(self, shots: Sequence[Preference]) -> dict:
        """-> {text, tokens, prompt_tokens, finish_reason, shots_used}"""
        return _unwrap(await self._batcher.submit(tuple(shots)))

    def check_health(self) -> None:
        self._s.health.check()

    def stats(self) -> dict:
        return {"batch_sizes": dict(self._batcher.sizes), "metrics": self._s.metrics.snapshot()}


@serve.deployment(name="AnswerDeployment")
class AnswerDeployment:
    """Stage 2: the answer from shots + description + question, batched or streamed."""

    def __init__(self, cfg: ServeConfig):
        self._s = _Stage(cfg, "answer", cfg.deployments.answer.max_ongoing_requests)
        b = cfg.deployments.answer_batching
        self._batcher = Batcher(self._answer_batch, b.max_batch_size, b.batch_wait_timeout_s)
        self.streams: Counter = Counter()

    async def _answer_batch(self, items: list[tuple]) -> list:
        p = self._s.personalizer
        prompts = [_prepare(p.answer_prompt, shots, desc, q, s.max_new_tokens) for shots, desc, q, s in items]
        return await self._s.generate_batch(prompts, [s for *_, s in items])

    async def answer(self, shots: Sequence[Preference], description: str | None, question: str,
                     sampling: Sampling) -> dict:
        """-> {text, tokens, prompt_tokens, finish_reason, shots_used}"""
        return _unwrap(await self._batcher.submit((tuple(shots), description, question, sampling)))

    async def stream(self, shots: Sequence[Preference], description: str | None, question: str, sampling: Sampling):
        """Yields {"text": piece}... then {"done": True, tokens, prompt_tokens, finish_reason}.

        Cancelling the request (client disconnect: Serve cancels the caller, and with it this
        call) stops generation at the next token.
        """
        p = self._s.personalizer
        prompt, n_prompt, kept = p.answer_prompt(shots, description, question, sampling.max_new_tokens)
        cancel = threading.Event()
        pieces = p.stream_prompt(prompt, sampling, cancel)
        text, outcome = "", "failed"
        self.streams["started"] += 1
        try:
            while True:
                piece = await self._s.run(next, pieces, None)
                if piece is None:
                    break
                text += piece
                yield {"text": piece}
            n = p.count_tokens("answer", text)
            outcome = "completed"
            yield {"done": True, "tokens": n, "prompt_tokens": n_prompt, "shots_used": kept,
                   "finish_reason": "length" if n >= sampling.max_new_tokens else "stop"}
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            cancel.set()
            self.streams[outcome] += 1
            n = p.count_tokens("answer", text) if text else 0
            self.streams["tokens_" + outcome] += n
            self._s.metrics.tokens("answer", n)

    def check_health(self) -> None:
        self._s.health.check()

    def stats(self) -> dict:
        return {"batch_sizes": dict(self._batcher.sizes), "streams": dict(self.streams),
                "metrics": self._s.metrics.snapshot()}
