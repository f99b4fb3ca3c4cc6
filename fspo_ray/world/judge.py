"""The world's judge: a user's true preference between two texts, and persona refinement.

A text scores +1 for each relevant axis of the question where the reader finds the
persona's value and -1 where it finds another value; axes the persona leaves open and
axes the text does not reveal count 0. Length counts only as the `length` axis value, so a
long text gains nothing for being long. Position bias and noise make a realistic judge.
"""

from __future__ import annotations

import random

from fspo_ray.world.persona import Persona
from fspo_ray.world.questions import Question
from fspo_ray.world.reader import read, reading

LABELS = ("A", "B", "tie")


def score(persona: Persona, question: Question, text: str) -> float:
    """Matches minus contradictions on the persona's determined, relevant axes."""
    shown = reading(text)
    relevant = question.relevant_axes
    total = 0
    for axis, want in persona.values:
        if axis in relevant:
            got = shown.get(axis)
            if got is not None:
                total += 1 if got == want else -1
    return float(total)


def decides(persona: Persona, question: Question, text_a: str, text_b: str) -> bool:
    """Whether the persona's determined axes separate the two texts."""
    return score(persona, question, text_a) != score(persona, question, text_b)


def judge(
    persona: Persona,
    question: Question,
    text_a: str,
    text_b: str,
    rng: random.Random,
    position_bias: float = 0.0,
    noise: float = 0.0,
) -> str:
    """Return "A", "B" or "tie". With probability `position_bias` it answers "A" whatever the
    texts; else with probability `noise` it picks "A" or "B" at random; else the higher
    score wins and equal scores tie. Draws from `rng` only where bias/noise are positive."""
    if position_bias > 0 and rng.random() < position_bias:
        return "A"
    if noise > 0 and rng.random() < noise:
        return "A" if rng.random() < 0.5 else "B"
    sa = score(persona, question, text_a)
    sb = score(persona, question, text_b)
    if sa > sb:
        return "A"
    if sb > sa:
        return "B"
    return "tie"


def refinable_axes(persona: Persona, question: Question, text_a: str, text_b: str) -> list[str]:
    """Relevant axes the persona leaves open on which the two texts read differently."""
    ra, rb = reading(text_a), reading(text_b)
    return [
        a for a in question.relevant_axes if persona.value(a) is None and ra.get(a) != rb.get(a)
    ]


def refine(
    persona: Persona, question: Question, text_a: str, text_b: str, rng: random.Random
) -> tuple[Persona, str] | None:
    """Iterative persona refinement for a pair the persona does not decide: pick a side at
    random, take the value it shows on an open axis where the texts differ, and append that
    preference to the persona. Returns (refined persona, "A" or "B"), or None when no open
    axis separates the texts (the pair carries no preference and should be dropped).
    """
    axes = refinable_axes(persona, question, text_a, text_b)
    if not axes:
        return None
    side = "A" if rng.random() < 0.5 else "B"
    shown = read(text_a if side == "A" else text_b)
    # The chosen side must reveal a value; where it shows nothing on an axis, use the other.
    candidates = [a for a in axes if a in shown]
    if not candidates:
        side = "B" if side == "A" else "A"
        shown = read(text_a if side == "A" else text_b)
        candidates = [a for a in axes if a in shown]
    axis = rng.choice(candidates)
    return persona.extend(axis, shown[axis]), side
