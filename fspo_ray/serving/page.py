"""The web page's settings (`page:` in serve/config.yaml) and the logic behind its API: which pair
to ask next, and stored preferences and answers turned into what a person reads.

Plain Python (no Ray, no FastAPI), so it is tested in milliseconds; page_routes.py is the HTTP shell.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fspo_ray.episodes import Preference
from fspo_ray.sections import ConfigError, Section, load_section
from fspo_ray.serving import world_text
from fspo_ray.serving.elicitation import Elicitor
from fspo_ray.serving.pool import PairPool, PoolError, jsonl_pool, world_pool
from fspo_ray.serving.store import user_key
from fspo_ray.world import World, WorldParams, world_from_config
from fspo_ray.world.config import WorldConfig

# A run writes the config each stage resolved; the train job's is the one its models came from.
RUN_CONFIG_NAMES = ("resolved_config.train.yaml", "resolved_config.demo.yaml", "resolved_config.generate.yaml")


class WorldPairsConfig(Section):
    """The embedded default's pairs: world questions, two answers differing on the relevant axes."""

    run_config: str | None = Field(
        None, description="The training run's resolved config (a YAML file, or a run directory holding "
        f"one of {RUN_CONFIG_NAMES}): the pool then uses the world (seed, domains) and rendering the models were "
        "trained on. Unset: `seed` and `rendering` below. '{output_dir}' is replaced."
    )
    seed: int = Field(0, description="World seed when run_config is unset.")
    rendering: Literal["text", "compact"] = Field(
        "text", description="The models' rendering of the world when run_config is unset: 'text' (sentences) or "
        "'compact' (axis-then-value words). The page always shows sentences."
    )
    size: int = Field(200, ge=1, description="Pairs in the pool (one per world question, domains in turn).")
    pool_seed: int = Field(0, description="Seed of the pool's questions and answers.")


class PairsConfig(Section):
    """Where the elicitation pairs come from."""

    source: Literal["world", "jsonl"] = Field(
        "world", description="'world': generated from the simulated world; 'jsonl': `path`, one "
        "{question, answer_a, answer_b[, id, features_a, features_b]} object a line (docs/serving.md)."
    )
    path: str | None = Field(None, description="jsonl: the pool file (validated at start; a bad row is named by line).")
    world: WorldPairsConfig = Field(default_factory=WorldPairsConfig, description="world: how to build the pool.")

    @model_validator(mode="after")
    def _check(self) -> PairsConfig:
        if self.source == "jsonl" and not self.path:
            raise ValueError("source 'jsonl' needs path (a JSONL file of question/answer_a/answer_b rows)")
        if self.source == "world" and self.path is not None:
            raise ValueError("path applies to source 'jsonl' only")
        return self


