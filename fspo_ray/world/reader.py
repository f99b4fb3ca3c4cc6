"""Read any text back into axis values: the world's ground truth for judging.

Both renderings read the same (fspo_ray.world.rendering): compact "axis: value" items count
as one fragment each. One compiled regex finds every fragment in the lower-cased text, words separated by any
run of non-alphanumerics, so case and punctuation do not matter ("Step-by-step!" reads as
"step by step"). The alternation is grouped by first word (a trie of depth one), which keeps
a 30-word response at about ten microseconds; results are cached per text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from fspo_ray.world.axes import AXES, DESCRIPTION_SENTENCES, FRAGMENTS

_WORD = re.compile(r"[a-z0-9]+")
_SEP = r"[^a-z0-9]+"


def normalize(text: str) -> list[str]:
    """Lower-case words with punctuation removed: "Step-by-step!" -> ["step", "by", "step"]."""
    return _WORD.findall(text.lower())


def _build() -> tuple[dict[str, tuple[str, str]], re.Pattern[str]]:
    canon: dict[str, tuple[str, str]] = {}  # "step by step" -> ("format", "steps")
    for key, fragments in FRAGMENTS.items():
        for fragment in fragments:
            words = " ".join(normalize(fragment))
            if canon.setdefault(words, key) != key:
                raise ValueError(f"fragment {fragment!r} used by {canon[words]} and {key}")
    by_first: dict[str, list[list[str]]] = {}
    for words in canon:
        first, *rest = words.split()
        by_first.setdefault(first, []).append(rest)
    branches = []
    for first, rests in by_first.items():
        rests.sort(key=len, reverse=True)  # longest fragment first
        tails = "|".join(_SEP + _SEP.join(map(re.escape, r)) if r else "" for r in rests)
        branches.append(f"{re.escape(first)}(?:{tails})")
    pattern = re.compile(r"(?<![a-z0-9])(?:" + "|".join(branches) + r")(?![a-z0-9])")
    return canon, pattern


_CANON, _PATTERN = _build()

# The compact rendering (fspo_ray.world.rendering): "length: concise, tone: formal"; the colon
# is optional, because a word-level tokenizer drops it and a model's decoded output lacks it.
_COMPACT = re.compile(
    r"(?<![a-z0-9-])("
    + "|".join(sorted(AXES, key=len, reverse=True))
    + r")\s*:?\s+("
    + "|".join(re.escape(v) for v in sorted({v for vs in AXES.values() for v in vs}, key=len, reverse=True))
    + r")(?![a-z0-9-])"
)


def read_compact(text: str) -> dict[str, str]:
    """{axis: value} of the compact rendering's "axis: value" items (a value must belong to
    its axis; the last item of an axis wins). Text-rendered sentences read as {}."""
    out: dict[str, str] = {}
    for axis, value in _COMPACT.findall(text.lower()):
        if value in AXES[axis]:
            out[axis] = value
    return out


@lru_cache(maxsize=1 << 16)
def _scan(text: str) -> tuple[dict[tuple[str, str], int], dict[str, str]]:
    # (fragment counts per (axis, value), reading {axis: value}); cached, never mutated.
    counts: dict[tuple[str, str], int] = {}
    lower = text.lower()
    for match in _PATTERN.findall(lower):
        key = _CANON.get(match) or _CANON[" ".join(_WORD.findall(match))]
        counts[key] = counts.get(key, 0) + 1
    for axis, value in _COMPACT.findall(lower):  # the compact rendering's "axis: value" items
        if value in AXES[axis]:
            counts[(axis, value)] = counts.get((axis, value), 0) + 1
    best: dict[str, tuple[int, str | None]] = {}
    for (axis, value), count in counts.items():
        top = best.get(axis)
        if top is None or count > top[0]:
            best[axis] = (count, value)
        elif count == top[0]:
            best[axis] = (count, None)  # a tie between two values: ambiguous
    reading = {axis: value for axis, (_, value) in best.items() if value is not None}
    return counts, reading


def read_evidence(text: str) -> dict[str, dict[str, int]]:
    """Fragment counts per axis and value: {"tone": {"formal": 2, "casual": 1}, ...}."""
    out: dict[str, dict[str, int]] = {}
    for (axis, value), count in _scan(text)[0].items():
        out.setdefault(axis, {})[value] = count
    return out


def read(text: str) -> dict[str, str]:
    """{axis: value} for every axis the text reveals; the value with most fragments wins,
    and an axis whose top values tie is left out (see `read_evidence` for the counts)."""
    return dict(_scan(text)[1])


def reading(text: str) -> dict[str, str]:
    """Like `read` but returns the cached dict itself: for hot loops that do not mutate it."""
    return _scan(text)[1]


def _keyword_pattern() -> re.Pattern[str]:
    words = sorted({value for values in AXES.values() for value in values}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")


_KEYWORDS = _keyword_pattern()
_VALUE_AXIS = {value: axis for axis, values in AXES.items() for value in values}
assert len(_VALUE_AXIS) == sum(len(v) for v in AXES.values()), "axis values must be unique"
assert all(key[1] in s.lower() for key, ss in DESCRIPTION_SENTENCES.items() for s in ss)


def read_description(text: str) -> dict[str, str]:
    """{axis: value} named in a user description (by value keyword; the last mention wins,
    so a refinement sentence appended later overrides nothing it should not)."""
    out: dict[str, str] = {}
    for match in _KEYWORDS.finditer(text.lower()):
        value = match.group(1)
        out[_VALUE_AXIS[value]] = value
    return out


def profile_similarity(a: dict[str, str], b: dict[str, str]) -> float:
    """Jaccard overlap of two {axis: value} profiles, in [0, 1]; 1.0 when both are empty."""
    sa, sb = set(a.items()), set(b.items())
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)
