"""The pairs the page asks a new user about: a question and two answers to choose between.

Two sources:
- the simulated world (the embedded default): world questions with two view-conditioned answers
  that differ on some of the question's relevant axes; each answer's view is kept as its
  `features`, which the active elicitation strategy reasons over;
- a JSONL file for real deployments, one pair a line:

      {"question": "...", "answer_a": "...", "answer_b": "...", "id": "opt", "features_a": {...}, "features_b": {...}}

  `id` is optional (default: the line number); `features_a`/`features_b` (both or neither) map an
  aspect to the answer's value on it, e.g. {"tone": "formal"}, and are what `active` needs. The
  file is validated when the app starts; the first bad row is named by its line number.

Each text exists twice: `model` (what is stored as the preference and rendered into prompts) and
`person` (what the page shows); they differ only for a world model on the compact rendering.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fspo_ray.errors import FspoError
from fspo_ray.serving import world_text
from fspo_ray.world import AXES, GENERATOR_IDS, Question, World, respond

JSONL_KEYS = ("question", "answer_a", "answer_b", "id", "features_a", "features_b")


class PoolError(FspoError):
    """A pair pool that cannot be served; the message names the file and line."""


@dataclass(frozen=True)
class Text:
    model: str  # stored as the preference, rendered into the model's prompt
    person: str  # shown on the page


@dataclass(frozen=True)
class Pair:
    pair_id: str
    question: Text
    answers: tuple[Text, Text]
    features: tuple[Mapping[str, str], Mapping[str, str]] | None = None
    world_question: Question | None = None  # world pools: for display of model-written answers


class PairPool:
    """The pairs, and the way back from a stored preference to the pair it answered."""

    def __init__(self, pairs: Sequence[Pair], world: World | None = None, rendering: str = "text"):
        if not pairs:
            raise PoolError("the pair pool is empty")
        self.pairs = tuple(pairs)
        self.world, self.rendering = world, rendering
        self._by_texts: dict[tuple[str, str, str], tuple[int, int]] = {}
        self._questions: dict[str, Question | None] = {}
        self._person: dict[tuple[str, str], str] = {}  # (question, answer) as the model reads them -> as shown
        for i, p in enumerate(self.pairs):
            a, b = p.answers[0].model, p.answers[1].model
            self._by_texts[(p.question.model, a, b)] = (i, 0)  # chosen = answer 0
            self._by_texts[(p.question.model, b, a)] = (i, 1)
            self._questions.setdefault(p.question.model, p.world_question)
            for t in p.answers:
                self._person[(p.question.model, t.model)] = t.person
        self.has_features = all(p.features is not None for p in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def answered(self, question: str, chosen: str, rejected: str) -> tuple[int, int] | None:
        """(pair index, side chosen) of a stored preference, or None if it did not come from the pool."""
        return self._by_texts.get((question, chosen, rejected))

    def world_question(self, model_question: str) -> Question | None:
        """The world question behind a model-rendered question: a pool question, else the world's own
        lookup (a compact question names only domain and axes, so the pool's pick comes first)."""
        if model_question in self._questions:
            return self._questions[model_question]
        if self.world is not None and hasattr(self.world, "find_question"):
            return self.world.find_question(model_question)
        if self.world is not None:  # a world without find_question: text questions only
            for domain in self.world.params.domains:
                for q in self.world.questions(domain):
                    if q.text == model_question:
                        return q
        return None

    def person_question(self, model_question: str) -> str:
        q = self.world_question(model_question)
        return q.text if q is not None else model_question

    def person_answer(self, model_question: str, answer: str) -> str:
        """A pool answer as the page showed it; any other (a model's) through the world's display."""
        shown = self._person.get((model_question, answer))
        if shown is not None:
            return shown
        return world_text.for_person(self.world_question(model_question), answer)


# --------------------------------------------------------------------------- the world


def _second_view(question: Question, first: dict[str, str], rng: random.Random) -> dict[str, str]:
    """`first` changed on a random non-empty subset of the relevant axes: pairs that differ on one
    axis tell exactly one thing; pairs that differ on several, a trade-off."""
    axes = list(question.relevant_axes)
    k = rng.randint(1, len(axes))
    changed = rng.sample(axes, k)
    second = dict(first)
    for a in changed:
        second[a] = rng.choice([v for v in AXES[a] if v != first[a]])
    return second


def world_pool(world: World, rendering: str, size: int, seed: int = 0) -> PairPool:
    """`size` pairs on distinct world questions, domains in turn; deterministic in (world seed, seed)."""
    rng = random.Random(f"page-pool-{world.seed}-{seed}")
    domains = list(world.params.domains)
    per_domain = {d: rng.sample(world.questions(d), len(world.questions(d))) for d in domains}
    pairs: list[Pair] = []
    seen: set[tuple[str, str, str]] = set()
    i = 0
    while len(pairs) < size:
        d = domains[i % len(domains)]
        i += 1
        if not per_domain[d]:
            if not any(per_domain.values()):
                break  # fewer questions than `size`: the pool is every question once
            continue
        q = per_domain[d].pop()
        va = {a: rng.choice(AXES[a]) for a in q.relevant_axes}
        vb = _second_view(q, va, rng)
        answers = []
        for view in (va, vb):
            text = respond(q, view, rng.choice(GENERATOR_IDS), rng)
            answers.append(Text(world_text.for_model(rendering, q, view, text), text))
        question = Text(world_text.for_model(rendering, q), q.text)
        if (question.model, answers[0].model, answers[1].model) in seen:
            continue  # the model would read it as a pair already in the pool (compact: same axes and views)
        seen.add((question.model, answers[0].model, answers[1].model))
        seen.add((question.model, answers[1].model, answers[0].model))
        pairs.append(Pair(
            pair_id=f"{q.question_id}:{len(pairs)}",
            question=question,
            answers=(answers[0], answers[1]),
            features=(va, vb),
            world_question=q,
        ))
    return PairPool(pairs, world, rendering)


# --------------------------------------------------------------------------- JSONL


def _features(value, key: str, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        raise PoolError(f"{where}: {key} must be a non-empty object of aspect -> value strings")
    return dict(value)


def _row(line: str, where: str, max_chars: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise PoolError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise PoolError(f"{where}: must be a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(JSONL_KEYS))
    if unknown:
        raise PoolError(f"{where}: unknown key {unknown[0]!r}; expected keys {JSONL_KEYS}")
    for key in ("question", "answer_a", "answer_b"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise PoolError(f"{where}: {key} must be a non-empty string")
        if len(value) > max_chars:
            raise PoolError(f"{where}: {key} has {len(value)} characters; the limit is {max_chars} "
                            "(limits.max_text_chars), or the profile API would refuse it")
    if row["answer_a"].strip() == row["answer_b"].strip():
        raise PoolError(f"{where}: answer_a and answer_b are the same text; a choice between them tells nothing")
    if "id" in row and (not isinstance(row["id"], str) or not row["id"]):
        raise PoolError(f"{where}: id must be a non-empty string")
    if ("features_a" in row) != ("features_b" in row):
        raise PoolError(f"{where}: give both features_a and features_b, or neither")
    return row


def jsonl_pool(path: str | Path, max_chars: int) -> PairPool:
    """Read and validate a JSONL pool; the first bad row fails with its line number."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PoolError(f"page.pairs.path: cannot read {p}: {e}") from None
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines are allowed (e.g. a trailing newline)
        where = f"{p}: line {n}"
        row = _row(line, where, max_chars)
        pair_id = row.get("id", f"line-{n}")
        if pair_id in seen:
            raise PoolError(f"{where}: id {pair_id!r} repeats line {seen[pair_id]}")
        seen[pair_id] = n
        features = None
        if "features_a" in row:
            features = (_features(row["features_a"], "features_a", where), _features(row["features_b"], "features_b", where))
        q = row["question"]
        pairs.append(Pair(pair_id, Text(q, q), (Text(row["answer_a"], row["answer_a"]),
                                                Text(row["answer_b"], row["answer_b"])), features))
    if not pairs:
        raise PoolError(f"page.pairs.path: {p} holds no pairs")
    return PairPool(pairs)