class PageConfig(Section):
    """The page at `/`: cold-start elicitation, the inferred persona, personalized chat."""

    enabled: bool = Field(True, description="Serve the page at / and its API under /v1/page/.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="The pair pool.")
    strategy: Literal["random", "active"] = Field(
        "active", description="Which pair to ask next: 'random' (a per-user random order) or 'active' (the pair "
        "whose answer is expected to tell most about the user; needs the pairs' features)."
    )
    num_pairs: int = Field(4, ge=1, le=32, description="Pairs a new visitor is asked (K).")
    suggestions: int = Field(6, ge=0, le=50, description="Pool questions offered as chat suggestions.")
    unpersonalized_model: str | None = Field(
        None, description="The model of the unpersonalized answer (question only, e.g. the base model "
        "'{output_dir}/models/base_sft'), served by its own deployment. Unset: the answer model with no user context."
    )


def _run_config_file(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        for name in RUN_CONFIG_NAMES:
            if (p / name).is_file():
                return p / name
        raise ConfigError(f"page.pairs.world.run_config: {p} holds none of {RUN_CONFIG_NAMES}; train first, or "
                          "unset run_config and give page.pairs.world.seed and rendering")
    if not p.is_file():
        raise ConfigError(f"page.pairs.world.run_config: {p} does not exist")
    return p


def world_of(cfg: WorldPairsConfig) -> tuple[World, str]:
    """The world and the models' rendering of it."""
    if cfg.run_config is None:
        return World(WorldParams(seed=cfg.seed)), cfg.rendering
    # Only the run's `world:` section: serving reads no other package's settings.
    world = load_section(_run_config_file(cfg.run_config), "world", WorldConfig)
    return world_from_config(world), world.rendering


def build_pool(page: PageConfig, max_chars: int) -> PairPool:
    if page.pairs.source == "jsonl":
        pool = jsonl_pool(page.pairs.path, max_chars)
    else:
        world, rendering = world_of(page.pairs.world)
        pool = world_pool(world, rendering, page.pairs.world.size, page.pairs.world.pool_seed)
    if page.strategy == "active" and not pool.has_features:
        missing = next(p.pair_id for p in pool.pairs if p.features is None)
        raise PoolError(f"page.strategy 'active' needs features_a/features_b on every pair; pair {missing!r} "
                        "has none (add them, or use strategy 'random')")
    return pool


def pair_view(pool: PairPool, index: int) -> dict:
    p = pool.pairs[index]
    return {"id": p.pair_id, "question": {"model": p.question.model, "text": p.question.person},
            "answers": [{"model": a.model, "text": a.person} for a in p.answers]}


class PageService:
    """The page's state is the profile store: answered pairs are the user's stored preferences."""

    def __init__(self, page: PageConfig, max_chars: int):
        self.cfg = page
        self.pool = build_pool(page, max_chars)
        self.elicitor = Elicitor(self.pool, page.strategy)
        self._ids = {p.pair_id: i for i, p in enumerate(self.pool.pairs)}

    def info(self, model_id: str, unpersonalized: str) -> dict:
        seen, suggestions = set(), []
        for p in self.pool.pairs:
            if len(suggestions) >= self.cfg.suggestions:
                break
            if p.question.person not in seen:
                seen.add(p.question.person)
                suggestions.append({"text": p.question.person, "model": p.question.model})
        world = self.pool.world
        return {"model_id": model_id, "num_pairs": self.cfg.num_pairs, "strategy": self.cfg.strategy,
                "world": world is not None, "domains": list(world.params.domains) if world else [],
                "rendering": self.pool.rendering, "suggestions": suggestions, "unpersonalized": unpersonalized}

    def answered(self, stored: Sequence[Preference]) -> list[tuple[int, int]]:
        out = []
        for s in stored:
            hit = self.pool.answered(s.question, s.chosen, s.rejected)
            if hit is not None:
                out.append(hit)
        return out

    def next_pair(self, user_id: str, stored: Sequence[Preference], skipped: Sequence[str]) -> dict:
        """{answered, target, done, pair}; `pair` is None once the pool has nothing left to ask."""
        answered = self.answered(stored)
        excluded = {self._ids[s] for s in skipped if s in self._ids}
        index = self.elicitor.next_pair(user_key(user_id), answered, excluded)
        n = len({i for i, _ in answered})
        return {"answered": n, "target": self.cfg.num_pairs, "done": n >= self.cfg.num_pairs,
                "pair": None if index is None else pair_view(self.pool, index)}

    def question(self, text: str) -> dict:
        """A question as typed or picked -> what the model reads, what a person reads, whether the world knows it."""
        text = text.strip()
        for p in self.pool.pairs:  # a suggestion, by either rendering
            if text in (p.question.person, p.question.model):
                return {"model": p.question.model, "text": p.question.person, "known": True}
        world = self.pool.world
        q = world.find_question(text) if world is not None and hasattr(world, "find_question") else None
        if q is None:
            return {"model": text, "text": text, "known": False}
        return {"model": world_text.for_model(self.pool.rendering, q), "text": q.text, "known": True}

    def display(self, model_question: str, text: str) -> str:
        return self.pool.person_answer(model_question, text)

    @staticmethod
    def display_persona(text: str) -> str:
        """The inferred persona as a person reads it (sentences, whichever rendering the model wrote)."""
        return world_text.persona_for_person(text)

    def profile(self, stored: Sequence[Preference]) -> list[dict]:
        """The stored preferences as a person reads them, with the index DELETE takes (oldest first).
        A pool pair is shown as it was asked (a compact question alone can stand for several)."""
        out = []
        for i, s in enumerate(stored):
            hit = self.pool.answered(s.question, s.chosen, s.rejected)
            if hit is not None:
                pair, side = self.pool.pairs[hit[0]], hit[1]
                texts = (pair.question.person, pair.answers[side].person, pair.answers[1 - side].person)
            else:
                texts = (self.pool.person_question(s.question), self.pool.person_answer(s.question, s.chosen),
                         self.pool.person_answer(s.question, s.rejected))
            out.append(dict(zip(("question", "chosen", "rejected"), texts, strict=True), index=i))
        return out
