"""Stage train: SFT (Pref-FT) then FSPO (IPO/DPO) and the baselines, on Ray Train + DeepSpeed ZeRO.

    python -m jobs.train --config jobs/configs/world.yaml [train.zero_stage=3 train.num_workers=2 ...]
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/world.yaml

Reads <output_dir>/prefs (from jobs.generate) and the model at model.name_or_path; writes
<output_dir>/models/<stage>/ (Hugging Face, safetensors), metrics and eval_metrics.json.
Rerunning the same command with the same run_name resumes.
"""

from __future__ import annotations

import sys

from fspo_ray.config import RunConfig
from fspo_ray.ray_utils import init_ray
from jobs._common import run_stage


def train(cfg: RunConfig) -> None:
    from fspo_ray.training.run import check_inputs, run_training

    check_inputs(cfg)  # before any Ray worker starts
    init_ray(cfg.ray)
    run_training(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
