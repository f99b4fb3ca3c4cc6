"""The issue's claims about the world, measured: does each hold, and by how much.

- FSPO beats few-shot prompting, Pref-FT and IPO without context on held-out users, by at least
  TARGET_POINTS win-rate points with the 95% interval of the difference above 0;
- FSPO+RAT beats FSPO;
- the oracle (true description) is the ceiling;
- win rates rise with the number of shots.

Two methods are compared on the same pairs (same users, questions and baseline answers), so
the comparison is paired: d_i = score_i(A) - score_i(B) per pair (the comparisons both methods
have, keyed by user and question), reported as the mean difference with a 95% normal-approximation
interval, mean +- 1.96 sd / sqrt(n) (stats.paired_difference). A claim "holds" when the mean
difference is > 0 and is "significant" when the interval excludes 0. Pure Python.
"""

from __future__ import annotations

import statistics

from fspo_ray.evaluation.plan import Cell
from fspo_ray.evaluation.stats import paired_difference

TARGET_POINTS = 0.08  # the margin FSPO must have over each baseline (docs/evaluation.md)


def paired(a: dict, b: dict) -> dict:
    """Mean of a_k - b_k over the comparison keys both have, with its 95% interval (0 wide for n = 1)."""
    keys = [k for k in a if k in b]
    if not keys:
        raise ValueError("no comparison in common")
    if len(keys) == 1:
        d = a[keys[0]] - b[keys[0]]
        return {"mean": d, "ci95": [d, d], "n": 1}
    mean, ci = paired_difference([a[k] for k in keys], [b[k] for k in keys])
    return {"mean": mean, "ci95": list(ci), "n": len(keys)}


def _claim(name: str, a: str, b: str, cell_a: Cell, cell_b: Cell, scores: dict[Cell, dict],
           target: float | None = None) -> dict:
    missing = [c.method for c in (cell_a, cell_b) if c not in scores]
    if missing:
        return {"claim": name, "holds": None, "why": f"not measured: {', '.join(sorted(set(missing)))} not evaluated"}
    diff = paired(scores[cell_a], scores[cell_b])
    out = {"claim": name, "holds": diff["mean"] > 0, "significant": diff["ci95"][0] > 0,
           "difference": diff, "a": a, "b": b,
           "win_rate_a": statistics.fmean(scores[cell_a].values()), "win_rate_b": statistics.fmean(scores[cell_b].values())}
    if target is not None:
        out["target"] = target
        out["meets_target"] = diff["mean"] >= target and diff["ci95"][0] > 0
    return out


def evaluate_goals(scores: dict[Cell, dict], *, split: str, num_shots: int, shots: list[int],
                   sweep_split: str, methods: list[str]) -> list[dict]:
    """Each claim with its measurement; scores[cell] maps a comparison key (user, question) to its pair score."""
    at = lambda m: Cell(m, split, num_shots)  # noqa: E731
    split_words = split.replace("_", "-")
    out = [
        *(_claim(f"fspo beats {b} on {split_words} users", "fspo", b, at("fspo"), at(b), scores, TARGET_POINTS)
          for b in ("few_shot", "pref_ft", "ipo")),
        _claim(f"fspo_rat beats fspo on {split_words} users", "fspo_rat", "fspo", at("fspo_rat"), at("fspo"), scores),
    ]
    others = [m for m in methods if m != "oracle" and at(m) in scores]
    if at("oracle") in scores and others:
        vs = {m: _claim(f"oracle >= {m}", "oracle", m, at("oracle"), at(m), scores) for m in others}
        best = max(others, key=lambda m: statistics.fmean(scores[at(m)].values()))
        margin = statistics.fmean(scores[at("oracle")].values()) - statistics.fmean(scores[at(best)].values())
        out.append({"claim": f"oracle is the ceiling on {split_words} users", "holds": margin >= 0,
                    "best_other": best, "margin": margin,
                    "significant": all(c["difference"]["ci95"][0] > 0 for c in vs.values())})
    else:
        out.append({"claim": f"oracle is the ceiling on {split_words} users", "holds": None,
                    "why": "not measured: oracle not evaluated"})
    if len(shots) >= 2:
        lo, hi = min(shots), max(shots)
        for m in ("fspo", "fspo_rat"):
            series = {n: statistics.fmean(scores[Cell(m, sweep_split, n)].values()) for n in sorted(shots)
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
        if "meets_target" in g:
            verdict += f"; target +{100 * g['target']:.0f} pp {'met' if g['meets_target'] else '**not met**'}"
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
