"""The LLM judge's wording and its reply parser: one prompt for the data labels (generation) and
for evaluation's LLM judge, so a label means the same thing in both.

The judge sees a user description, a question and two responses, and answers A, B or tie;
`parse_label` reads that tolerantly and returns a `Drop` with its reason for anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Messages = list[dict[str, str]]

SYSTEM = "You are a careful assistant that follows the requested output format exactly."


def chat(user: str) -> Messages:
    """One user turn under the shared system message."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


JUDGE_INSTRUCTIONS = (
    "Decide which response this user would prefer, judging only by the user's description. "
    "Ignore the length of the responses: a response is not better for being longer or shorter, "
    "unless the description asks for it. Ignore the order in which the responses are shown. "
    "If the description does not decide between them, answer tie."
)


def judge_prompt(description: str, question: str, response_a: str, response_b: str) -> Messages:
    """Pairwise AI feedback conditioned on the user description, asked in both orders (generation's
    stage 6 and evaluation's LLM judge)."""
    return chat(
        f"User description: {description}\n\n"
        f"Question: {question}\n\n"
        f"Response A:\n{response_a}\n\n"
        f"Response B:\n{response_b}\n\n"
        f"{JUDGE_INSTRUCTIONS}\n"
        "Reply with exactly one word: A, B or tie."
    )


@dataclass(frozen=True)
class Drop:
    """A row dropped for a named reason (counted in the shard manifest and the report)."""

    reason: str


_FIRST_WORD = re.compile(r"^\W*(a|b|tie)\b", re.IGNORECASE)
_NAMED = re.compile(r"\b(?:response|answer|option)\s+(a|b)\b|\b(tie)\b", re.IGNORECASE)


def parse_label(text: str | None) -> str | Drop:
    """'A', 'B' or 'tie' from the judge's reply: a first word A/B/tie ('B.' -> 'B'), else the
    first 'Response A/B' or 'tie' in it; anything else is a drop."""
    if not text:
        return Drop("unparseable_label")
    head = text.strip()[:200]
    m = _FIRST_WORD.match(head)
    word = m.group(1) if m else None
    if word is None:
        m = _NAMED.search(head)
        word = (m.group(1) or m.group(2)) if m else None
    if word is None:
        return Drop("unparseable_label")
    word = word.lower()
    return "tie" if word == "tie" else word.upper()
