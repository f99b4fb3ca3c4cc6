"""The World facade: one object that owns a seed's users, questions, generators and judge.

Everything is derived from `WorldParams` and ids, never from shared state, so a Ray worker
holding only the params can rebuild any persona or question from its id.

Learnability: a user's pairs are drawn mostly (`on_persona_rate`) on questions where at
least one of the persona's determined axes is relevant, so a held-out pair usually touches
axes the user's shots have revealed; the rest are uniform questions, which reach open axes
and feed iterative refinement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from fspo_ray.splits import SPLITS
from fspo_ray.world.axes import AXES
from fspo_ray.world.judge import decides, judge, refine, score
from fspo_ray.world.persona import Persona
from fspo_ray.world.questions import (
    DOMAINS,
    Question,
    build_question,
    max_questions,
    parse_question_id,
)
from fspo_ray.world.rendering import (
    check_rendering,
    compact_description,
    compact_question,
    compact_response,
    parse_compact_question,
)
from fspo_ray.world.responses import (
    GENERATOR_IDS,
    STRATEGIES,
    View,
    all_views,
    respond,
    sample_views,
)
from fspo_ray.world.users import (
    forbidden_pairs,
    make_user_id,
    parse_user_id,
    sample_persona,
)


@dataclass(frozen=True)
class WorldParams:
    """Everything that defines a world. Flat and typed so a config maps onto it field by field."""

    seed: int = 0
    domains: tuple[str, ...] = DOMAINS
    axes_min: int = 4  # fewest axes a persona sets
    axes_max: int = 6  # most axes a persona sets
    questions_per_domain: int = 200
    forbidden_pairs_per_domain: int = 2  # value pairs held out of training (interpolated split)
    strategy: str = "ensemble_view_conditioning"  # default sampling strategy of user_preferences
    low_spread: float = 0.3  # "temperature" of plain_low_temp and of persona steering
    high_spread: float = 3.0  # "temperature" of plain_high_temp
    steer_rate: float = 0.5  # share of axes a random steering persona sets
    on_persona_rate: float = 0.85  # share of pairs on questions touching a determined axis
    judge_position_bias: float = 0.0
    judge_noise: float = 0.0
    rendering: str = "text"  # "text" (phrases, for LLMs) or "compact" (axis-then-value, tiny models)

    def __post_init__(self) -> None:
        check_rendering(self.rendering)
        object.__setattr__(self, "domains", tuple(self.domains))
        if not self.domains:
            raise ValueError("domains: need at least one domain")
        for d in self.domains:
            if d not in DOMAINS:
                raise ValueError(f"domains: unknown domain {d!r}; expected one of {DOMAINS}")
        if not 1 <= self.axes_min <= self.axes_max <= len(AXES):
            raise ValueError(
                f"axes_min/axes_max: need 1 <= axes_min <= axes_max <= {len(AXES)}, "
                f"got {self.axes_min}, {self.axes_max}"
            )
        limit = min(max_questions(d) for d in self.domains)
        if not 1 <= self.questions_per_domain <= limit:
            raise ValueError(
                f"questions_per_domain: must be in [1, {limit}], got {self.questions_per_domain}"
            )
        if self.forbidden_pairs_per_domain < 1:
            raise ValueError(
                "forbidden_pairs_per_domain: need at least 1 for the interpolated split"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: unknown {self.strategy!r}; expected one of {STRATEGIES}")
        for name in ("steer_rate", "on_persona_rate", "judge_position_bias", "judge_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.low_spread < 0 or self.high_spread < 0:
            raise ValueError("low_spread/high_spread: must be >= 0")


class World:
    """A simulated user world: see the package docstring for the pieces."""

    def __init__(self, params: WorldParams | None = None):
        self.params = params or WorldParams()
        self.seed = self.params.seed
        self.forbidden_pairs = forbidden_pairs(
            self.seed, self.params.domains, self.params.forbidden_pairs_per_domain
        )
        self._questions: dict[str, list[Question]] = {}
        self._by_axis: dict[str, dict[str, list[Question]]] = {}
        self.user = lru_cache(maxsize=1 << 16)(self._user)

    def __reduce__(self):
        # Ship only the params (Ray pickles objects to workers); caches rebuild there.
        return (World, (self.params,))

    # --- users -------------------------------------------------------------------------

    def user_ids(self, split: str, n: int, start: int = 0) -> list[str]:
        """Ids of users start .. start+n-1 of `split`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [make_user_id(split, self.seed, i) for i in range(start, start + n)]

    def make_users(self, split: str, n: int, start: int = 0) -> list[Persona]:
        """Personas of users start .. start+n-1 of `split`."""
        return [self.user(uid) for uid in self.user_ids(split, n, start)]

    def _user(self, uid: str) -> Persona:
        _, seed, _ = parse_user_id(uid)
        if seed != self.seed:
            raise ValueError(f"user {uid!r} belongs to world seed {seed}, not {self.seed}")
        p = self.params
        return sample_persona(uid, p.domains, p.axes_min, p.axes_max, self.forbidden_pairs)

    # --- questions ---------------------------------------------------------------------

    def question(self, question_id: str) -> Question:
        """The question with this id (rebuilt from the id alone)."""
        domain, seed, index = parse_question_id(question_id)
        if seed != self.seed:
            raise ValueError(
                f"question {question_id!r} belongs to world seed {seed}, not {self.seed}"
            )
        if domain not in self.params.domains or index >= self.params.questions_per_domain:
            raise ValueError(f"question {question_id!r} is not in this world")
        return build_question(domain, seed, index)

    def questions(self, domain: str) -> list[Question]:
        """All questions of `domain`, in index order."""
        if domain not in self._questions:
            if domain not in self.params.domains:
                raise ValueError(f"domain {domain!r} is not in this world ({self.params.domains})")
            qs = [
                build_question(domain, self.seed, i)
                for i in range(self.params.questions_per_domain)
            ]
            self._questions[domain] = qs
            by_axis: dict[str, list[Question]] = {}
            for q in qs:
                for a in q.relevant_axes:
                    by_axis.setdefault(a, []).append(q)
            self._by_axis[domain] = by_axis
        return self._questions[domain]

    def sample_question(self, persona: Persona, rng: random.Random) -> Question:
        """A question of the persona's domain; with probability on_persona_rate one where a
        determined axis of the persona is relevant."""
        qs = self.questions(persona.domain)
        if rng.random() < self.params.on_persona_rate:
            by_axis = self._by_axis[persona.domain]
            axes = [a for a, _ in persona.values if a in by_axis]
            if axes:
                return rng.choice(by_axis[rng.choice(axes)])
        return rng.choice(qs)

    # --- responses and judging -----------------------------------------------------------

    def sample_views(
        self,
        question: Question,
        strategy: str | None,
        n: int,
        rng: random.Random,
        persona: Persona | None = None,
        spread: float | None = None,
    ) -> list[tuple[View, str]]:
        """`n` (view, generator id) pairs under `strategy` (default: params.strategy)."""
        p = self.params
        return sample_views(
            question,
            strategy or p.strategy,
            n,
            rng,
            persona=persona,
            spread=spread,
            low_spread=p.low_spread,
            high_spread=p.high_spread,
            steer_rate=p.steer_rate,
        )

    # --- rendering: the same objects as rich text or compact words (world.rendering) ------

    def question_text(self, question: Question) -> str:
        """The question as this world renders it."""
        if self.params.rendering == "compact":
            return compact_question(question)
        return question.text

    def respond(self, question: Question, view: dict, generator: str, rng: random.Random) -> str:
        """A response revealing `view`, in this world's rendering. The compact rendering draws
        the same random numbers as the text one, so both renderings hold the very same pairs."""
        text = respond(question, view, generator, rng)
        if self.params.rendering == "compact":
            return compact_response(question, view)
        return text

    def describe(self, persona: Persona) -> str:
        """The persona's user description, in this world's rendering."""
        if self.params.rendering == "compact":
            return compact_description(persona.values)
        return persona.description

    def find_question(self, text: str) -> Question | None:
        """The question of this world whose text (either rendering) is `text`, or None.
        A compact text names only domain and axes, so it maps to the first such question."""
        text = text.strip()
        compact = parse_compact_question(text)
        for domain in self.params.domains:
            if compact is not None and compact[0] != domain:
                continue
            for q in self.questions(domain):
                if q.text == text or (compact is not None and q.relevant_axes == compact[1]):
                    return q
        return None

    score = staticmethod(score)
    decides = staticmethod(decides)
    refine = staticmethod(refine)

    def judge(
        self,
        persona: Persona,
        question: Question,
        text_a: str,
        text_b: str,
        rng: random.Random,
        position_bias: float | None = None,
        noise: float | None = None,
    ) -> str:
        """The judge with this world's bias and noise unless given."""
        p = self.params
        return judge(
            persona,
            question,
            text_a,
            text_b,
            rng,
            position_bias=p.judge_position_bias if position_bias is None else position_bias,
            noise=p.judge_noise if noise is None else noise,
        )

    # --- the fast path: a user's labelled preference pairs ---------------------------------

    def user_preferences(
        self, user_id: str, n_pairs: int, seed: int = 0, strategy: str | None = None
    ) -> list[dict]:
        """`n_pairs` preference pairs of the user, labelled by the noiseless judge."""
        return self.user_preferences_with_persona(user_id, n_pairs, seed, strategy)[0]

    def user_preferences_with_persona(
        self, user_id: str, n_pairs: int, seed: int = 0, strategy: str | None = None
    ) -> tuple[list[dict], Persona]:
        """Pairs plus the final (refined) persona. An undecided pair refines the persona
        (see judge.refine); pairs that carry no preference are dropped and redrawn. After a
        refinement an earlier pair can lose its label (it differed on the newly fixed axis
        too), so every pair is rechecked against the final persona and redrawn if needed;
        each row's user_description / user_profile is the final persona's."""
        rng = random.Random(f"prefs-{self.seed}-{user_id}-{seed}")
        persona = self.user(user_id)
        rows: list[dict] = []
        budget = 50 * n_pairs + 100
        while len(rows) < n_pairs and budget > 0:
            while len(rows) < n_pairs and budget > 0:
                budget -= 1
                row, persona = self._draw_pair(persona, rng, strategy)
                if row is not None:
                    rows.append(row)
            kept = [r for r in rows if self._still_holds(persona, r)]
            rows = kept
        if len(rows) < n_pairs:
            raise RuntimeError(f"could not draw {n_pairs} labelled pairs for {user_id!r}")
        profile = persona.profile
        for r in rows:
            r["user_description"] = self.describe(persona)
            r["user_profile"] = profile
        return rows, persona

    def _draw_pair(
        self, persona: Persona, rng: random.Random, strategy: str | None
    ) -> tuple[dict | None, Persona]:
        q = self.sample_question(persona, rng)
        (view_a, gen_a), (view_b, gen_b) = self.sample_views(q, strategy, 2, rng)
        text_a = self.respond(q, view_a, gen_a, rng)
        text_b = self.respond(q, view_b, gen_b, rng)
        sa, sb = score(persona, q, text_a), score(persona, q, text_b)
        refined = sa == sb
        if refined:
            result = refine(persona, q, text_a, text_b, rng)
            if result is None:
                return None, persona
            persona, side = result
        else:
            side = "A" if sa > sb else "B"
        if side == "B":
            text_a, text_b, view_a, view_b, gen_a, gen_b = (
                text_b,
                text_a,
                view_b,
                view_a,
                gen_b,
                gen_a,
            )
        row = {
            "user_id": persona.user_id,
            "split": persona.split,
            "domain": q.domain,
            "question_id": q.question_id,
            "question": self.question_text(q),
            "chosen": text_a,
            "rejected": text_b,
            "view_chosen": view_a,
            "view_rejected": view_b,
            "generator_chosen": gen_a,
            "generator_rejected": gen_b,
            "refined": refined,
        }
        return row, persona

    def _still_holds(self, persona: Persona, row: dict) -> bool:
        q = self.question(row["question_id"])
        return score(persona, q, row["chosen"]) > score(persona, q, row["rejected"])

    # --- text for the tokenizer and the base LM ------------------------------------------

    def corpus(self, n_sentences: int, seed: int = 0) -> list[str]:
        """Varied world text: questions (25%), responses of every generator to random views
        (55%), user descriptions, some refined (20%)."""
        rng = random.Random(f"corpus-{self.seed}-{seed}")
        out: list[str] = []
        domains = self.params.domains
        for _ in range(n_sentences):
            u = rng.random()
            q = rng.choice(self.questions(rng.choice(domains)))
            if u < 0.25:
                out.append(q.text)
            elif u < 0.80:
                view = dict(rng.choice(all_views(q.relevant_axes)))
                out.append(respond(q, view, rng.choice(GENERATOR_IDS), rng))
            else:
                persona = self.user(make_user_id("train", self.seed, rng.randrange(1_000_000)))
                if rng.random() < 0.3 and persona.open_axes():
                    axis = rng.choice(persona.open_axes())
                    persona = persona.extend(axis, rng.choice(AXES[axis]))
                out.append(persona.description)
        return out


