"""What the model reads and what a person reads, for a page backed by the simulated world.

The tiny world model may work on the world's compact rendering ("roleplay: length tone format",
"length: concise, tone: formal"); a person should read sentences. This is the one place the page
converts, and it only calls the world's own functions (fspo_ray.world.rendering). On a world
without the compact rendering, text passes through unchanged.
"""

from __future__ import annotations

from fspo_ray.world import Question

try:  # the world's compact rendering; absent on an older world, where text is the only rendering
    from fspo_ray.world.rendering import (
        compact_question,
        compact_response,
        display_description,
        display_text,
    )
except ImportError:  # pragma: no cover - depends on the world version installed
    compact_question = compact_response = display_description = display_text = None

RENDERINGS = ("text", "compact")


def for_model(rendering: str, question: Question, view: dict[str, str] | None = None, text: str = "") -> str:
    """The question (no view) or an answer revealing `view` (its text rendering `text`), in the
    rendering the deployed models were trained on."""
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r}; expected one of {RENDERINGS}")
    if rendering == "text" or compact_question is None:
        return question.text if view is None else text
    return compact_question(question) if view is None else compact_response(question, view)


def for_person(question: Question | None, text: str, seed: int = 0) -> str:
    """Sentences for a person: an answer in either rendering through the world's display_text;
    without a known world question (free text) or without display_text, the text itself."""
    if question is None or display_text is None:
        return text
    return display_text(question, text, seed=seed)


def persona_for_person(text: str, seed: int = 0) -> str:
    """An inferred persona as sentences: a compact description ("length: concise, tone: formal")
    written with the world's description sentences; any other text as it is."""
    if display_description is None:
        return text
    return display_description(text, seed=seed)
