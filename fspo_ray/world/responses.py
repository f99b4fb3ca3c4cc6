"""Responses: views of a question rendered as text by an ensemble of generators, and the
sampling strategies of the paper's diversity ablation.

A view is {axis: value} on the question's relevant axes. A generator writes it as an opener
and closer that mention the topic, one fragment per view value, and, for a `detailed` view,
one more sentence. Generators differ in which paraphrases they use, fragment order,
connectors and filler, so an ensemble raises diversity the way different LLMs would.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from functools import lru_cache

from fspo_ray.world.axes import AXES, FRAGMENTS
from fspo_ray.world.persona import Persona
from fspo_ray.world.questions import Question

View = dict[str, str]

STRATEGIES: tuple[str, ...] = (
    "plain_low_temp",
    "plain_high_temp",
    "persona_steering",
    "view_conditioning",
    "ensemble_view_conditioning",
)


@dataclass(frozen=True)
class Generator:
    """How one simulated model phrases a view."""

    name: str
    slots: tuple[int, ...]  # which of the four paraphrases per value it uses
    order: str  # "given", "reversed" or "shuffled" (over the relevant axes)
    joiner: str  # "comma", "sentences" or "also"
    openers: dict[str, tuple[str, ...]]
    closers: dict[str, tuple[str, ...]]
    details: tuple[str, ...]  # the extra sentence of a detailed view


GENERATORS: dict[str, Generator] = {
    g.name: g
    for g in (
        Generator(
            name="world-gen-a",
            slots=(0, 1),
            order="given",
            joiner="comma",
            openers={
                "roleplay": ("For {t}, here is my take.", "Here is my plan for {t}."),
                "elix": ("Here is {t}, explained.", "Let me explain {t}."),
                "reviews": ("About {t}.", "My review of {t}."),
            },
            closers={
                "roleplay": ("That should make it go well.", "Enjoy it."),
                "elix": ("That is the heart of it.", "That is the core idea."),
                "reviews": ("That sums it up for me.", "That is my honest view."),
            },
            details=("There is much more to say about {t}.", "Every part of {t} counts here."),
        ),
        Generator(
            name="world-gen-b",
            slots=(2, 3),
            order="reversed",
            joiner="sentences",
            openers={
                "roleplay": ("My advice on {t}:", "Thinking about {t}?"),
                "elix": ("So, {t}.", "On {t}:"),
                "reviews": ("Review of {t}:", "My verdict on {t}:"),
            },
            closers={
                "roleplay": ("Hope this helps.", "Have a great time."),
                "elix": ("Hope that makes sense.", "Now you know the basics."),
                "reviews": ("Overall, that is my rating.", "Take it or leave it."),
            },
            details=("I will cover {t} fully.", "Here is the long answer on {t}."),
        ),
        Generator(
            name="world-gen-c",
            slots=(0, 1, 2, 3),
            order="shuffled",
            joiner="also",
            openers={
                "roleplay": ("Planning {t}?", "Ideas for {t}."),
                "elix": ("What is {t}? Good question.", "Okay, {t}."),
                "reviews": ("I tried {t}.", "Rating {t}:"),
            },
            closers={
                "roleplay": ("Good luck with it!", "You will do great."),
                "elix": ("Any more questions?", "Simple as that."),
                "reviews": ("Would I go back? You decide.", "That is the verdict."),
            },
            details=("I could talk about {t} all day.", "Let me add more on {t}."),
        ),
    )
}
GENERATOR_IDS: tuple[str, ...] = tuple(GENERATORS)
DEFAULT_GENERATOR = GENERATOR_IDS[0]


def _pick(rng: random.Random, seq):
    # rng.choice without its rejection sampling: about twice as fast, same distribution up
    # to float rounding; used only on short tuples.
    return seq[int(rng.random() * len(seq))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# (generator, axis, value) -> the paraphrases that generator may use.
_FRAGMENTS_BY_GEN: dict[tuple[str, str, str], tuple[str, ...]] = {
    (g.name, axis, value): tuple(FRAGMENTS[(axis, value)][i] for i in g.slots)
    for g in GENERATORS.values()
    for (axis, value) in FRAGMENTS
}


def respond(question: Question, view: View, generator: str, rng: random.Random) -> str:
    """Text of a response to `question` that reveals `view`, phrased by `generator`.
    Only the question's relevant axes are rendered; a view may leave some out."""
    gen = GENERATORS.get(generator)
    if gen is None:
        raise ValueError(f"unknown generator {generator!r}; expected one of {GENERATOR_IDS}")
    axes = [a for a in question.relevant_axes if a in view]
    if gen.order == "reversed":
        axes.reverse()
    elif gen.order == "shuffled":
        rng.shuffle(axes)
    frags = [_pick(rng, _FRAGMENTS_BY_GEN[(generator, a, view[a])]) for a in axes]
    t = question.topic
    parts = [_pick(rng, gen.openers[question.domain]).format(t=t)]
    if frags:
        if gen.joiner == "sentences":
            parts.append(" ".join(_cap(f) + "." for f in frags))
        elif gen.joiner == "also":
            parts.append("; also ".join([_cap(frags[0])] + frags[1:]) + ".")
        elif len(frags) == 1:
            parts.append(_cap(frags[0]) + ".")
        else:
            parts.append(_cap(", ".join(frags[:-1])) + " and " + frags[-1] + ".")
    if view.get("length") == "detailed":
        parts.append(_pick(rng, gen.details).format(t=t))
    parts.append(_pick(rng, gen.closers[question.domain]))
    return " ".join(parts)


