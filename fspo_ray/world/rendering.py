"""Two renderings of the same world: rich text (phrases, for LLMs) and compact (axis-then-value).

The text rendering is what the LLM providers and the real-model path see: a question is a
sentence, a response a few sentences whose phrase fragments reveal its view, a user
description a paragraph. The compact rendering writes the same objects as a few words each,
so a tiny model trained from scratch on two CPU cores can learn FSPO's in-context skill in
minutes (docs/training.md, "Learning on the world"):

    question     roleplay: length tone format
    response     length: concise, tone: formal, format: bullets
    description  length: concise, tone: formal, diet: vegetarian

Every response value follows its axis, so each of the model's decisions is local to one axis
and can be read off the values that axis took in the user's shots. The judge, the reader and
the reference predictors read both renderings (`reader.read`), so labels and scores are the
same whichever one a run uses. Pure Python, no Ray/torch.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from fspo_ray.world.axes import AXES
from fspo_ray.world.questions import DOMAINS, Question

RENDERINGS: tuple[str, ...] = ("text", "compact")

# Every word a compact row can hold, for a word-level tokenizer (one token per word).
COMPACT_WORDS: tuple[str, ...] = (
    *DOMAINS,
    *AXES,
    *(value for values in AXES.values() for value in values),
)
# What a word-level tokenizer drops between words: the compact rendering's punctuation.
COMPACT_PUNCTUATION = ":,"

_QUESTION = re.compile(r"^\s*(" + "|".join(DOMAINS) + r")\s*:?((?:\s+[a-z-]+)+)\s*$")


def check_rendering(rendering: str) -> str:
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r}; expected one of {RENDERINGS}")
    return rendering


def compact_values(values: Iterable[tuple[str, str]]) -> str:
    """`[("length", "concise"), ("tone", "formal")]` -> "length: concise, tone: formal"."""
    return ", ".join(f"{axis}: {value}" for axis, value in values)


def compact_question(question: Question) -> str:
    """The question as its domain and relevant axes: "roleplay: length tone format"."""
    return f"{question.domain}: {' '.join(question.relevant_axes)}"


def compact_response(question: Question, view: dict[str, str]) -> str:
    """The view's values on the question's relevant axes, axis then value, in axis order."""
    return compact_values((a, view[a]) for a in question.relevant_axes if a in view)


def compact_description(values: Iterable[tuple[str, str]]) -> str:
    """A persona's determined values, axis then value (the persona's `values` order)."""
    return compact_values(values)


def parse_compact_question(text: str) -> tuple[str, tuple[str, ...]] | None:
    """ "roleplay: length tone" -> ("roleplay", ("length", "tone")); None if not compact."""
    m = _QUESTION.match(text.lower())
    if m is None:
        return None
    axes = tuple(m.group(2).split())
    if not axes or any(a not in AXES for a in axes):
        return None
    return m.group(1), axes


def display_text(question: Question, answer: str, seed: int = 0, generator: str | None = None) -> str:
    """The world's text rendering (sentences) of an answer given in either rendering.

    A text answer is returned as it is. A compact one is read back into its view and written
    by a world generator, so a person reads sentences, not tokens; values the answer does not
    state are simply absent from the sentences.
    """
    from fspo_ray.world.reader import read_compact
    from fspo_ray.world.responses import DEFAULT_GENERATOR, respond

    view = read_compact(answer)
    if not view:
        return answer
    return respond(question, view, generator or DEFAULT_GENERATOR, random.Random(seed))


def display_description(text: str, seed: int = 0) -> str:
    """A user description in either rendering, as sentences: a compact one ("length: concise,
    tone: formal") is read back into its values and written with the world's description
    sentences, one per value, as a persona's own description is; text is returned as it is."""
    from fspo_ray.world.persona import make_persona
    from fspo_ray.world.reader import read_compact

    view = read_compact(text)
    if not view:
        return text
    return make_persona("", "", "", view, random.Random(seed)).description
