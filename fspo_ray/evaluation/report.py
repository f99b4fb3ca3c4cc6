"""The evaluation report: report.json, report.md (tables laid out like the paper's) and plots.

report.json holds, per method and split, the win rate against the baseline, its 95%
interval, the one-sided p-value and n; the shots sweep; skipped methods with their reasons;
and the RAT description quality. The markdown and the two PNGs say the same for a reader
who never opens the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from fspo_ray.evaluation.plan import Cell
from fspo_ray.evaluation.stats import WinRate

SPLIT_LABELS = {"train": "Trained users", "held_out": "Held-out users", "interpolated": "Interpolated users"}
STATISTICS = {
    "unit": "pair: a method answer and the baseline answer for one user and question, judged in both "
    "orders; a win is 1, a tie 1/2, a loss 0, and the pair scores the mean of its two judgments",
    "win_rate": "summed pair scores / pairs",
    "ci95": "Wilson score interval, 95%",
    "p_value": "one-sided exact binomial test against 0.5: P(X >= floor(summed scores)), X ~ Bin(pairs, 1/2)",
}
PLOTS = {"win_rate_by_method": "plots/win_rate_by_method.png", "win_rate_vs_shots": "plots/win_rate_vs_shots.png"}


def build_report(*, ev, methods: list[str], results: dict[Cell, WinRate], skipped: dict[str, str],
                 users: dict[str, int], judge: dict, description_quality: dict | None = None,
                 world_score: dict | None = None, goals: list[dict] | None = None,
                 generation: dict | None = None, seconds: float | None = None,
                 differences: dict | None = None, training: dict | None = None) -> dict:
    """Everything the job measured, keyed win_rate[method][split], win_rate_by_shots[method][N]."""
    main = {c: r for c, r in results.items() if c.n == ev.num_shots and c.split in ev.splits}
    report: dict = {
        "baseline": ev.baseline,
        "num_shots": ev.num_shots,
        "methods": methods,
        "splits": list(ev.splits),
        "win_rate": {}, "ci95": {}, "p_value": {}, "n": {}, "counts": {},
        "win_rate_by_shots": {}, "ci95_by_shots": {}, "p_value_by_shots": {}, "n_by_shots": {},
        "shots_sweep": {"split": ev.sweep_split, "shots": list(ev.shots_sweep)},
        "skipped": dict(skipped),
        "users": dict(users),
        "questions_per_user": ev.questions_per_user,
        "judge": judge,
        "statistics": STATISTICS,
        "description_quality": description_quality,
        "goals": goals,
        "world_score": world_score,
        "generation": generation,
        "plots": dict(PLOTS) if ev.shots_sweep else {"win_rate_by_method": PLOTS["win_rate_by_method"]},
        "seconds": None if seconds is None else round(seconds, 1),
    }
    if differences:
        report.update(differences)
    if training:
        report["training"] = training
    for c, r in main.items():
        report["win_rate"].setdefault(c.method, {})[c.split] = r.win_rate
        report["ci95"].setdefault(c.method, {})[c.split] = list(r.ci95)
        report["p_value"].setdefault(c.method, {})[c.split] = r.p_value
        report["n"].setdefault(c.method, {})[c.split] = r.n
        report["counts"].setdefault(c.method, {})[c.split] = {
            "wins": r.wins, "ties": r.ties, "losses": r.losses, "judgments": r.judgments}
    for c, r in results.items():
        if c.split == ev.sweep_split and c.n in ev.shots_sweep and c.method in _sweep_methods(ev, methods):
            key = str(c.n)  # JSON object keys are strings
            report["win_rate_by_shots"].setdefault(c.method, {})[key] = r.win_rate
            report["ci95_by_shots"].setdefault(c.method, {})[key] = list(r.ci95)
            report["p_value_by_shots"].setdefault(c.method, {})[key] = r.p_value
            report["n_by_shots"].setdefault(c.method, {})[key] = r.n
    for table in ("win_rate_by_shots", "ci95_by_shots", "p_value_by_shots", "n_by_shots"):
        report[table] = {m: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for m, v in report[table].items()}
    return report


def _sweep_methods(ev, methods: list[str]) -> list[str]:
    return [m for m in methods if ev.methods[m].context != "none"]


def write_report(out_dir: str | Path, report: dict) -> dict[str, Path]:
    """report.json, report.md and the PNGs under out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(report))
    (out / "plots").mkdir(exist_ok=True)
    paths["win_rate_by_method"] = plot_win_rates(report, out / PLOTS["win_rate_by_method"])
    if report["win_rate_by_shots"]:
        paths["win_rate_vs_shots"] = plot_win_rate_vs_shots(report, out / PLOTS["win_rate_vs_shots"])
    return paths


