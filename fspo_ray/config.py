"""The run config: one YAML per run, composed of the sections each package owns.

    ray:        fspo_ray/ray_utils.py        RayConfig
    world:      fspo_ray/world/config.py     WorldConfig
    model:      fspo_ray/training/config.py  ModelConfig (the policy)
    tiny_model: fspo_ray/modeling.py         TinyModelConfig
    episodes:   fspo_ray/episodes.py         EpisodeConfig
    loss/train: fspo_ray/training/config.py  LossConfig, TrainConfig
    generate:   fspo_ray/generation/config.py
    evaluate:   fspo_ray/evaluation/config.py
    embedder:   fspo_ray/engines/embedder.py

The base (section class, YAML + `key.sub=value` loading, error formatting) is fspo_ray/sections.py.
Paths are resolved once, here, at load (fspo_ray/layout.py): every job and Ray worker sees
absolute local paths. Checks that span sections live in `RunConfig._check`, so a bad config
fails at submit time, before any Ray worker starts, with the field named.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from fspo_ray.engines.embedder import EmbedderConfig
from fspo_ray.episodes import EpisodeConfig
from fspo_ray.evaluation.config import EvaluateConfig
from fspo_ray.generation.config import GenerateConfig
from fspo_ray.layout import RunLayout, absolute, resolve_path
from fspo_ray.modeling import TinyModelConfig
from fspo_ray.ray_utils import RayConfig
from fspo_ray.sections import ConfigError, Section, parse_overrides, read_yaml, validate
from fspo_ray.training.config import LossConfig, ModelConfig, TrainConfig
from fspo_ray.world.config import WorldConfig

__all__ = ["ConfigError", "RunConfig", "build_config", "load_config", "parse_overrides", "save_resolved"]

logger = logging.getLogger(__name__)


class RunConfig(Section):
    """A whole run: one YAML under jobs/configs/, overridable with key.sub=value."""

    run_name: str = Field("fspo-world", min_length=1, description="Run name; the same name resumes a run.")
    output_dir: str = Field(
        "runs/{run_name}", description="Where every artifact of the run lands (fspo_ray/layout.py); relative: to "
        "the directory the job starts in."
    )
    seed: int = Field(0, description="Global seed for sampling episodes, init and shuffles.")
    ray: RayConfig = Field(default_factory=RayConfig, description="How to start or join Ray.")
    world: WorldConfig = Field(default_factory=WorldConfig, description="The simulated user world.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy model.")
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig, description="build_model's sizes.")
    episodes: EpisodeConfig = Field(default_factory=EpisodeConfig, description="Episode construction.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Preference loss.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Meta-training.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Synthetic preference generation.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation: methods, splits, shots sweep, judge.")
    embedder: EmbedderConfig = Field(
        default_factory=EmbedderConfig, description="The sentence embedder (data report, RAT stage 2, description quality)."
    )

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        self._resolve_paths()
        if self.world.rendering == "compact" and self.generate.provider != "world":
            raise ValueError(
                "world.rendering=compact renders the simulated world's rows; generate.provider="
                f"{self.generate.provider!r} writes text (use world.rendering=text)"
            )
        if self.tiny_model.tokenizer == "words" and self.world.rendering != "compact":
            raise ValueError(
                "tiny_model.tokenizer=words knows only the compact rendering's words; set world.rendering=compact "
                "or tiny_model.tokenizer=bpe"
            )
        return self

    def _resolve_paths(self) -> None:
        """Once, at load: output_dir may use {run_name}, other paths {output_dir}; local paths become
        absolute, since Ray workers run in their own directories; hub ids stay as they are."""
        out = absolute(self.output_dir.format(run_name=self.run_name))
        object.__setattr__(self, "output_dir", out)
        models = [(self.model, "name_or_path"), (self.tiny_model, "output"),
                  *((g, "model") for g in self.generate.llm.generators), (self.generate.llm.judge, "model"),
                  (self.evaluate.judge.llm, "model")]
        for section, name in models:
            object.__setattr__(section, name, resolve_path(getattr(section, name), out))
        files = [(self.generate.llm, "persona_file"), (self.generate.llm, "questions_file"),
                 (self.evaluate.human, "questions_file"), (self.embedder, "path")]
        for section, name in files:
            value = getattr(section, name)
            if value is not None:
                object.__setattr__(section, name, absolute(value.replace("{output_dir}", out)))
        for m in self.evaluate.methods.values():  # a stage name stays a name; a path is a path
            for name in ("model", "describer"):
                value = getattr(m, name)
                if value is not None and ("/" in value or "{" in value):
                    object.__setattr__(m, name, resolve_path(value, out))

    @property
    def layout(self) -> RunLayout:
        """Every path of this run under output_dir."""
        return RunLayout(self.output_dir)


def build_config(data: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Dict (+ overrides) -> validated RunConfig, or ConfigError naming each bad field."""
    return validate(RunConfig, upgrade(data or {}), overrides)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A run config written before the one engine config and the embedder: section (the resolved
    config of an existing run directory, say), in today's keys: `engine` -> `kind`,
    generate.report.embedder -> embedder, model.trust_remote_code (never read) dropped. Logged."""
    data = copy.deepcopy(data)
    moved = []
    gen, ev = data.get("generate") or {}, data.get("evaluate") or {}
    engines = [("generate.llm.judge", (gen.get("llm") or {}).get("judge")),
               ("evaluate.inference", ev.get("inference")), ("evaluate.judge.llm", (ev.get("judge") or {}).get("llm"))]
    engines += [(f"generate.llm.generators[{i}]", g) for i, g in enumerate((gen.get("llm") or {}).get("generators") or [])]
    for where, engine in engines:
        if isinstance(engine, dict) and "engine" in engine and "kind" not in engine:
            engine["kind"] = engine.pop("engine")
            moved.append(f"{where}.engine -> kind")
    report = gen.get("report") or {}
    if isinstance(report, dict) and "embedder" in report and "embedder" not in data:
        data["embedder"] = report.pop("embedder")
        moved.append("generate.report.embedder -> embedder")
    if isinstance(data.get("model"), dict) and data["model"].pop("trust_remote_code", None) is not None:
        moved.append("model.trust_remote_code (never read) dropped")
    if moved:
        logger.warning("config from an earlier version, read with today's keys: %s", "; ".join(moved))
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `key.sub=value` overrides, validate, resolve paths."""
    return build_config(read_yaml(path) if path is not None else {}, overrides)


def save_resolved(cfg: RunConfig, directory: str | os.PathLike, name: str = "resolved_config.yaml") -> Path:
    """Write the fully resolved config next to a job's outputs; returns the file path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = d / name
    out.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return out
