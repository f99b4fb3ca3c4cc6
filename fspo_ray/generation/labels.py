"""Judge labels: the two orders of a pair combined into one label, and single-order votes for
label entropy. The same rules for the world's judge and a language model's."""

from __future__ import annotations


def combine_orders(first: str, second: str) -> str:
    """Labels of (a, b) and (b, a) -> 'A' or 'B' (a or b preferred in both orders), 'tie'
    (both ties), else 'inconsistent' (the label moved with the position: dropped)."""
    if first == "A" and second == "B":
        return "A"
    if first == "B" and second == "A":
        return "B"
    if first == "tie" and second == "tie":
        return "tie"
    return "inconsistent"


def vote_for_label(got: str, order: int, label: str) -> float:
    """1 if a single-order label `got` prefers the labelled side, 0 if the other, 0.5 tie."""
    if got == "tie":
        return 0.5
    # In order 0 'A' names text_a; in order 1 'A' names text_b.
    side = got if order == 0 else ("B" if got == "A" else "A")
    return 1.0 if side == label else 0.0
