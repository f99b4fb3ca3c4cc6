"""What every entrypoint shares: argument parsing, config loading, errors without tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from fspo_ray.config import RunConfig, load_config, save_resolved
from fspo_ray.errors import FspoError

DEFAULT_CONFIG = "jobs/configs/world.yaml"


def parse_args(stage: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m jobs.{stage}",
        description=f"fspo-ray stage '{stage}'. Overrides are key.sub=value, e.g. world.seed=1 output_dir=runs/x.",
    )
    parser.add_argument("--config", default=None, help=f"YAML run config (default: {DEFAULT_CONFIG} when present)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.config is None and Path(DEFAULT_CONFIG).is_file():
        args.config = DEFAULT_CONFIG
    return args


def run_stage(stage: str, body: Callable[[RunConfig], object], argv: list[str] | None = None) -> int:
    """Load and validate the config (before any Ray worker starts), write it next to the
    stage's outputs, run the stage. User errors print one message and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(stage, argv)
    try:
        cfg = load_config(args.config, args.overrides)  # paths resolved here, once
        path = cfg.layout.resolved_config(stage)
        save_resolved(cfg, path.parent, name=path.name)
        body(cfg)
    except FspoError as e:
        print(f"fspo {stage}: error: {e}", file=sys.stderr)
        return 2
    return 0
