"""The issue's claims about the world, measured: does each hold, and by how much.

- FSPO beats few-shot prompting and Pref-FT on held-out users;
- FSPO+RAT beats FSPO;
- the oracle (true description) is the ceiling;
- win rates rise with the number of shots.

Two methods are compared on the same pairs (same users, questions and baseline answers), so
the comparison is paired: d_i = score_i(A) - score_i(B) per pair, reported as the mean
difference with a 95% normal-approximation interval, mean +- 1.96 sd / sqrt(n). A claim
"holds" when the mean difference is > 0 and is "significant" when the interval excludes 0.
Pure Python.
"""

from __future__ import annotations

import math
import statistics

from fspo_ray.evaluation.plan import Cell
from fspo_ray.evaluation.stats import Z95


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of a_i - b_i with a 95% normal-approximation interval (sd 0 for n = 1)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need equal, non-zero lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    half = Z95 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(d)}


def _claim(name: str, a: str, b: str, cell_a: Cell, cell_b: Cell, scores: dict[Cell, list[float]]) -> dict:
    missing = [c.method for c in (cell_a, cell_b) if c not in scores]
    if missing:
        return {"claim": name, "holds": None, "why": f"not measured: {', '.join(sorted(set(missing)))} not evaluated"}
    diff = paired_difference(scores[cell_a], scores[cell_b])
    return {"claim": name, "holds": diff["mean"] > 0, "significant": diff["ci95"][0] > 0,
            "difference": diff, "a": a, "b": b,
            "win_rate_a": statistics.fmean(scores[cell_a]), "win_rate_b": statistics.fmean(scores[cell_b])}


def evaluate_goals(scores: dict[Cell, list[float]], *, split: str, num_shots: int, shots: list[int],
                   sweep_split: str, methods: list[str]) -> list[dict]:
    """Each claim with its measurement; scores[cell] are the cell's pair scores in a fixed order."""
    at = lambda m: Cell(m, split, num_shots)  # noqa: E731
    split_words = split.replace("_", "-")
    out = [
        _claim(f"fspo beats few_shot on {split_words} users", "fspo", "few_shot", at("fspo"), at("few_shot"), scores),
        _claim(f"fspo beats pref_ft on {split_words} users", "fspo", "pref_ft", at("fspo"), at("pref_ft"), scores),
        _claim(f"fspo_rat beats fspo on {split_words} users", "fspo_rat", "fspo", at("fspo_rat"), at("fspo"), scores),
    ]
    others = [m for m in methods if m != "oracle" and at(m) in scores]
    if at("oracle") in scores and others:
        vs = {m: _claim(f"oracle >= {m}", "oracle", m, at("oracle"), at(m), scores) for m in others}
        best = max(others, key=lambda m: statistics.fmean(scores[at(m)]))
        margin = statistics.fmean(scores[at("oracle")]) - statistics.fmean(scores[at(best)])
        out.append({"claim": f"oracle is the ceiling on {split_words} users", "holds": margin >= 0,
                    "best_other": best, "margin": margin,
                    "significant": all(c["difference"]["ci95"][0] > 0 for c in vs.values())})
    else:
        out.append({"claim": f"oracle is the ceiling on {split_words} users", "holds": None,
                    "why": "not measured: oracle not evaluated"})
    if len(shots) >= 2:
        lo, hi = min(shots), max(shots)
        for m in ("fspo", "fspo_rat"):
            series = {n: statistics.fmean(scores[Cell(m, sweep_split, n)]) for n in sorted(shots)
                      if Cell(m, sweep_split, n) in scores}
            name = f"{m} win rate rises with the number of shots ({sweep_split.replace('_', '-')} users)"
            if len(series) < 2:
                out.append({"claim": name, "holds": None, "why": f"not measured: {m} not evaluated"})
                continue
            c = _claim(name, f"{m}@{hi}", f"{m}@{lo}", Cell(m, sweep_split, hi), Cell(m, sweep_split, lo), scores)
            values = list(series.values())
            c.update(by_shots={str(n): v for n, v in series.items()},
                     monotone=all(x <= y for x, y in zip(values, values[1:], strict=False)))
            out.append(c)
    return out


def goals_markdown(goals: list[dict]) -> list[str]:
    lines = ["", "## The claims, measured", "",
             "Paired over the same users and questions: the difference of the two methods' win rates, with a "
             "95% normal-approximation interval.", "",
             "| Claim | Holds | Measured | Difference (pp) [95% CI] |", "|---|---|---|---|"]
    for g in goals:
        if g["holds"] is None:
            lines.append(f"| {g['claim']} | n/a | {g['why']} | |")
            continue
        verdict = ("yes" if g["holds"] else "**no**") + (" (significant)" if g.get("significant") else "")
        if "difference" in g:
            d = g["difference"]
            measured = f"{100 * g['win_rate_a']:.1f} vs {100 * g['win_rate_b']:.1f}"
            if "by_shots" in g:
                measured = " -> ".join(f"N={n}: {100 * v:.1f}" for n, v in g["by_shots"].items())
                measured += "" if g["monotone"] else " (not monotone)"
            diff = f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
        else:
            measured = f"oracle - best other ({g['best_other']}): {100 * g['margin']:+.1f} pp"
            diff = ""
        lines.append(f"| {g['claim']} | {verdict} | {measured} | {diff} |")
    return lines


def compare_markdown(reports: dict[str, dict]) -> str:
    """The claims of several runs (e.g. two world seeds) side by side: holds, and the difference."""
    names = list(reports)
    claims: list[str] = []
    for r in reports.values():
        claims += [g["claim"] for g in r.get("goals") or [] if g["claim"] not in claims]
    lines = ["| Claim | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for claim in claims:
        row = []
        for name in names:
            g = next((g for g in reports[name].get("goals") or [] if g["claim"] == claim), None)
            if g is None or g["holds"] is None:
                row.append("n/a")
            elif "difference" in g:
                row.append(f"{'yes' if g['holds'] else 'NO'} ({100 * g['difference']['mean']:+.1f} pp)")
            else:
                row.append(f"{'yes' if g['holds'] else 'NO'} ({100 * g['margin']:+.1f} pp)")
        lines.append(f"| {claim} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
