"""Stage evaluate: win rates of every method against the base model, per user split.

    python -m jobs.evaluate --config jobs/configs/world.yaml [evaluate.users_per_split=32 ...]
    ray job submit --working-dir . -- python -m jobs.evaluate --config jobs/configs/world.yaml

Reads <output_dir>/prefs and <output_dir>/models/<stage>/ (from jobs.train); writes
<output_dir>/report.json, report.md and plots/. Methods, users, the shots sweep and the
judge are the `evaluate:` section of the config (see docs/evaluation.md).
"""

from __future__ import annotations

import sys

from fspo_ray.config import RunConfig
from fspo_ray.ray_utils import init_ray
from jobs._common import run_stage


def evaluate(cfg: RunConfig) -> dict:
    from fspo_ray.evaluation.report import summary_table
    from fspo_ray.evaluation.run import check_inputs, run_evaluation

    plan = check_inputs(cfg)  # before any Ray worker starts
    init_ray(cfg.ray)
    report = run_evaluation(cfg, plan)
    out = cfg.layout.root
    print(f"\nWin rate (%) vs {report['baseline']}, N = {report['num_shots']} shots, ± half the 95% interval:")
    print(summary_table(report))
    for method, why in report["skipped"].items():
        print(f"skipped {method}: {why}")
    print(f"report: {cfg.layout.report.with_suffix('.md')} (and report.json)")
    for name, rel in report["plots"].items():
        print(f"plot {name}: {out / rel}")
    return report


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
