"""Win rates with a 95% interval and a one-sided binomial test against parity (0.5).

A comparison is one (method answer, baseline answer) pair, judged in both orders. Each
judgment is a vote for the method: 1 for a win, 1/2 for a tie, 0 for a loss; the pair's
score is the mean of its two votes (0, 1/4, 1/2, 3/4 or 1). The unit of every statistic is
the pair, not the judgment: the two orders of one pair are not independent draws.

- win rate: s / n, with s the summed pair scores over n pairs.
- 95% interval: Wilson score interval at p = s/n and n (it needs no integer count, so a
  fractional s from ties is fine; unlike the normal interval it stays inside [0, 1]).
- p-value: one-sided exact binomial P(X >= floor(s)), X ~ Bin(n, 1/2). Rounding s down
  makes the test conservative when ties leave s fractional.

Pure Python (math only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054  # standard normal quantile at 0.975


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes/n (successes may be fractional)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def binomial_p_value(successes: float, n: int) -> float:
    """One-sided P(X >= floor(successes)) for X ~ Bin(n, 1/2): evidence the rate exceeds 1/2.

    Exact: integer binomial coefficients summed, then one division (Python ints do not overflow).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    k = math.floor(successes)
    if not 0 <= k <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def vote(label: str, method_side: str) -> float:
    """A judge label ('A', 'B', 'tie') as a vote for the method shown on `method_side`."""
    if label == "tie":
        return 0.5
    if label not in ("A", "B"):
        raise ValueError(f"unknown judge label {label!r}; expected 'A', 'B' or 'tie'")
    return 1.0 if label == method_side else 0.0


@dataclass(frozen=True)
class WinRate:
    win_rate: float
    ci95: tuple[float, float]
    p_value: float
    n: int  # pairs (comparisons)
    judgments: int
    wins: int  # judgments won by the method
    ties: int
    losses: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def win_rate(votes: Sequence[Sequence[float]]) -> WinRate:
    """Votes per pair (one per judged order, each 0, 0.5 or 1) -> win rate, interval, p-value."""
    if not votes:
        raise ValueError("no comparisons to compute a win rate from")
    flat = [v for pair in votes for v in pair]
    if any(v not in (0.0, 0.5, 1.0) for v in flat):
        raise ValueError("votes must be 0, 0.5 or 1")
    n = len(votes)
    s = sum(sum(pair) / len(pair) for pair in votes)
    return WinRate(
        win_rate=s / n,
        ci95=wilson_interval(s, n),
        p_value=binomial_p_value(s, n),
        n=n,
        judgments=len(flat),
        wins=sum(v == 1.0 for v in flat),
        ties=sum(v == 0.5 for v in flat),
        losses=sum(v == 0.0 for v in flat),
    )


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> tuple[float, tuple[float, float]]:
    """Mean of a - b over paired scores (the same user and question, each method judged against
    the same baseline answer) and its 95% interval: normal approximation of the mean of the
    per-pair differences, whose spread already holds the pairing (the same hard questions)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        raise ValueError("a paired difference needs at least 2 pairs")
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean, (mean - half, mean + half)
