"""The run layout: every path a run writes under its output_dir, and the one rule for paths in configs.

    <output_dir>/prefs/split=<split>/*.parquet     generate
    <output_dir>/data_report.json|.md              generate
    <output_dir>/generate_runs.jsonl               generate
    <output_dir>/models/<stage>/                   build_model (tiny), train
    <output_dir>/train/<stage>/                    train: metrics.jsonl, curve.jsonl, timing.json, ...
    <output_dir>/ray_train/                        Ray Train's storage (checkpoints)
    <output_dir>/eval_metrics.json                 train
    <output_dir>/report.json|.md, plots/           evaluate
    <output_dir>/serve/                            serve (the SQLite profile store)
    <output_dir>/human_eval/                       the human-evaluation kit (jobs.human_eval_export)
    <output_dir>/resolved_config.<stage>.yaml      every stage

Config paths are resolved once, when the config is loaded (run and Serve configs alike): the
placeholder '{output_dir}' is replaced, and a local path is made absolute against the directory
the driver starts in, since Ray workers run in their own directories. A hub id ('org/name') is
left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

OUTPUT_DIR = "{output_dir}"


def looks_local(path: str) -> bool:
    """A filesystem path, not a hub id or a URI: absolute, './', '../' or '~' prefixed, two or more
    '/' ('runs/x/models/y'), or existing here. 'org/name' and a bare name that does not exist are hub ids."""
    if "://" in path:
        return False
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).expanduser().exists()


def absolute(path: str) -> str:
    """Absolute against the current directory, '..' folded, symlinks kept; a URI ('s3://...') is
    left as it is (the checks that need a file system path name it)."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve_path(path: str, output_dir: str) -> str:
    """'{output_dir}' replaced, then a local path made absolute; a hub id unchanged."""
    path = path.replace(OUTPUT_DIR, output_dir)
    return absolute(path) if looks_local(path) else path


class RunLayout:
    """Where each artifact of one run lives (`cfg.layout` of a run config)."""

    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir)

    @property
    def prefs(self) -> Path:
        return self.root / "prefs"

    def model(self, stage: str) -> Path:
        """A stage's exported Hugging Face directory ('tiny' is build_model's)."""
        return self.root / "models" / stage

    def train(self, stage: str) -> Path:
        """A training stage's metrics, curve, timing and TensorBoard events."""
        return self.root / "train" / stage

    @property
    def ray_train(self) -> Path:
        return self.root / "ray_train"

    @property
    def eval_metrics(self) -> Path:
        return self.root / "eval_metrics.json"

    @property
    def data_report(self) -> Path:
        """data_report.json; its markdown twin is data_report.md."""
        return self.root / "data_report.json"

    @property
    def generate_runs(self) -> Path:
        return self.root / "generate_runs.jsonl"

    @property
    def report(self) -> Path:
        """report.json; its markdown twin is report.md."""
        return self.root / "report.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def serve(self) -> Path:
        return self.root / "serve"

    @property
    def human_eval(self) -> Path:
        return self.root / "human_eval"

    def resolved_config(self, stage: str) -> Path:
        return self.root / f"resolved_config.{stage}.yaml"
