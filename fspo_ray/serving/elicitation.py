"""Which pair to ask a new user next: in a random order, or the pair expected to tell the most.

`active` keeps a belief over who the user might be and asks the pair whose answer is most
informative about it (BALD, Houlsby et al. 2011, arXiv 1112.5745: the mutual information
between the answer and the user):

- A hypothesis is a persona in the world's sense: on each aspect (axis) a preferred value, or
  no preference. Particles are drawn from a prior where each aspect is open with probability
  OPEN_PRIOR, else uniform over the values the pool shows for it.
- A hypothesis answers a pair like the world's judge: each answer scores +1 per aspect where it
  shows the preferred value and -1 where it shows another; the higher score is chosen with
  probability 1 - NOISE, a tie is a coin flip.
- Answers so far weight the particles (Bayes); skipped pairs carry no answer.
- Next pair: argmax over unasked pairs of  H(E_h[p_h]) - E_h[H(p_h)],  p_h = P(answer A | h).
  A pair both answers of which look alike to every plausible user scores ~0 (nothing to learn),
  and so does a pair on an aspect the answers have already settled; a pair on a fresh aspect,
  where plausible users disagree and each is confident, scores highest.

It needs each answer's features (aspect -> value): world pools have them (the answer's view);
JSONL pools may give them (`features_a`/`features_b`). Pure numpy; no model call.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import numpy as np

from fspo_ray.serving.pool import PairPool

STRATEGIES = ("random", "active")
OPEN_PRIOR = 0.5  # world personas set 4-6 of 12 axes: about half open
NOISE = 0.1  # a person (and the world's judge, with its bias and noise) sometimes picks against type


def _user_rng(user_key: str, seed: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{user_key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


class Elicitor:
    """`next_pair(user_key, answered, excluded) -> pair index | None` under one strategy."""

    def __init__(self, pool: PairPool, strategy: str, *, particles: int = 2048, seed: int = 0):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown elicitation strategy {strategy!r}; expected one of {STRATEGIES}")
        if strategy == "active" and not pool.has_features:
            raise ValueError("strategy 'active' needs every pair's features (aspect -> value): the world pool has "
                             "them; a JSONL pool needs features_a and features_b on every row")
        self.pool, self.strategy, self.seed = pool, strategy, seed
        if strategy == "active":
            self._p_a = self._answer_probabilities(particles)  # (P, M): P(answer A | particle m)

    def _answer_probabilities(self, m: int) -> np.ndarray:
        values: dict[str, list[str]] = {}
        for p in self.pool.pairs:
            for f in p.features:
                for aspect, value in f.items():
                    if value not in values.setdefault(aspect, []):
                        values[aspect].append(value)
        aspects = sorted(values)
        rng = np.random.default_rng(self.seed)
        # (M, aspects): index of the preferred value, -1 = no preference on that aspect
        hyp = np.stack([np.where(rng.random(m) < OPEN_PRIOR, -1, rng.integers(0, len(values[a]), m))
                        for a in aspects], axis=1)
        col = {a: i for i, a in enumerate(aspects)}

        def score(features) -> np.ndarray:  # (M,) the judge's score of one answer per particle
            s = np.zeros(m)
            for aspect, value in features.items():
                want = hyp[:, col[aspect]]
                s += np.where(want < 0, 0, np.where(want == values[aspect].index(value), 1, -1))
            return s

        margin = np.stack([score(p.features[0]) - score(p.features[1]) for p in self.pool.pairs])  # (P, M)
        return np.where(margin > 0, 1 - NOISE, np.where(margin < 0, NOISE, 0.5))

    def information(self, answered: Sequence[tuple[int, int]]) -> np.ndarray:
        """(P,) expected information (nats) of each pair's answer, given the answers so far."""
        log_w = np.zeros(self._p_a.shape[1])
        for i, side in answered:
            log_w += np.log(self._p_a[i] if side == 0 else 1 - self._p_a[i])
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        return _entropy(self._p_a @ w) - _entropy(self._p_a) @ w

    def next_pair(self, user_key: str, answered: Sequence[tuple[int, int]], excluded: set[int]) -> int | None:
        """The next pair to ask: never one answered or in `excluded` (skipped); None when none is left."""
        asked = excluded | {i for i, _ in answered}
        order = list(range(len(self.pool)))
        _user_rng(user_key, self.seed).shuffle(order)  # each user their own order; ties broken by it
        left = [i for i in order if i not in asked]
        if not left:
            return None
        if self.strategy == "random":
            return left[0]
        gain = self.information(answered)
        return max(left, key=lambda i: gain[i])  # first in the user's order among equals
