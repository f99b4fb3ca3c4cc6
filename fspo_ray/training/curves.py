"""The learning curve: held-out users' reward accuracy against optimizer steps, per preference
stage, with the world's reference predictors (shot reader, no-context prior) as lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

CURVE_STAGES = ("fspo", "ipo_no_context")


def read_curve(stage_dir: str | Path) -> list[dict]:
    path = Path(stage_dir) / "curve.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_learning_curves(cfg, summary: dict) -> Path | None:
    """`<output_dir>/plots/learning_curve.png` and its data (`learning_curve.json`); None when no
    preference stage recorded a curve or matplotlib is missing."""
    layout = cfg.layout
    curves = {}
    for st in cfg.train.stages:
        points = read_curve(layout.train(st.name))
        if points and st.kind == "preference":
            curves[st.name] = points
    if not curves:
        return None
    layout.plots.mkdir(parents=True, exist_ok=True)
    data = {"curves": curves, "reference": {}}
    for name in curves:
        ref = summary.get("stages", {}).get(name, {}).get("reference")
        if ref:
            data["reference"][name] = {k: ref[k].get("held_out") for k in ("shot_reader", "population_prior")}
    (layout.plots / "learning_curve.json").write_text(json.dumps(data, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: learning_curve.json written, no PNG")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    order = [n for n in CURVE_STAGES if n in curves] + [n for n in curves if n not in CURVE_STAGES]
    for name in order:
        pts = [p for p in curves[name] if "held_out" in p]
        ax.plot([p["step"] for p in pts], [p["held_out"] for p in pts], marker=".", label=f"{name} (held-out users)")
    refs = data["reference"].get("fspo") or next(iter(data["reference"].values()), {})
    if refs.get("shot_reader") is not None:
        ax.axhline(refs["shot_reader"], color="tab:green", ls="--", lw=1, label="shot reader (same pairs)")
    if refs.get("population_prior") is not None:
        ax.axhline(refs["population_prior"], color="tab:gray", ls=":", lw=1, label="no-context prior (same pairs)")
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("implicit-reward accuracy")
    ax.set_ylim(0.3, 1.0)
    ax.set_title(f"Learning curve, held-out users (world seed {cfg.world.seed})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = layout.plots / "learning_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
