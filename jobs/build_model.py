"""Stage build_model: train the offline tokenizer and create the tiny Llama-shaped model.

    python -m jobs.build_model --config jobs/configs/world.yaml [tiny_model.hidden_size=128 ...]

Runs in the job driver (seconds on CPU); under `ray job submit` the output path must be on
storage the later stages can read.
"""

from __future__ import annotations

import sys

from fspo_ray.config import RunConfig
from fspo_ray.modeling import build_tiny_from_config
from jobs._common import run_stage


def build_model(cfg: RunConfig) -> None:
    out = build_tiny_from_config(cfg)
    print(f"tiny model and tokenizer saved to {out}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("build_model", build_model, argv)


if __name__ == "__main__":
    sys.exit(main())
