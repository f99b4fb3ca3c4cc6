"""Questions of the three domains (mirroring the paper's Roleplay, ELIX and Reviews).

A question is a template filled with a topic plus a few relevant axes: the axes on which a
response to it can differ and a user can care. ELIX questions always have `expertise`
relevant; Reviews always have `sentiment` and `length`. Which (template, topic) pairs a
world uses, their order, the other relevant axes and each question's default view (its
"mode", what a low-temperature model would say) all depend on the world seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from fspo_ray.world.axes import AXES

DOMAINS: tuple[str, ...] = ("roleplay", "elix", "reviews")

# Axes every question of the domain has relevant, and the pool its other relevant axes come
# from; `n_extra` is the (min, max) number drawn from the pool (2-3 relevant axes in all).
REQUIRED_AXES: dict[str, tuple[str, ...]] = {
    "roleplay": (),
    "elix": ("expertise",),
    "reviews": ("sentiment", "length"),
}
AXIS_POOL: dict[str, tuple[str, ...]] = {
    "roleplay": (
        "length",
        "tone",
        "format",
        "medium",
        "budget",
        "diet",
        "pace",
        "locale",
        "humor",
        "social",
    ),
    "elix": ("length", "tone", "format", "medium", "humor", "pace"),
    "reviews": ("tone", "humor", "budget", "diet", "locale", "social"),
}
N_EXTRA: dict[str, tuple[int, int]] = {"roleplay": (2, 3), "elix": (1, 2), "reviews": (0, 1)}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "roleplay": (
        "How should I spend {t}?",
        "What is a good plan for {t}?",
        "Any advice for {t}?",
        "What would you suggest for {t}?",
        "How can I make the most of {t}?",
        "I need ideas for {t}. What do you think?",
        "What is the best way to prepare for {t}?",
        "Can you help me plan {t}?",
    ),
    "elix": (
        "Can you explain {t}?",
        "Give me an overview of {t}.",
        "What makes {t} important?",
        "Explain {t} to me.",
        "Teach me about {t}.",
        "What should I know about {t}?",
        "Help me understand {t}.",
        "What is the idea behind {t}?",
    ),
    "reviews": (
        "Write a review of {t}.",
        "What did you think of {t}?",
        "Share your review of {t}.",
        "How would you rate {t}?",
        "Give me your honest review of {t}.",
        "Was {t} any good?",
        "Tell me about your experience with {t}.",
        "Would you recommend {t}?",
    ),
}

TOPICS: dict[str, tuple[str, ...]] = {
    "roleplay": (
        "a free weekend",
        "my birthday",
        "a rainy afternoon",
        "a first date",
        "a family reunion",
        "a week off work",
        "a summer holiday",
        "a new hobby",
        "learning to cook",
        "getting in shape",
        "a long train ride",
        "a quiet evening",
        "a holiday party",
        "a camping trip",
        "a job interview",
        "a visit from my parents",
        "a day at the beach",
        "a study break",
        "a road trip",
        "a garden project",
        "a picnic",
        "a board game night",
        "a photography outing",
        "a museum visit",
        "a music festival",
        "a ski trip",
        "our anniversary",
        "a new apartment",
        "a long weekend",
        "a cooking night",
        "a lazy sunday",
        "a volunteering day",
        "a bike tour",
        "a language exchange",
        "a hiking day",
        "a craft project",
        "a spa day",
        "a baking weekend",
        "a retirement party",
        "a winter break",
    ),
    "elix": (
        "photosynthesis",
        "gravity",
        "the water cycle",
        "volcanoes",
        "electricity",
        "the immune system",
        "black holes",
        "rainbows",
        "magnets",
        "the tides",
        "the internet",
        "vaccines",
        "earthquakes",
        "plate tectonics",
        "the phases of the moon",
        "inflation",
        "compound interest",
        "evolution",
        "genetics",
        "climate change",
        "recycling",
        "solar power",
        "flight",
        "sound waves",
        "the seasons",
        "the heart",
        "sleep",
        "memory",
        "bacteria",
        "clouds",
        "batteries",
        "computers",
        "encryption",
        "the stock market",
        "taxes",
        "democracy",
        "gears",
        "bridges",
        "coral reefs",
        "the brain",
    ),
    "reviews": (
        "the new phone",
        "a pair of running shoes",
        "the local bakery",
        "a mystery novel",
        "the latest superhero movie",
        "a noise cancelling headset",
        "a coffee maker",
        "the corner cafe",
        "a budget hotel",
        "a cooking class",
        "a yoga studio",
        "a card game",
        "the concert last night",
        "a rental car",
        "an electric scooter",
        "a backpack",
        "a smart watch",
        "a desk lamp",
        "a pizza place",
        "a streaming service",
        "a theme park",
        "a language app",
        "a blender",
        "a camping tent",
        "a hair salon",
        "a sushi bar",
        "a museum tour",
        "a puzzle game",
        "a winter jacket",
        "a vacuum cleaner",
        "a podcast",
        "a comedy show",
        "a bike shop",
        "a gym membership",
        "a travel pillow",
        "an airline flight",
        "a farmers market",
        "a paint set",
        "a coffee subscription",
        "a wooden toy train",
    ),
}


def max_questions(domain: str) -> int:
    """How many distinct questions a domain can hold (templates x topics)."""
    return len(TEMPLATES[domain]) * len(TOPICS[domain])


@dataclass(frozen=True)
class Question:
    """One question; `relevant_axes` are in axis order, `mode` is its default view."""

    question_id: str
    domain: str
    text: str
    topic: str
    relevant_axes: tuple[str, ...]
    mode: tuple[tuple[str, str], ...]


def make_question_id(domain: str, seed: int, index: int) -> str:
    return f"{domain}-{seed}-{index:06d}"


def parse_question_id(qid: str) -> tuple[str, int, int]:
    """Split a question id: "elix-7-000012" -> ("elix", 7, 12)."""
    try:
        domain, seed, index = qid.rsplit("-", 2)
        return domain, int(seed), int(index)
    except ValueError:
        raise ValueError(f"bad question id {qid!r}; expected '<domain>-<seed>-<index>'") from None


@lru_cache(maxsize=64)
def _combos(domain: str, seed: int) -> tuple[tuple[int, int], ...]:
    # The seed's order over (template, topic) pairs: question i uses combos[i].
    combos = [(a, b) for a in range(len(TEMPLATES[domain])) for b in range(len(TOPICS[domain]))]
    random.Random(f"combos-{seed}-{domain}").shuffle(combos)
    return tuple(combos)


@lru_cache(maxsize=1 << 16)
def build_question(domain: str, seed: int, index: int) -> Question:
    """Question `index` of `domain` in world `seed`; cheap and cached."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    combos = _combos(domain, seed)
    if not 0 <= index < len(combos):
        raise ValueError(f"question index {index} out of range for {domain!r} (< {len(combos)})")
    template, topic_i = combos[index]
    topic = TOPICS[domain][topic_i]
    rng = random.Random(f"question-{seed}-{domain}-{index}")
    lo, hi = N_EXTRA[domain]
    extra = rng.sample(AXIS_POOL[domain], rng.randint(lo, hi))
    relevant = set(REQUIRED_AXES[domain]) | set(extra)
    relevant_axes = tuple(a for a in AXES if a in relevant)
    mode = tuple((a, rng.choice(AXES[a])) for a in relevant_axes)
    return Question(
        question_id=make_question_id(domain, seed, index),
        domain=domain,
        text=TEMPLATES[domain][template].format(t=topic),
        topic=topic,
        relevant_axes=relevant_axes,
        mode=mode,
    )
