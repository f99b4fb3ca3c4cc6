"""Where a generation run's users and questions come from, and how its users are cut into shards.

Users and questions are the simulated world's unless the LLM provider is given persona and
question files; `BaseProvider` holds both for the two providers (`providers.WorldProvider`,
`llm.LLMProvider`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from fspo_ray.splits import SPLITS
from fspo_ray.world import World, world_from_config


@dataclass(frozen=True)
class Shard:
    """Users start .. start+count-1 of one split: the unit of work, commit and resume."""

    shard_id: str
    split: str
    start: int
    count: int

    def as_row(self) -> dict:
        return {"shard_id": self.shard_id, "split": self.split, "start": self.start, "count": self.count, "key": ""}


def plan_shards(users_per_split: dict[str, int], users_per_shard: int) -> list[Shard]:
    """Shards in a fixed order: split by split, users in index order."""
    shards = []
    for split in SPLITS:
        n = users_per_split.get(split, 0)
        for start in range(0, n, users_per_shard):
            count = min(users_per_shard, n - start)
            shards.append(Shard(f"{split}-{start:07d}", split, start, count))
    return shards


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


class BaseProvider:
    """Personas and questions, shared by both providers (the world's unless files given)."""

    def __init__(self, cfg):  # cfg: fspo_ray.config.RunConfig
        self.cfg = cfg
        self.gen = cfg.generate
        self.seed = cfg.seed
        self.world: World = world_from_config(cfg.world)
        self.n_slots = math.ceil(cfg.world.prefs_per_user * self.gen.oversample)
        self.target = cfg.world.prefs_per_user
        self._file_users: dict[str, list[dict]] | None = None
        self._file_questions: dict[str, list[dict]] | None = None

    # --- stage 1: personas ---------------------------------------------------------------

    def users_per_split(self) -> dict[str, int]:
        file_users = self.file_users()
        if file_users is not None:
            return {s: len(file_users.get(s, [])) for s in SPLITS}
        w = self.cfg.world
        return {"train": w.users_train, "held_out": w.users_held_out, "interpolated": w.users_interpolated}

    def file_users(self) -> dict[str, list[dict]] | None:
        return None

    def personas(self, shard: dict) -> list[dict]:
        """User rows of a shard: user_id, split, domain, description, profile (or None)."""
        file_users = self.file_users()
        if file_users is not None:
            recs = file_users[shard["split"]][shard["start"] : shard["start"] + shard["count"]]
            return [dict(r) for r in recs]
        out = []
        for p in self.world.make_users(shard["split"], shard["count"], shard["start"]):
            out.append(
                {
                    "user_id": p.user_id,
                    "split": p.split,
                    "domain": p.domain,
                    "description": self.world.describe(p),
                    "profile": p.profile,
                }
            )
        return out

    # --- stage 2: questions --------------------------------------------------------------

    def file_questions(self) -> dict[str, list[dict]] | None:
        return None

    def draw_question(self, user: dict, rng) -> tuple[str, str]:
        """(question_id, text) for one slot of the user."""
        file_qs = self.file_questions()
        if file_qs is not None:
            q = rng.choice(file_qs[user["domain"]])
            return q["question_id"], q["question"]
        if user.get("profile") is not None:
            q = self.world.sample_question(self.world.user(user["user_id"]), rng)
        else:
            q = rng.choice(self.world.questions(user["domain"]))
        return q.question_id, self.world.question_text(q)

    def questions_of_domain(self, domain: str) -> list[tuple[str, str]]:
        file_qs = self.file_questions()
        if file_qs is not None:
            return [(q["question_id"], q["question"]) for q in file_qs.get(domain, [])]
        return [(q.question_id, self.world.question_text(q)) for q in self.world.questions(domain)]
