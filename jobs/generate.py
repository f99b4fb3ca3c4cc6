"""Stage generate: synthetic preference pairs on Ray Data, then the data report.

    python -m jobs.generate --config jobs/configs/world.yaml [generate.users_per_shard=25 ...]
    ray job submit --working-dir . -- python -m jobs.generate --config jobs/configs/world.yaml

Writes <output_dir>/prefs/split=<split>/*.parquet (fspo_ray.data schema), data_report.json
and .md, and resolved_config.generate.yaml. Rerunning the same command resumes: committed
shards are skipped, the others are computed, nothing is duplicated.
"""

from __future__ import annotations

import sys

from fspo_ray.config import RunConfig
from fspo_ray.ray_utils import init_ray
from jobs._common import run_stage

WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def generate(cfg: RunConfig) -> dict:
    from fspo_ray.generation.checks import autoscaling_ceiling, check_cluster, check_inputs
    from fspo_ray.generation.pipeline import run_generate

    check_inputs(cfg)  # persona/question files, embedder: before Ray starts
    resources = init_ray(cfg.ray, runtime_env={"env_vars": WORKER_ENV})
    check_cluster(cfg, resources, autoscaling_ceiling())  # pools that could never be scheduled: before anything runs
    report = run_generate(cfg)
    le = report["label_entropy_nats"]
    print(
        f"generated {report['rows']} rows into {cfg.output_dir}/prefs "
        f"(label entropy {le['before_refinement']:.3f} -> {le['after_refinement']:.3f} nats)"
        if report["rows"]
        else f"generated 0 rows into {cfg.output_dir}/prefs",
        flush=True,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return run_stage("generate", generate, argv)


if __name__ == "__main__":
    sys.exit(main())