@lru_cache(maxsize=1 << 14)
def all_views(relevant_axes: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Every distinct view over `relevant_axes` (the product of their values)."""
    return tuple(
        tuple(zip(relevant_axes, values, strict=True))
        for values in itertools.product(*(AXES[a] for a in relevant_axes))
    )


def _plain_value(axis: str, mode: str, spread: float, rng: random.Random) -> str:
    # P(value) ~ exp(-[value != mode] / spread): spread -> 0 gives the mode, large spread
    # gives near-uniform. The world's "temperature".
    values = AXES[axis]
    if spread <= 0:
        return mode
    other = math.exp(-1.0 / spread)
    p_mode = 1.0 / (1.0 + (len(values) - 1) * other)
    if rng.random() < p_mode:
        return mode
    return rng.choice([v for v in values if v != mode])


def sample_views(
    question: Question,
    strategy: str,
    n: int,
    rng: random.Random,
    persona: Persona | None = None,
    spread: float | None = None,
    low_spread: float = 0.3,
    high_spread: float = 3.0,
    steer_rate: float = 0.5,
) -> list[tuple[View, str]]:
    """`n` (view, generator id) pairs for `question` under a diversity strategy.

    plain_low_temp / plain_high_temp: each axis drawn around the question's mode with
    `spread` (default low_spread / high_spread). persona_steering: values from `persona`
    where it sets them, else from a fresh random persona that sets each axis with
    probability `steer_rate`; other axes as plain sampling. view_conditioning: distinct
    views of the question, one response each. ensemble_view_conditioning: the same with
    generators taking turns.
    """
    mode = dict(question.mode)
    axes = question.relevant_axes
    if strategy in ("plain_low_temp", "plain_high_temp"):
        s = (
            spread
            if spread is not None
            else (low_spread if strategy == "plain_low_temp" else high_spread)
        )
        return [
            ({a: _plain_value(a, mode[a], s, rng) for a in axes}, DEFAULT_GENERATOR)
            for _ in range(n)
        ]
    if strategy == "persona_steering":
        s = spread if spread is not None else low_spread
        out = []
        for _ in range(n):
            view = {}
            for a in axes:
                fixed = persona.value(a) if persona is not None else None
                if fixed is None and persona is None and rng.random() < steer_rate:
                    fixed = rng.choice(AXES[a])
                view[a] = fixed if fixed is not None else _plain_value(a, mode[a], s, rng)
            out.append((view, DEFAULT_GENERATOR))
        return out
    if strategy in ("view_conditioning", "ensemble_view_conditioning"):
        views = all_views(axes)
        chosen: list[tuple[tuple[str, str], ...]] = []
        while len(chosen) < n:
            chosen.extend(rng.sample(views, min(len(views), n - len(chosen))))
        if strategy == "view_conditioning":
            return [(dict(v), DEFAULT_GENERATOR) for v in chosen]
        offset = rng.randrange(len(GENERATOR_IDS))
        return [
            (dict(v), GENERATOR_IDS[(offset + i) % len(GENERATOR_IDS)])
            for i, v in enumerate(chosen)
        ]
    raise ValueError(f"unknown sampling strategy {strategy!r}; expected one of {STRATEGIES}")
