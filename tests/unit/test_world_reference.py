"""Reference predictors: the shots carry the user's preference, the population does not."""

from __future__ import annotations

import pytest

from fspo_ray.episodes import Preference, build_episodes
from fspo_ray.world import World
from fspo_ray.world.reference import (
    evidence,
    fragments,
    population_prior_accuracy,
    shot_reader_accuracy,
)


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


def test_cli_prints_a_table_per_split(tmp_path, capsys):
    from fspo_ray.config import build_config
    from fspo_ray.world.reference import main
    from tests.world_fixtures import write_world_prefs

    cfg = build_config({"output_dir": str(tmp_path), "world": {"users_train": 6, "users_held_out": 3,
                                                               "users_interpolated": 3, "prefs_per_user": 8}})
    prefs = write_world_prefs(cfg)
    main([str(prefs), "--shots", "2", "4"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "split" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["train", "held_out", "interpolated"]
    assert all(0.0 <= float(x) <= 1.0 for r in rows for x in r.strip("| ").split(" | ")[1:])
