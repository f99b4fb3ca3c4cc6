"""Providers: who answers each stage's model call. The stages (`stages`) are the same for
both; a provider (users and questions from `sources`) turns one stage into a list of ops the
pipeline runs:

- ("task", fn): a CPU function over a list of rows (a Ray Data task);
- ("engine", model_cfg, sampling_kind): rows carrying `messages` go to a language model
  (an actor pool or a ray.data.llm processor), which fills `generated_text`.

`WorldProvider` answers every call procedurally, so each of its stages is a single task.
`llm.LLMProvider` builds prompts, sends them to engines and parses the replies.
"""

from __future__ import annotations

from fspo_ray.generation.labels import combine_orders
from fspo_ray.generation.llm import LLMProvider
from fspo_ray.generation.parsers import Drop
from fspo_ray.generation.rows import rng_for
from fspo_ray.generation.sources import BaseProvider


class WorldProvider(BaseProvider):
    """The simulated world answers every model call; each stage is one CPU task."""

    kind = "world"
    source = "world"

    def __init__(self, cfg):
        super().__init__(cfg)
        w = cfg.world
        self.bias, self.noise = w.judge_position_bias, w.judge_noise
        self._questions: dict = {}

    def question(self, question_id: str):
        q = self._questions.get(question_id)
        if q is None:
            q = self._questions[question_id] = self.world.question(question_id)
        return q

    # --- stage 3: views ------------------------------------------------------------------

    def views_ops(self, strategy: str | None = None) -> list[tuple]:
        return [("task", self.views)]

    def views(self, slots: list[dict]) -> list[dict]:
        out = []
        for s in slots:
            if s.get("drop"):
                out.append(s)
                continue
            q = self.question(s["question_id"])
            rng = rng_for("views", self.seed, s["key"], s["strategy"])
            drawn = self.world.sample_views(q, s["strategy"], s["n_views"], rng)
            s = dict(s)
            s["views"] = [v for v, _ in drawn]
            s["generators"] = [g for _, g in drawn]
            out.append(s)
        return out

    # --- stage 4: responses --------------------------------------------------------------

    def responses_ops(self, strategy: str | None = None) -> list[tuple]:
        return [("task", self.responses)]

    def responses(self, requests: list[dict]) -> list[dict]:
        out = []
        for r in requests:
            if r.get("drop"):
                out.append(r)
                continue
            q = self.question(r["question_id"])
            r = dict(r)
            r["response"] = self.world.respond(q, r["view"], r["generator"], rng_for("respond", self.seed, r["key"], r["k"]))
            out.append(r)
        return out

    # --- stage 6: judging ----------------------------------------------------------------

    def judge_ops(self) -> list[tuple]:
        return [("task", self.judge)]

    def judge(self, requests: list[dict]) -> list[dict]:
        out = []
        for r in requests:
            if r.get("drop"):
                out.append(r)
                continue
            r = dict(r)
            r["label"] = self._judge_once(self.world.user(r["user_id"]), r, r["order"], rng_for("judge", self.seed, r["key"], r["order"]))
            out.append(r)
        return out

    def _judge_once(self, persona, pair: dict, order: int, rng) -> str:
        q = self.question(pair["question_id"])
        first, second = (pair["text_a"], pair["text_b"]) if order == 0 else (pair["text_b"], pair["text_a"])
        return self.world.judge(persona, q, first, second, rng, self.bias, self.noise)

    # --- stage 7: refinement backend (runs where the judge is) ---------------------------

    def open_refiner(self) -> WorldRefiner:
        return WorldRefiner(self)


class WorldRefiner:
    """The judge calls of iterative refinement, answered by the world (state = Persona)."""

    def __init__(self, provider: WorldProvider):
        self.p = provider
        self.world = provider.world

    def initial_state(self, user: dict):
        return self.world.user(user["user_id"])

    def description(self, state) -> str:
        return self.world.describe(state)

    @staticmethod
    def profile(state) -> dict | None:
        return state.profile

    def judge_both(self, items: list[tuple]) -> list[str]:
        """[(state, pair, tag)] -> combined label of both orders per item."""
        out = []
        for state, pair, tag in items:
            rng = rng_for("rejudge", self.p.seed, pair["key"], tag)
            out.append(combine_orders(*(self.p._judge_once(state, pair, order, rng) for order in (0, 1))))
        return out

    def refine(self, items: list[tuple]) -> list[tuple | Drop]:
        """[(state, pair, rng)] -> (new state, 'A'|'B') or Drop('no_preference')."""
        out: list[tuple | Drop] = []
        for state, pair, rng in items:
            q = self.p.question(pair["question_id"])
            res = self.world.refine(state, q, pair["text_a"], pair["text_b"], rng)
            out.append(Drop("no_preference") if res is None else res)
        return out

    def votes(self, items: list[tuple], repeats: int) -> list[float]:
        """[(state, pair, label)] -> expected share of single-order judgments (ties count
        half) that prefer the labelled side, over both orders. The world knows its judge's
        distribution (position bias, noise, then the score), so this is the limit of
        infinitely many judgments: no sampling noise; `repeats` is not needed."""
        bias, noise = self.p.bias, self.p.noise
        out = []
        for state, pair, label in items:
            q = self.p.question(pair["question_id"])
            sa, sb = self.world.score(state, q, pair["text_a"]), self.world.score(state, q, pair["text_b"])
            total = 0.0
            for order in (0, 1):
                s1, s2 = (sa, sb) if order == 0 else (sb, sa)
                clean = (1 - bias) * (1 - noise)
                p_a = bias + (1 - bias) * noise / 2 + clean * (s1 > s2)
                p_b = (1 - bias) * noise / 2 + clean * (s2 > s1)
                p_tie = clean * (s1 == s2)
                # "A" names the first text shown: text_a in order 0, text_b in order 1
                p_label = p_a if (label == "A") == (order == 0) else p_b
                total += p_label + 0.5 * p_tie
            out.append(total / 2)
        return out


def make_provider(cfg) -> BaseProvider:
    if cfg.generate.provider == "world":
        return WorldProvider(cfg)
    if cfg.generate.provider == "llm":
        return LLMProvider(cfg)
    raise ValueError(f"unknown provider {cfg.generate.provider!r}; expected 'world' or 'llm'")
