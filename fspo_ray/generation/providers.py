"""Providers: who answers each stage's model call. The stages (`stages`) are the same for
both; a provider turns one stage into a list of ops the pipeline runs:

- ("task", fn): a CPU function over a list of rows (a Ray Data task);
- ("engine", model_cfg, sampling_kind): rows carrying `messages` go to a language model
  (an actor pool or a ray.data.llm processor), which fills `generated_text`.

`WorldProvider` answers every call procedurally, so each of its stages is a single task.
`llm.LLMProvider` builds prompts, sends them to engines and parses the replies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from fspo_ray.generation.parsers import (
    Drop,
)
from fspo_ray.generation.rows import rng_for
from fspo_ray.world import World, world_from_config

SPLITS = ("train", "held_out", "interpolated")
VIEW_STRATEGIES = ("view_conditioning", "ensemble_view_conditioning")


@dataclass(frozen=True)
class Shard:
    """Users start .. start+count-1 of one split: the unit of work, commit and resume."""

    shard_id: str
    split: str
    start: int
    count: int

    def as_row(self) -> dict:
        return {"shard_id": self.shard_id, "split": self.split, "start": self.start, "count": self.count, "key": ""}


def plan_shards(users_per_split: dict[str, int], users_per_shard: int) -> list[Shard]:
    """Shards in a fixed order: split by split, users in index order."""
    shards = []
    for split in SPLITS:
        n = users_per_split.get(split, 0)
        for start in range(0, n, users_per_shard):
            count = min(users_per_shard, n - start)
            shards.append(Shard(f"{split}-{start:07d}", split, start, count))
    return shards


def combine_orders(first: str, second: str) -> str:
    """Labels of (a, b) and (b, a) -> 'A' or 'B' (a or b preferred in both orders), 'tie'
    (both ties), else 'inconsistent' (the label moved with the position: dropped)."""
    if first == "A" and second == "B":
        return "A"
    if first == "B" and second == "A":
        return "B"
    if first == "tie" and second == "tie":
        return "tie"
    return "inconsistent"


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


class BaseProvider:
    """Personas and questions, shared by both providers (the world's unless files given)."""

    def __init__(self, cfg):  # cfg: fspo_ray.config.RunConfig
        self.cfg = cfg
        self.gen = cfg.generate
        self.seed = cfg.seed
        self.world: World = world_from_config(cfg.world)
        self.n_slots = math.ceil(cfg.world.prefs_per_user * self.gen.oversample)
        self.target = cfg.world.prefs_per_user
        self._file_users: dict[str, list[dict]] | None = None
        self._file_questions: dict[str, list[dict]] | None = None

    # --- stage 1: personas ---------------------------------------------------------------

    def users_per_split(self) -> dict[str, int]:
        file_users = self.file_users()
        if file_users is not None:
            return {s: len(file_users.get(s, [])) for s in SPLITS}
        w = self.cfg.world
        return {"train": w.users_train, "held_out": w.users_held_out, "interpolated": w.users_interpolated}

    def file_users(self) -> dict[str, list[dict]] | None:
        return None

    def personas(self, shard: dict) -> list[dict]:
        """User rows of a shard: user_id, split, domain, description, profile (or None)."""
        file_users = self.file_users()
        if file_users is not None:
            recs = file_users[shard["split"]][shard["start"] : shard["start"] + shard["count"]]
            return [dict(r) for r in recs]
        out = []
        for p in self.world.make_users(shard["split"], shard["count"], shard["start"]):
            out.append(
                {
                    "user_id": p.user_id,
                    "split": p.split,
                    "domain": p.domain,
                    "description": self.world.describe(p),
                    "profile": p.profile,
                }
            )
        return out

    # --- stage 2: questions --------------------------------------------------------------

    def file_questions(self) -> dict[str, list[dict]] | None:
        return None

    def draw_question(self, user: dict, rng) -> tuple[str, str]:
        """(question_id, text) for one slot of the user."""
        file_qs = self.file_questions()
        if file_qs is not None:
            q = rng.choice(file_qs[user["domain"]])
            return q["question_id"], q["question"]
        if user.get("profile") is not None:
            q = self.world.sample_question(self.world.user(user["user_id"]), rng)
        else:
            q = rng.choice(self.world.questions(user["domain"]))
        return q.question_id, self.world.question_text(q)

    def questions_of_domain(self, domain: str) -> list[tuple[str, str]]:
        file_qs = self.file_questions()
        if file_qs is not None:
            return [(q["question_id"], q["question"]) for q in file_qs.get(domain, [])]
        return [(q.question_id, self.world.question_text(q)) for q in self.world.questions(domain)]


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


def vote_for_label(got: str, order: int, label: str) -> float:
    """1 if a single-order label `got` prefers the labelled side, 0 if the other, 0.5 tie."""
    if got == "tie":
        return 0.5
    # In order 0 'A' names text_a; in order 1 'A' names text_b.
    side = got if order == 0 else ("B" if got == "A" else "A")
    return 1.0 if side == label else 0.0


def make_provider(cfg) -> BaseProvider:
    if cfg.generate.provider == "world":
        return WorldProvider(cfg)
    if cfg.generate.provider == "llm":
        from fspo_ray.generation.llm import LLMProvider

        return LLMProvider(cfg)
    raise ValueError(f"unknown provider {cfg.generate.provider!r}; expected 'world' or 'llm'")
