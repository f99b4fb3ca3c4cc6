"""RAT description quality: how close the written user descriptions are to the gold ones.

For each evaluated user, a describer writes a description from the user's N shots; the
report compares it with the user's gold (refined) description:

- similarity: cosine of the two descriptions' sentence embeddings (the `embedder:` section's
  model, fspo_ray/engines/embedder.py), mean over users;
- axes recovered (the world): of the gold profile's (axis, value) pairs, the share the
  world's description reader finds in the written description, pooled over users.

Measured for the stage-1 describer (SFT toward the gold description, "before") and the
stage-2 describer (preference-trained on embedding similarity, "after").
"""

from __future__ import annotations

import statistics


def axes_recovered(text: str, profile: dict[str, str]) -> tuple[int, int]:
    """(gold axes whose value the description names correctly, gold axes)."""
    from fspo_ray.world import read_description

    named = read_description(text)
    return sum(named.get(a) == v for a, v in profile.items()), len(profile)


def embed_similarities(pairs: list[tuple[str, str]], cfg) -> list[float]:
    """Cosine similarity of each (text, text) pair, embeddings from a Ray Data actor."""
    from fspo_ray.engines.embedder import embed_rows

    if not pairs:
        return []
    items = [{"group": f"{i}|{j}", "text": t or "-"} for i, pair in enumerate(pairs) for j, t in enumerate(pair)]
    vecs = {r["group"]: list(r["embedding"]) for r in embed_rows(items, cfg.embedder).iter_rows()}
    # The embedder normalises, so the dot product is the cosine.
    return [sum(a * b for a, b in zip(vecs[f"{i}|0"], vecs[f"{i}|1"], strict=True)) for i in range(len(pairs))]


def summarize(splits: list[str], rows: list[dict]) -> dict:
    """rows: {split, similarity (None: not measured), correct, total} per user -> means per
    split and over all."""
    out: dict = {"similarity": {}, "axes_recovered": {}, "users": {}}
    for split in [*splits, "all"]:
        part = [r for r in rows if split == "all" or r["split"] == split]
        if not part:
            continue
        sims = [r["similarity"] for r in part if r["similarity"] is not None]
        out["similarity"][split] = statistics.fmean(sims) if sims else None
        total = sum(r["total"] for r in part)
        out["axes_recovered"][split] = sum(r["correct"] for r in part) / total if total else None
        out["users"][split] = len(part)
    return out
