"""Small world datasets and tiny models for tests (fast path: no Ray Data pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

from fspo_ray.config import RunConfig
from fspo_ray.data import write_preferences
from fspo_ray.world import world_from_config


def write_world_prefs(cfg: RunConfig, out_dir: Path | None = None) -> Path:
    """The world's preferences for cfg.world's users, in the data contract, under <output_dir>/prefs."""
    world = world_from_config(cfg.world)
    out = Path(out_dir or Path(cfg.output_dir) / "prefs")
    rows = []
    for split, n in (("train", cfg.world.users_train), ("held_out", cfg.world.users_held_out),
                     ("interpolated", cfg.world.users_interpolated)):
        for uid in world.user_ids(split, n):
            for r in world.user_preferences(uid, cfg.world.prefs_per_user, seed=cfg.seed):
                r = dict(r)
                for k in ("view_chosen", "view_rejected", "user_profile"):
                    r[k] = json.dumps(r[k], sort_keys=True)
                r["source"] = "world"
                rows.append(r)
    report = write_preferences(rows, out)
    assert report.num_rejected == 0, report.summary()
    return out