# --------------------------------------------------------------------------- markdown


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def cell_text(win: float, ci: list[float]) -> str:
    """'72.5 ± 10.6': the win rate in %, ± half the width of the 95% interval."""
    return f"{100 * win:.1f} ± {100 * (ci[1] - ci[0]) / 2:.1f}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def win_rate_table(report: dict) -> list[str]:
    splits = report["splits"]
    lines = ["| Method | " + " | ".join(SPLIT_LABELS.get(s, s) for s in splits) + " |",
             "|---|" + "---:|" * len(splits)]
    for m in report["methods"]:
        row = [cell_text(report["win_rate"][m][s], report["ci95"][m][s]) if s in report["win_rate"].get(m, {})
               else "n/a" for s in splits]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines


def render_markdown(r: dict) -> str:
    judge = r["judge"]
    judge_text = (f"the world judge with each user's gold persona (position bias {judge['position_bias']}, "
                  f"noise {judge['noise']})" if judge["kind"] == "world"
                  else f"the LLM judge `{judge.get('model')}` conditioned on each user's true description")
    users = ", ".join(f"{n} {SPLIT_LABELS.get(s, s).lower()}" for s, n in r["users"].items())
    lines = [
        "# Evaluation report",
        "",
        f"Win rate (%) of each method's answer against the `{r['baseline']}` answer to the same held-out "
        f"question, judged by {judge_text}, in both orders; a tie counts half. N = {r['num_shots']} shots; "
        f"{users}, {r['questions_per_user']} questions each. ± is half the width of the 95% Wilson interval "
        "(exact bounds in report.json). 50 = no better than the baseline.",
        "",
        *win_rate_table(r),
        "",
        "## Significance",
        "",
        "One-sided exact binomial p-value against 50%, and n (pairs, each judged in both orders).",
        "",
        "| Method | " + " | ".join(SPLIT_LABELS.get(s, s) for s in r["splits"]) + " |",
        "|---|" + "---:|" * len(r["splits"]),
    ]
    for m in r["methods"]:
        cells = [f"p = {_p(r['p_value'][m][s])} (n = {r['n'][m][s]})" if s in r["p_value"].get(m, {}) else "n/a"
                 for s in r["splits"]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if r["win_rate_by_shots"]:
        shots = r["shots_sweep"]["shots"]
        split = SPLIT_LABELS.get(r["shots_sweep"]["split"], r["shots_sweep"]["split"]).lower()
        lines += ["", f"## Win rate vs number of shots ({split})", "",
                  "| Method | " + " | ".join(f"N = {n}" for n in shots) + " |", "|---|" + "---:|" * len(shots)]
        for m, by_n in r["win_rate_by_shots"].items():
            row = [cell_text(by_n[str(n)], r["ci95_by_shots"][m][str(n)]) if str(n) in by_n else "n/a" for n in shots]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
    if r.get("world_score"):
        lines += ["", "## Mean world score of the answers", "",
                  "Matches minus contradictions with the user's gold persona on the question's relevant axes "
                  "(absolute, not pairwise; higher is better).", "",
                  "| Method | " + " | ".join(SPLIT_LABELS.get(s, s) for s in r["splits"]) + " |",
                  "|---|" + "---:|" * len(r["splits"])]
        for m in r["methods"]:
            row = [f"{r['world_score'][m][s]:.2f}" if s in r["world_score"].get(m, {}) else "n/a" for s in r["splits"]]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += difference_lines(r)
    lines += training_lines(r.get("training"))
    lines += description_lines(r.get("description_quality"), r["splits"])
    if r.get("goals"):
        from fspo_ray.evaluation.goals import goals_markdown

        lines += goals_markdown(r["goals"])
    if r["skipped"]:
        lines += ["", "## Skipped methods", ""] + [f"- `{m}`: {why}" for m, why in r["skipped"].items()]
    gen = r.get("generation") or {}
    if gen.get("errors") or gen.get("truncated"):
        lines += ["", f"Generation: {gen.get('requests')} requests, {gen.get('errors', 0)} failed (empty answer), "
                      f"{gen.get('truncated', 0)} cut at max_new_tokens."]
    if judge.get("dropped"):
        reasons = ", ".join(f"{n} {why}" for why, n in judge["dropped"].items())
        lines += ["", f"The LLM judge's dropped judgments: {reasons} (not counted; "
                      f"{judge.get('comparisons_without_vote', 0)} comparisons had no vote left)."]
    lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in r["plots"].items()]
    if r.get("seconds") is not None:
        lines += ["", f"Evaluated in {r['seconds']} s."]
    return "\n".join(lines) + "\n"


