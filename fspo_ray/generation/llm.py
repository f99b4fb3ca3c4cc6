"""The LLM provider: language models answer each stage's model call.

Prompts come from `prompts`, replies are parsed by `parsers`. Each model stage is a CPU
prepare task (messages + the model's label in `engine`), an engine op (an actor pool or a
ray.data.llm processor) and a CPU finish task (parse, or count the drop). The world still
supplies personas and questions unless `generate.llm.persona_file` / `questions_file` are set.
"""

from __future__ import annotations

from fspo_ray.engines.config import Sampling
from fspo_ray.engines.local import generate_or_none, render_chat
from fspo_ray.generation import prompts
from fspo_ray.generation.config import VIEW_STRATEGIES
from fspo_ray.generation.labels import combine_orders, vote_for_label
from fspo_ray.generation.parsers import (
    Drop,
    parse_label,
    parse_refinement,
    parse_response,
    parse_views,
)
from fspo_ray.generation.rows import drop, rng_for
from fspo_ray.generation.sources import BaseProvider, read_jsonl
from fspo_ray.splits import SPLITS


class LLMProvider(BaseProvider):
    """Language models answer the model calls: prompts from `prompts`, replies parsed by
    `parsers`. The CPU halves (prepare/finish) are tasks; the engine halves run where the
    model is (an actor pool or a ray.data.llm processor)."""

    kind = "llm"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.llm = cfg.generate.llm
        self.generators = list(self.llm.generators)
        self.source = "+".join(f"{g.kind}:{g.label()}" for g in self.generators)  # e.g. vllm:llama+vllm:gemma

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
        return _finish(requests, parse_response, "response")

    def sampling_for(self, model_cfg, purpose: str, strategy: str) -> Sampling:
        """Sampling of one engine op: the model's defaults, changed by the stage's purpose."""
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
        return Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=model_cfg.top_p, seed=self.seed)

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
        return _finish(requests, parse_label, "label")

    def open_refiner(self, engine=None) -> LLMRefiner:
        return LLMRefiner(self, engine)


def _finish(requests: list[dict], parse, key: str) -> list[dict]:
    """After an engine op: parse each generation into `key`, or drop the row with its reason
    (already dropped, engine error, or what the parser says). One bad row never fails a batch."""
    out = []
    for r in requests:
        r = _strip_engine_fields(r)
        if r.get("drop"):
            out.append(r)
            continue
        if r.pop("engine_error", None):
            out.append(drop(r, "inference_error"))
            continue
        parsed = parse(r.pop("generated_text", None))
        out.append(drop(r, parsed.reason) if isinstance(parsed, Drop) else {**r, key: parsed})
    return out


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
        self.engine = engine  # fspo_ray.engines.local.Engine: generate(prompts, Sampling)
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
        if not messages:
            return []
        self.calls += len(messages)
        sampling = self.p.sampling_for(self.p.llm.judge, purpose, self.p.gen.strategy)
        return generate_or_none(self.engine, [render_chat(self.engine.tokenizer, m) for m in messages], sampling)

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
        """Share of `repeats` judgments per order (sampled at the judge's temperature; with a
        greedy judge one suffices) that prefer the labelled side; unparseable = 1/2."""
        totals = [0.0] * len(items)
        for _ in range(repeats):
            labels = self._judge_orders([(s, p) for s, p, _ in items])
            for i, ((_, _, label), got2) in enumerate(zip(items, labels, strict=True)):
                totals[i] += sum(0.5 if isinstance(g, Drop) else vote_for_label(g, o, label) for o, g in enumerate(got2))
        return [t / (2 * repeats) for t in totals]
