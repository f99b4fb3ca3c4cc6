"""Episode selection of a training stage (no Ray): every epoch resampled, max_episodes bounds it."""

from __future__ import annotations

from fspo_ray.config import build_config
from fspo_ray.episodes import Preference
from fspo_ray.training.prepare import UserData, stage_episodes


def _users(n_users: int = 6, n_pairs: int = 5) -> UserData:
    prefs = {f"train-0-{u:06d}": [Preference(f"q{u}-{i}", f"c{u}-{i}", f"r{u}-{i}") for i in range(n_pairs)]
             for u in range(n_users)}
    return UserData(prefs, {})


def _stage(**over):
    cfg = build_config({"episodes": {"num_shots": 2, "min_shots": 1},
                        "train": {"stages": [{"name": "s", "kind": "preference", **over}]}})
    return cfg, cfg.train.stages[0]


def test_all_pairs_held_out_once_per_epoch_and_resampled():
    cfg, st = _stage()
    users = _users()
    e0, e1 = stage_episodes(cfg, st, users, 0), stage_episodes(cfg, st, users, 1)
    assert len(e0) == len(e1) == 30
    assert sorted(e.held_out.question for e in e0) == sorted(e.held_out.question for e in e1)
    assert [e.held_out.question for e in e0] != [e.held_out.question for e in e1]  # new order and shots


def test_max_episodes_takes_a_different_subset_each_epoch():
    cfg, st = _stage(max_episodes=7)
    users = _users()
    e0, e1 = stage_episodes(cfg, st, users, 0), stage_episodes(cfg, st, users, 1)
    assert len(e0) == len(e1) == 7
    assert {e.held_out.question for e in e0} != {e.held_out.question for e in e1}
    assert stage_episodes(cfg, st, users, 0) == e0  # deterministic per (seed, epoch)
