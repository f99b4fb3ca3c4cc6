"""Reference predictors: the shots carry the user's preference, the population does not."""

from __future__ import annotations

import pytest

from fspo_ray.episodes import Preference, build_episodes
from fspo_ray.world import World
from fspo_ray.world.reference import evidence, fragments, population_prior_accuracy, shot_reader_accuracy


def _users(world: World, split: str, n: int, pairs: int = 12) -> dict[str, list[Preference]]:
    return {
        uid: [Preference(r["question"], r["chosen"], r["rejected"]) for r in world.user_preferences(uid, pairs)]
        for uid in world.user_ids(split, n)
    }


def test_evidence_counts_chosen_minus_rejected():
    world = World()
    p = Preference(**{k: world.user_preferences(world.user_ids("train", 1)[0], 1)[0][k]
                      for k in ("question", "chosen", "rejected")})
    ev = evidence([p])
    for f in fragments(p.chosen) - fragments(p.rejected):
        assert ev[f] == 1
    for f in fragments(p.rejected) - fragments(p.chosen):
        assert ev[f] == -1


def test_shots_beat_the_population_prior_and_rise_with_n():
    world = World()
    train = _users(world, "train", 40)
    held = _users(world, "held_out", 20)
    acc = {}
    for n in (2, 8):
        episodes, _ = build_episodes(held, num_shots=n, min_shots=1, seed=0)
        acc[n] = shot_reader_accuracy(episodes)
    episodes, _ = build_episodes(held, num_shots=2, min_shots=1, seed=0)
    prior = population_prior_accuracy(train, episodes)
    # Noiseless labels: the shots reveal most of what decides a held-out pair; the population
    # average of many personas decides little of it.
    assert acc[8] > acc[2] > prior + 0.1, (acc, prior)
    assert acc[8] > 0.8


def test_empty_episodes_are_an_error():
    with pytest.raises(ValueError, match="no episodes"):
        shot_reader_accuracy([])
