"""The whole pipeline on one config, in one run directory: generate -> build_model -> train -> evaluate.

    python -m jobs.demo --config jobs/configs/world.yaml [world.seed=1 output_dir=runs/seed1 ...]

The README's main command (scripts/demo.sh) wraps this. Every stage accepts the same
overrides; each writes its resolved config next to its outputs.
"""

from __future__ import annotations

import json
import sys
import time

from fspo_ray.config import RunConfig
from jobs._common import run_stage


def demo(cfg: RunConfig) -> None:
    from jobs.build_model import build_model
    from jobs.evaluate import evaluate
    from jobs.generate import generate
    from jobs.train import train

    timings = {}
    for name, stage in (("generate", generate), ("build_model", build_model), ("train", train),
                        ("evaluate", evaluate)):
        t0 = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        stage(cfg)
        timings[name] = round(time.perf_counter() - t0, 1)
    layout = cfg.layout
    metrics = json.loads(layout.eval_metrics.read_text()) if layout.eval_metrics.exists() else {}
    print("\n=== summary ===")
    print(f"run directory: {layout.root}")
    print(f"stage seconds: {timings} (total {sum(timings.values()):.0f} s)")
    timing = metrics.get("timing")
    if timing:
        print(f"training: {timing['optimizer_steps_s']:.0f} s of {timing['train_wall_s']:.0f} s in optimizer steps "
              f"({100 * timing['optimizer_share']:.0f}%)")
    for stage, m in metrics.get("stages", {}).items():
        acc = m["reward_accuracy"]
        line = f"reward accuracy [{stage}]: " + "  ".join(f"{k}={v:.3f}" for k, v in acc.items())
        reader = m.get("reference", {}).get("shot_reader", {}).get("held_out")
        if reader is not None:
            line += f"  (shot reader on the same held-out pairs: {reader:.3f})"
        print(line)
        if m.get("held_out_by_shots"):
            print("  held-out accuracy by shots: " + "  ".join(f"N={n}: {v:.3f}" for n, v in m["held_out_by_shots"].items()))
    report = layout.report
    if report.exists():
        from fspo_ray.evaluation.report import summary_lines

        for line in summary_lines(json.loads(report.read_text())):
            print(line)
    print(f"win-rate report: {report.with_suffix('.md')}; plots under {layout.plots} (learning_curve.png, win rates)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("demo", demo, argv)


if __name__ == "__main__":
    sys.exit(main())