def method_differences(scores: dict[str, dict], split: str) -> dict:
    """Paired win-rate differences between methods on one split: `diff[a][b]` = win rate of a minus
    win rate of b over the comparisons (user, question) both have, `diff_ci95[a][b]` its 95%
    interval (fspo_ray.evaluation.stats.paired_difference), `diff_n[a][b]` their number."""
    from fspo_ray.evaluation.stats import paired_difference

    out: dict = {"diff_split": split, "diff": {}, "diff_ci95": {}, "diff_n": {}}
    for a, sa in scores.items():
        for b, sb in scores.items():
            common = [k for k in sa if k in sb]
            if a == b or len(common) < 2:
                continue
            d, ci = paired_difference([sa[k] for k in common], [sb[k] for k in common])
            out["diff_n"].setdefault(a, {})[b] = len(common)
            out["diff"].setdefault(a, {})[b] = d
            out["diff_ci95"].setdefault(a, {})[b] = list(ci)
    return out


def difference_lines(r: dict) -> list[str]:
    if not r.get("diff"):
        return []
    split = SPLIT_LABELS.get(r["diff_split"], r["diff_split"]).lower()
    names = list(r["diff"])
    lines = ["", f"## Differences between methods ({split})", "",
             "Row minus column, in win-rate points, over the same users and questions (each method judged against "
             "the same baseline answer); [95% interval of the paired difference]. An interval above 0 means the row "
             "method wins more often than the column method.", "",
             "| Row − column | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for a in names:
        cells = []
        for b in names:
            if b not in r["diff"][a]:
                cells.append("–")
                continue
            lo, hi = r["diff_ci95"][a][b]
            cells.append(f"{100 * r['diff'][a][b]:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def training_summary(out_dir: str | Path) -> dict | None:
    """What the train job measured (its eval_metrics.json): each preference stage's implicit-reward
    accuracy on held-out pairs per split, the world's reference predictors on the same pairs, and
    the learning curve's plot when there is one. None without a train job's metrics."""
    out = Path(out_dir)
    path = out / "eval_metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    stages = {name: {"reward_accuracy": m.get("reward_accuracy", {}), "held_out_by_shots": m.get("held_out_by_shots", {}),
                     "reference": {k: v for k, v in (m.get("reference") or {}).items() if k != "shot_reader_by_shots"}}
              for name, m in metrics.get("stages", {}).items()}
    curve = out / "plots" / "learning_curve.png"
    return {"stages": stages, "learning_curve": "plots/learning_curve.png" if curve.is_file() else None,
            "optimizer_share": (metrics.get("timing") or {}).get("optimizer_share")}


def training_lines(t: dict | None) -> list[str]:
    if not t or not t.get("stages"):
        return []
    splits = list(SPLIT_LABELS)
    lines = ["", "## What the models learned: implicit-reward accuracy on held-out pairs", "",
             "From the train job (`eval_metrics.json`): given the user's shots, does the stage's "
             "`log pi/ref(chosen) - log pi/ref(rejected)` rank the user's held-out pairs as they did? The shot "
             "reader and the no-context prior are the world's own predictors on the same pairs.", "",
             "| Stage | " + " | ".join(SPLIT_LABELS[s] for s in splits) + " |", "|---|" + "---:|" * len(splits)]
    for name, m in t["stages"].items():
        acc = m["reward_accuracy"]
        lines.append(f"| {name} | " + " | ".join(f"{acc[s]:.3f}" if s in acc else "n/a" for s in splits) + " |")
        for ref in ("shot_reader", "population_prior"):
            vals = m["reference"].get(ref) or {}
            if vals:
                lines.append(f"| ↳ {ref.replace('_', ' ')} (same pairs) | "
                             + " | ".join(f"{vals[s]:.3f}" if s in vals else "n/a" for s in splits) + " |")
    if t.get("learning_curve"):
        lines += ["", f"![learning curve]({t['learning_curve']})"]
    return lines


