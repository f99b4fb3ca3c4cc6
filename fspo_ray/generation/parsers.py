"""Tolerant parsers for model output: each returns a value or a `Drop` with its reason.

A badly answered row is counted under its reason and dropped; no parser raises on any
input text, so one bad row never fails a batch or the job.
"""

from __future__ import annotations

import re

from fspo_ray.llm_judge import Drop, parse_label  # noqa: F401 - the judge's label parser is evaluation's too

_LIST_ITEM = re.compile(r"^\s*(?:\d+[.):]|[-*\u2022])\s*(.+?)\s*$")
_WORDS = re.compile(r"[A-Za-z0-9']+")


def parse_views(text: str | None, n: int) -> list[str] | Drop:
    """The first `n` distinct list items ('1. ...', '- ...') of at least two words each."""
    if not text or not text.strip():
        return Drop("empty_views")
    views: list[str] = []
    for line in text.splitlines():
        m = _LIST_ITEM.match(line)
        if not m:
            continue
        item = m.group(1).strip()
        if len(_WORDS.findall(item)) >= 2 and item.lower() not in {v.lower() for v in views}:
            views.append(item)
        if len(views) == n:
            return views
    return Drop("too_few_views")


_ROLE_MARKER = re.compile(r"\n\s*(?:user|assistant|system|question)\s*:", re.IGNORECASE)


def parse_response(text: str | None, min_words: int = 3) -> str | Drop:
    """The response text, cut at a hallucinated next turn; too short a text is a drop."""
    if text is None:
        return Drop("empty_response")
    text = _ROLE_MARKER.split(text, maxsplit=1)[0].strip()
    if len(_WORDS.findall(text)) < min_words:
        return Drop("empty_response")
    return text


_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def parse_refinement(text: str | None) -> str | Drop:
    """The first sentence of the reply, 4 to 60 words, ending with a period."""
    if not text or not text.strip():
        return Drop("unparseable_refinement")
    first = _SENTENCE_END.split(text.strip().splitlines()[0].strip(), maxsplit=1)[0].strip()
    n = len(_WORDS.findall(first))
    if not 4 <= n <= 60:
        return Drop("unparseable_refinement")
    return first if first.endswith((".", "!", "?")) else first + "."