@lru_cache(maxsize=16)
def get_world(params: WorldParams) -> World:
    """A cached World per params: workers call this instead of rebuilding tables per task."""
    return World(params)


def world_from_config(cfg) -> World:
    """The World of a `WorldConfig` (fspo_ray/world/config.py), read by attribute so this module needs
    no pydantic. The config's `spread` is the high-temperature spread (plain_high_temp);
    fields the config lacks keep their WorldParams defaults."""
    names = {
        "seed": "seed",
        "domains": "domains",
        "min_axes_per_persona": "axes_min",
        "max_axes_per_persona": "axes_max",
        "questions_per_domain": "questions_per_domain",
        "forbidden_pairs_per_domain": "forbidden_pairs_per_domain",
        "strategy": "strategy",
        "low_spread": "low_spread",
        "spread": "high_spread",
        "high_spread": "high_spread",
        "steer_rate": "steer_rate",
        "on_persona_rate": "on_persona_rate",
        "judge_position_bias": "judge_position_bias",
        "judge_noise": "judge_noise",
        "rendering": "rendering",
    }
    kwargs = {param: getattr(cfg, key) for key, param in names.items() if hasattr(cfg, key)}
    return get_world(WorldParams(**kwargs))


def corpus(n_sentences: int, seed: int = 0) -> list[str]:
    """World text for training a tokenizer and a base LM (world seed = `seed`)."""
    return get_world(WorldParams(seed=seed)).corpus(n_sentences, seed)
