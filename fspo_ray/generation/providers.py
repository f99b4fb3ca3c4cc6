"""Providers: who answers each stage's model call. The stages (`stages`) are the same for
both; a provider turns one stage into a list of ops the pipeline runs:

- ("task", fn): a CPU function over a list of rows (a Ray Data task);
- ("engine", model_cfg, sampling_kind): rows carrying `messages` go to a language model
  (an actor pool or a ray.data.llm processor), which fills `generated_text`.

`WorldProvider` answers every call procedurally, so each of its stages is a single task.
`LLMProvider` builds prompts (`prompts`), sends them to engines and parses the replies
(`parsers`); it uses the world only for personas and questions unless files are given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from fspo_ray.generation import prompts
from fspo_ray.generation.parsers import Drop, parse_label, parse_refinement, parse_response, parse_views
from fspo_ray.generation.rows import drop, rng_for
from fspo_ray.world import GENERATOR_IDS, World, world_from_config

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
                    "description": p.description,
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
        return q.question_id, q.text

    def questions_of_domain(self, domain: str) -> list[tuple[str, str]]:
        file_qs = self.file_questions()
        if file_qs is not None:
            return [(q["question_id"], q["question"]) for q in file_qs.get(domain, [])]
        return [(q.question_id, q.text) for q in self.world.questions(domain)]


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

    def generator_names(self) -> tuple[str, ...]:
        return GENERATOR_IDS

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

    @staticmethod
    def description(state) -> str:
        return state.description

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
        """[(state, pair, label)] -> share of single-order judgments (ties count half) that
        prefer the labelled side, over `repeats` judgments in each order."""
        out = []
        for state, pair, label in items:
            total = 0.0
            rng = rng_for("votes", self.p.seed, pair["key"], id_of(state))
            for _ in range(repeats):
                for order in (0, 1):
                    total += _vote(self.p._judge_once(state, pair, order, rng), order, label)
            out.append(total / (2 * repeats))
        return out


def id_of(state) -> str:
    # A stable name for a persona state inside a vote's seed: its refined axes.
    return "+".join(getattr(state, "refined", ())) or "initial"


def _vote(got: str, order: int, label: str) -> float:
    """1 if a single-order label `got` prefers the labelled side, 0 if the other, 0.5 tie."""
    if got == "tie":
        return 0.5
    # In order 0 'A' names text_a; in order 1 'A' names text_b.
    side = got if order == 0 else ("B" if got == "A" else "A")
    return 1.0 if side == label else 0.0


# ----------------------------------------------------------------------------- LLM


class LLMProvider(BaseProvider):
    """Language models answer the model calls: prompts from `prompts`, replies parsed by
    `parsers`. The CPU halves (prepare/finish) are tasks; the engine halves run where the
    model is (an actor pool or a ray.data.llm processor)."""

    kind = "llm"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.llm = cfg.generate.llm
        self.generators = list(self.llm.generators)
        self.source = "llm:" + "+".join(g.label() for g in self.generators)

    def generator_names(self) -> tuple[str, ...]:
        return tuple(g.label() for g in self.generators)

    def file_users(self) -> dict[str, list[dict]] | None:
        if self.llm.persona_file is None:
            return None
        if self._file_users is None:
            by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
            domains = self.cfg.world.domains
            for rec in read_jsonl(self.llm.persona_file):
                split = rec["split"]
                domain = rec.get("domain") or domains[len(by_split[split]) % len(domains)]
                by_split[split].append(
                    {"user_id": str(rec["user_id"]), "split": split, "domain": domain,
                     "description": rec["description"], "profile": None}
                )
            self._file_users = by_split
        return self._file_users

    def file_questions(self) -> dict[str, list[dict]] | None:
        if self.llm.questions_file is None:
            return None
        if self._file_questions is None:
            by_domain: dict[str, list[dict]] = {}
            for i, rec in enumerate(read_jsonl(self.llm.questions_file)):
                qid = str(rec.get("question_id") or f"{rec['domain']}-file-{i:06d}")
                by_domain.setdefault(rec["domain"], []).append({"question_id": qid, "question": rec["question"]})
            self._file_questions = by_domain
        return self._file_questions

    # --- stage 3: views ------------------------------------------------------------------

    def views_ops(self, strategy: str | None = None) -> list[tuple]:
        strategy = strategy or self.gen.strategy
        if strategy in VIEW_STRATEGIES:
            return [
                ("task", self.views_prepare),
                ("engine", self.generators[0], "views", strategy),
                ("task", self.views_finish),
            ]
        return [("task", self.views_finish)]

    def views_prepare(self, slots: list[dict]) -> list[dict]:
        out = []
        for s in slots:
            s = dict(s)
            if not s.get("drop"):
                s["messages"] = prompts.views_prompt(s["question"], s["n_views"])
                s["engine"] = self.generators[0].label()
            out.append(s)
        return out

    def views_finish(self, slots: list[dict]) -> list[dict]:
        """Parse listed views (view strategies), or draw steering personas / plain views,
        and assign a generator to each view."""
        out = []
        names = self.generator_names()
        for s in slots:
            s = _strip_engine_fields(s)
            if s.get("drop"):
                out.append(s)
                continue
            n = s["n_views"]
            rng = rng_for("views", self.seed, s["key"], s["strategy"])
            strategy = s["strategy"]
            if strategy in VIEW_STRATEGIES:
                if s.get("engine_error"):
                    out.append(drop(s, "inference_error"))
                    continue
                views = parse_views(s.pop("generated_text", None), n)
                if isinstance(views, Drop):
                    out.append(drop(s, views.reason))
                    continue
                s["views"] = views
            elif strategy == "persona_steering":
                # Random other personas of the world steer each response (not the target user).
                s["views"] = [
                    self.world.user(f"train-{self.world.seed}-{rng.randrange(1_000_000):06d}").description
                    for _ in range(n)
                ]
            else:
                s["views"] = [None] * n
            s.pop("generated_text", None)
            if strategy == "ensemble_view_conditioning":
                offset = rng.randrange(len(names))
                s["generators"] = [names[(offset + i) % len(names)] for i in range(n)]
            else:
                s["generators"] = [names[0]] * n
            out.append(s)
        return out

    # --- stage 4: responses --------------------------------------------------------------

    def responses_ops(self, strategy: str | None = None) -> list[tuple]:
        strategy = strategy or self.gen.strategy
        ops: list[tuple] = [("task", self.responses_prepare)]
        used = self.generators if strategy == "ensemble_view_conditioning" else self.generators[:1]
        ops += [("engine", g, "responses", strategy) for g in used]  # one pool per model in use
        ops.append(("task", self.responses_finish))
        return ops

    def responses_prepare(self, requests: list[dict]) -> list[dict]:
        out = []
        for r in requests:
            r = dict(r)
            if not r.get("drop"):
                view = r.get("view")
                if r["strategy"] == "persona_steering":
                    r["messages"] = prompts.response_prompt(r["question"], persona=view)
                else:
                    r["messages"] = prompts.response_prompt(r["question"], view=view)
                r["engine"] = r["generator"]
            out.append(r)
        return out

    def responses_finish(self, requests: list[dict]) -> list[dict]:
        out = []
        for r in requests:
            r = _strip_engine_fields(r)
            if r.get("drop"):
                out.append(r)
                continue
            if r.pop("engine_error", None):
                out.append(drop(r, "inference_error"))
                continue
            text = parse_response(r.pop("generated_text", None))
            out.append(drop(r, text.reason) if isinstance(text, Drop) else {**r, "response": text})
        return out

    def sampling_for(self, model_cfg, purpose: str, strategy: str) -> dict:
        """Sampling parameters of one engine op (vLLM SamplingParams names)."""
        temperature = model_cfg.temperature
        max_tokens = model_cfg.max_new_tokens
        if purpose == "responses" and strategy == "plain_low_temp":
            temperature = self.llm.low_temperature
        elif purpose == "responses" and strategy == "plain_high_temp":
            temperature = self.llm.high_temperature
        elif purpose == "views":
            max_tokens = self.llm.view_max_new_tokens
        elif purpose == "refine":
            max_tokens = self.llm.refine_max_new_tokens
        return {"temperature": temperature, "top_p": model_cfg.top_p, "max_tokens": max_tokens, "seed": self.seed}

    # --- stage 6: judging ----------------------------------------------------------------

    def judge_ops(self) -> list[tuple]:
        return [
            ("task", self.judge_prepare),
            ("engine", self.llm.judge, "judge", self.gen.strategy),
            ("task", self.judge_finish),
        ]

    def judge_prepare(self, requests: list[dict]) -> list[dict]:
        out = []
        for r in requests:
            r = dict(r)
            if not r.get("drop"):
                first, second = (r["text_a"], r["text_b"]) if r["order"] == 0 else (r["text_b"], r["text_a"])
                r["messages"] = prompts.judge_prompt(r["description"], r["question"], first, second)
                r["engine"] = self.llm.judge.label()
            out.append(r)
        return out

    def judge_finish(self, requests: list[dict]) -> list[dict]:
        out = []
        for r in requests:
            r = _strip_engine_fields(r)
            if r.get("drop"):
                out.append(r)
                continue
            if r.pop("engine_error", None):
                out.append(drop(r, "inference_error"))
                continue
            label = parse_label(r.pop("generated_text", None))
            out.append(drop(r, label.reason) if isinstance(label, Drop) else {**r, "label": label})
        return out

    def open_refiner(self, engine=None) -> LLMRefiner:
        return LLMRefiner(self, engine)


def _strip_engine_fields(row: dict) -> dict:
    row = dict(row)
    row.pop("messages", None)
    row.pop("engine", None)
    return row


class LLMRefiner:
    """The judge calls of iterative refinement through a language model (state = the
    description text). Calls are batched across the users of a shard."""

    def __init__(self, provider: LLMProvider, engine):
        self.p = provider
        self.engine = engine  # fspo_ray.engines.Engine: generate(prompts, Sampling)
        self.calls = 0

    def initial_state(self, user: dict) -> str:
        return user["description"]

    @staticmethod
    def description(state: str) -> str:
        return state

    @staticmethod
    def profile(state) -> None:
        return None

    def _generate(self, messages: list, purpose: str) -> list[str | None]:
        from fspo_ray.generation.engines_ray import render_and_generate

        if not messages:
            return []
        self.calls += len(messages)
        sampling = self.p.sampling_for(self.p.llm.judge, purpose, self.p.gen.strategy)
        return render_and_generate(self.engine, messages, sampling)

    def _judge_orders(self, items: list[tuple]) -> list[tuple]:
        """[(description, pair)] -> (label of order (a, b), label of order (b, a)) per item."""
        msgs = []
        for state, pair in items:
            msgs.append(prompts.judge_prompt(state, pair["question"], pair["text_a"], pair["text_b"]))
            msgs.append(prompts.judge_prompt(state, pair["question"], pair["text_b"], pair["text_a"]))
        texts = self._generate(msgs, "judge")
        return [(parse_label(texts[2 * i]), parse_label(texts[2 * i + 1])) for i in range(len(items))]

    def judge_both(self, items: list[tuple]) -> list[str | Drop]:
        out: list[str | Drop] = []
        for first, second in self._judge_orders([(state, pair) for state, pair, _tag in items]):
            if isinstance(first, Drop) or isinstance(second, Drop):
                out.append(Drop("unparseable_label"))
            else:
                out.append(combine_orders(first, second))
        return out

    def refine(self, items: list[tuple]) -> list[tuple | Drop]:
        sides = ["A" if rng.random() < 0.5 else "B" for _, _, rng in items]
        msgs = []
        for (state, pair, _rng), side in zip(items, sides, strict=True):
            chosen, rejected = (pair["text_a"], pair["text_b"]) if side == "A" else (pair["text_b"], pair["text_a"])
            msgs.append(prompts.refinement_prompt(state, pair["question"], chosen, rejected))
        texts = self._generate(msgs, "refine")
        out: list[tuple | Drop] = []
        for (state, _pair, _rng), side, text in zip(items, sides, texts, strict=True):
            sentence = parse_refinement(text)
            out.append(sentence if isinstance(sentence, Drop) else (f"{state} {sentence}", side))
        return out

    def votes(self, items: list[tuple], repeats: int) -> list[float]:
        # One judgment per order (`repeats` is for the world's random judge); an unparseable
        # reply counts as a coin flip.
        out = []
        for (_, _, label), labels in zip(items, self._judge_orders([(s, p) for s, p, _ in items]), strict=True):
            votes = [0.5 if isinstance(got, Drop) else _vote(got, order, label) for order, got in enumerate(labels)]
            out.append(sum(votes) / 2)
        return out


def make_provider(cfg) -> BaseProvider:
    if cfg.generate.provider == "world":
        return WorldProvider(cfg)
    if cfg.generate.provider == "llm":
        return LLMProvider(cfg)
    raise ValueError(f"unknown provider {cfg.generate.provider!r}; expected 'world' or 'llm'")