def summary_lines(r: dict) -> list[str]:
    """The main table and the differences to the FSPO model, for a terminal."""
    lines = ["", *win_rate_table(r)]
    if "fspo" in r.get("diff", {}):
        lines.append(f"fspo minus other methods ({r['diff_split']}, win-rate points, 95% interval):")
        for b, d in r["diff"]["fspo"].items():
            lo, hi = r["diff_ci95"]["fspo"][b]
            lines.append(f"  - {b}: {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    return lines


def description_lines(dq: dict | None, splits: list[str]) -> list[str]:
    if not dq:
        return []
    lines = ["", "## RAT description quality", "",
             f"Descriptions written from N = {dq['num_shots']} shots, compared with each user's gold description: "
             f"cosine similarity of {dq['embedder']} embeddings (mean over users), and the share of the gold "
             "persona's axes the description names with the right value.", ""]
    cols = [*splits, "all"]
    head = " | ".join(f"similarity ({SPLIT_LABELS.get(s, s).lower()})" if s != "all" else "similarity (all)" for s in cols)
    lines += [f"| Describer | Stage | {head} | Axes recovered (all) |", "|---|---|" + "---:|" * (len(cols) + 1)]
    for when, label in (("before", "stage 1 (SFT)"), ("after", "stage 2 (preference)")):
        d = dq.get(when)
        if not d:
            continue
        sims = " | ".join(f"{d['similarity'][s]:.3f}" if d["similarity"].get(s) is not None else "n/a" for s in cols)
        lines.append(f"| {label} | `{d['stage']}` | {sims} | {_pct(d['axes_recovered'].get('all'))}% |")
    for when, why in (dq.get("skipped") or {}).items():
        lines.append(f"\n- {when} (`{when}` describer) not measured: {why}")
    return lines


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_win_rates(r: dict, path: Path) -> Path:
    """Grouped bars: methods on x, one bar per split, 95% intervals, a 50% parity line."""
    plt = _pyplot()
    methods, splits = r["methods"], r["splits"]
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(methods) + 2), 4.8))
    for j, s in enumerate(splits):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(methods):
            if s not in r["win_rate"].get(m, {}):
                continue
            w, (a, b) = r["win_rate"][m][s], r["ci95"][m][s]
            xs.append(i + (j - (len(splits) - 1) / 2) * width)
            ys.append(100 * w)
            lo.append(100 * (w - a))
            hi.append(100 * (b - w))
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=SPLIT_LABELS.get(s, s))
        ax.bar_label(bars, fmt="%.0f", padding=2, fontsize=7, label_type="center")
    ax.axhline(50, color="black", linestyle="--", linewidth=1, label=f"parity with {r['baseline']} (50%)")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylim(0, 100)
    ax.set_xlabel("Method")
    ax.set_ylabel(f"Win rate vs {r['baseline']} (%)")
    ax.set_title(f"Win rate against {r['baseline']} by user split (N = {r['num_shots']} shots, "
                 f"{r['judge']['kind']} judge, both orders, 95% CI)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(splits) + 1, frameon=False)
    if r["skipped"]:
        fig.text(0.01, 0.01, "Skipped (model missing): " + ", ".join(r["skipped"]), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_win_rate_vs_shots(r: dict, path: Path) -> Path:
    """One line per method: win rate against the number of shots, with 95% intervals."""
    plt = _pyplot()
    shots = r["shots_sweep"]["shots"]
    methods = list(r["win_rate_by_shots"])
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for k, m in enumerate(methods):
        by_n = r["win_rate_by_shots"][m]
        dodge = (k - (len(methods) - 1) / 2) * 0.06  # keep the error bars of methods apart
        idx = [i for i, n in enumerate(shots) if str(n) in by_n]
        ys = [100 * by_n[str(shots[i])] for i in idx]
        cis = [r["ci95_by_shots"][m][str(shots[i])] for i in idx]
        err = [[y - 100 * c[0] for y, c in zip(ys, cis, strict=True)], [100 * c[1] - y for y, c in zip(ys, cis, strict=True)]]
        ax.errorbar([i + dodge for i in idx], ys, yerr=err, marker="o", capsize=3, label=m)
    ax.axhline(50, color="black", linestyle="--", linewidth=1, label=f"parity with {r['baseline']} (50%)")
    ax.set_xticks(range(len(shots)), [str(n) for n in shots])
    ax.set_ylim(0, 100)
    ax.set_xlabel("Number of shots N (the user's preferences in the prompt)")
    ax.set_ylabel(f"Win rate vs {r['baseline']} (%)")
    split = SPLIT_LABELS.get(r["shots_sweep"]["split"], r["shots_sweep"]["split"]).lower()
    ax.set_title(f"Win rate vs number of shots ({split}, 95% CI)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_table(r: dict) -> str:
    """The main table for a terminal."""
    return "\n".join(win_rate_table(r))
