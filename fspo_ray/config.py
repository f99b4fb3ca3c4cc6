"""The one config schema for every fspo-ray job, and its YAML + `key.sub=value` loader.

Every field has a description; cross-field checks live in `model_validator`s, so a bad
config fails at submit time, before any Ray worker starts, with the field named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fspo_ray.errors import FspoError
from fspo_ray.evaluation.config import EvaluateConfig
from fspo_ray.generation.config import GenerateConfig


class ConfigError(FspoError):
    """A config that cannot run; the message names the field and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(Section):
    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001', ...). Unset: join the cluster "
        "named by RAY_ADDRESS (as under `ray job submit`), else start a local one.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started Ray (unset: all cores).")
    object_store_memory_mb: int | None = Field(
        None, ge=64, description="Object store size for a locally started Ray, in MB (unset: Ray's default)."
    )
    log_to_driver: bool = Field(True, description="Stream worker logs to the driver (and so to `ray job logs`).")


class WorldConfig(Section):
    """The simulated user world: the embedded default environment (see DESIGN.md)."""

    seed: int = Field(0, description="World seed: personas, questions and splits all derive from it.")
    users_train: int = Field(400, ge=0, description="Number of trained users.")
    users_held_out: int = Field(100, ge=0, description="Number of held-out users (same distribution as train).")
    users_interpolated: int = Field(
        100, ge=0, description="Number of interpolated users (axis-value combinations never seen in training)."
    )
    prefs_per_user: int = Field(24, ge=2, description="Preference pairs generated per user.")
    min_axes_per_persona: int = Field(4, ge=1, description="Fewest axes a persona sets.")
    max_axes_per_persona: int = Field(6, ge=1, description="Most axes a persona sets.")
    questions_per_domain: int = Field(120, ge=1, description="Distinct questions per domain.")
    domains: list[Literal["roleplay", "elix", "reviews"]] = Field(
        default_factory=lambda: ["roleplay", "elix", "reviews"], description="Domains to generate."
    )
    judge_position_bias: float = Field(
        0.1, ge=0.0, le=1.0, description="Probability the world judge answers 'A' regardless of content."
    )
    judge_noise: float = Field(0.05, ge=0.0, le=1.0, description="Probability the world judge answers at random.")
    low_spread: float = Field(
        0.3,
        ge=0.0,
        description="Sampling spread of views around a question's mode for plain_low_temp and persona "
        "steering (the world's analogue of a low temperature; 0 = always the mode).",
    )
    high_spread: float = Field(
        3.0, ge=0.0, description="Sampling spread of views for plain_high_temp (a high temperature)."
    )
    rendering: Literal["text", "compact"] = Field(
        "text",
        description="How rows render the world: 'text' (sentences with phrase fragments; what LLMs and the "
        "real-model path see) or 'compact' (axis-then-value words, e.g. 'length: concise, tone: formal'; what a "
        "tiny model trained from scratch learns FSPO's skill from in minutes). Same users, pairs and labels.",
    )

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        if self.min_axes_per_persona > self.max_axes_per_persona:
            raise ValueError(
                f"min_axes_per_persona ({self.min_axes_per_persona}) must be <= "
                f"max_axes_per_persona ({self.max_axes_per_persona})"
            )
        if not self.domains:
            raise ValueError("domains must name at least one of roleplay, elix, reviews")
        if self.low_spread > self.high_spread:
            raise ValueError(f"low_spread ({self.low_spread}) must be <= high_spread ({self.high_spread})")
        return self


class ModelConfig(Section):
    """The policy model every stage loads: a directory made by build_model, or a hub id/path."""

    name_or_path: str = Field(
        "{output_dir}/models/tiny",
        description="A local Hugging Face directory or a hub id (e.g. meta-llama/Llama-3.2-3B-Instruct). "
        "'{output_dir}' is replaced by the run's output_dir.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: 'auto' is bfloat16 on GPU and float32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off by default).")


class TinyModelConfig(Section):
    """Sizes of the tiny Llama-shaped model and tokenizer that build_model trains offline."""

    output: str = Field("{output_dir}/models/tiny", description="Where build_model saves the model and tokenizer.")
    corpus_files: list[str] = Field(
        default_factory=list,
        description="Text files (one sentence a line) to train the tokenizer on; empty: the world's text.",
    )
    corpus_sentences: int = Field(20000, ge=100, description="Sentences of world text when corpus_files is empty.")
    tokenizer: Literal["bpe", "words"] = Field(
        "bpe",
        description="'bpe': byte-level BPE trained on the corpus (any text); 'words': one token per word of the "
        "world's compact rendering and per header of the prompt template (world.rendering=compact).",
    )
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary size (byte-level; >= 256 + special tokens).")
    hidden_size: int = Field(256, ge=8, description="Model width.")
    intermediate_size: int = Field(688, ge=8, description="MLP width.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(4, ge=1, description="Key/value heads (grouped-query attention when < num_heads).")
    max_position_embeddings: int = Field(2048, ge=64, description="Longest sequence the model supports.")
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings.")
    initializer_range: float = Field(
        0.02, gt=0.0, description="Std of the random initial weights (Llama's default 0.02; the compact world uses 0.1, "
        "which leaves attention less uniform at the start and shortens the plateau before in-context reading)."
    )

    @model_validator(mode="after")
    def _check(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self


class EpisodeConfig(Section):
    """How a user becomes a task: N few-shot preferences in the prompt plus one held-out pair."""

    num_shots: int = Field(8, ge=0, description="Few-shot preferences in the prompt (N). 0 = no user context.")
    min_shots: int = Field(
        2, ge=0, description="Users with fewer than N+1 preferences use what they have, down to this many shots."
    )
    repeats_per_epoch: int = Field(
        1, ge=1, description="Episodes per held-out pair per epoch, each with freshly sampled shots."
    )
    max_length: int = Field(
        1024, ge=16, description="Token budget per sequence; whole oldest shots are dropped first to fit."
    )
    template: Literal["markdown", "chat"] = Field(
        "markdown", description="'markdown': the official FSPO template; 'chat': the tokenizer's chat template."
    )
    signed_shots: bool = Field(
        False, description="Mark every word of a shot's preferred response with '+' and of its dispreferred one with "
        "'-' (sign tokens): how a small model trained from scratch tells the sides apart from the tokens themselves. "
        "Off in the official template; the compact world turns it on."
    )
    queries_per_episode: int = Field(
        1, ge=1, description="Held-out pairs scored against one encoded support set (the N shots): 1 is the official "
        "episode; Q > 1 encodes the shots once for Q pairs of the same user (same objective, fewer prompt tokens)."
    )

    @model_validator(mode="after")
    def _check(self) -> EpisodeConfig:
        if self.min_shots > self.num_shots:
            raise ValueError(f"min_shots ({self.min_shots}) must be <= num_shots ({self.num_shots})")
        return self


class LossConfig(Section):
    loss_type: Literal["ipo", "dpo"] = Field("ipo", description="Preference loss on the held-out pair.")
    beta: float = Field(0.01, gt=0.0, description="KL strength (official FSPO recipe: 0.01).")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="cDPO label smoothing (dpo only): assumed label-flip probability."
    )
    rpo_alpha: float = Field(
        0.0, ge=0.0, description="Weight of the chosen completion's mean token NLL added to the preference loss "
        "(RPO, arXiv 2404.19733; TRL's rpo_alpha). 0: plain DPO/IPO as in the official recipe."
    )

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if self.loss_type != "dpo" and self.label_smoothing:
            raise ValueError(f"label_smoothing applies to loss_type 'dpo' only, not {self.loss_type!r}")
        return self


class StageConfig(Section):
    """One training stage; its output directory is the next stage's start."""

    name: str = Field(..., min_length=1, description="Stage name; its model lands in <output_dir>/models/<name>.")
    kind: Literal["base_sft", "sft", "preference", "describe_sft", "describe_preference"] = Field(
        ...,
        description="'base_sft': responses without user context; 'sft': Pref-FT, both completions under the "
        "few-shot prompt; 'preference': DPO/IPO on the held-out pair (FSPO, or a baseline with num_shots=0); "
        "'describe_sft': RAT stage 1, shots -> the gold user description; 'describe_preference': RAT stage 2, "
        "DPO/IPO between sampled descriptions closest and farthest (MiniLM) from the gold one.",
    )
    init_from: str = Field(
        "model", description="Stage whose output this stage starts from, or 'model' for model.name_or_path."
    )
    reference: str | None = Field(
        None, description="Preference stages: the reference model's stage (default: init_from, as in the recipe)."
    )
    num_shots: int | None = Field(
        None, ge=0, description="Shots per episode for this stage (unset: episodes.num_shots; 0: no user context)."
    )
    rat: bool = Field(False, description="Condition on the user description block (RAT answer model).")
    epochs: int = Field(1, ge=1, description="Passes over the episodes; episodes are resampled every epoch.")
    max_episodes: int | None = Field(
        None, ge=1, description="Episodes per epoch: the first of the epoch's shuffled episodes (unset: all; every "
        "pair of every training user held out once). Bounds costly stages, e.g. describe_preference's sampling.",
    )
    lr: float = Field(1e-6, gt=0.0, description="Peak learning rate (official FSPO recipe: 1e-6).")
    optimizer: Literal["rmsprop", "adamw"] = Field("rmsprop", description="Optimizer (official recipe: RMSprop).")
    weight_decay: float = Field(0.0, ge=0.0, description="Weight decay.")
    warmup_steps: int = Field(150, ge=0, description="Linear warmup steps, then the schedule (official recipe: 150).")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warmup: 'constant' (official recipe) or 'cosine' decay to min_lr_ratio x lr "
        "at the stage's last step (steadier end point for models trained from scratch)."
    )
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine: the final learning rate as a share of lr.")
    grad_clip: float = Field(10.0, gt=0.0, description="Gradient-norm clip (official recipe: 10).")
    num_samples: int = Field(4, ge=2, description="describe_preference: descriptions sampled per episode (K).")
    sample_temperature: float = Field(1.0, gt=0.0, description="describe_preference: sampling temperature.")
    max_description_tokens: int = Field(80, ge=8, description="describe_preference: longest sampled description.")
    global_batch_size: int | None = Field(
        None, ge=1, description="Episodes per optimizer step for this stage (unset: train.global_batch_size)."
    )
    micro_batch_size: int | None = Field(
        None, ge=1, description="Episodes per forward/backward on one worker for this stage (unset: train.micro_batch_size)."
    )
    loss_type: Literal["ipo", "dpo"] | None = Field(None, description="Preference loss (unset: loss.loss_type).")
    rpo_alpha: float | None = Field(
        None, ge=0.0, description="Preference kinds: weight of the chosen completion's NLL added to DPO/IPO (RPO; "
        "TRL's rpo_alpha; unset: loss.rpo_alpha)."
    )
    beta: float | None = Field(None, gt=0.0, description="Preference beta (unset: loss.beta).")


class TrainConfig(Section):
    """Ray Train + DeepSpeed ZeRO meta-training."""

    stages: list[StageConfig] = Field(
        default_factory=lambda: [
            StageConfig(name="sft", kind="sft"),
            StageConfig(name="fspo", kind="preference", init_from="sft"),
        ],
        description="Stages in order; each may start from an earlier one.",
    )
    only: list[str] | None = Field(None, description="Run only these stages (their inputs must already exist).")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker, bf16; else CPU with gloo and fp32.")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs each worker asks Ray for.")
    zero_stage: int = Field(2, description="DeepSpeed ZeRO stage: 2 or 3.")
    global_batch_size: int = Field(
        32, ge=1, description="Episodes per optimizer step over all workers; each scores up to "
        "episodes.queries_per_episode held-out pairs against its shots."
    )
    micro_batch_size: int = Field(4, ge=1, description="Episodes per forward/backward on one worker.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    lora_rank: int = Field(0, ge=0, description="LoRA rank through peft; 0 trains all weights.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    checkpoint_every: int = Field(50, ge=1, description="Save a DeepSpeed checkpoint and report it every K steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints Ray Train keeps per stage.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts Ray Train allows (FailureConfig).")
    eval_users_per_split: int = Field(
        100, ge=1, description="Users per split scored for reward accuracy after a preference stage (the first by id)."
    )
    curve_every: int = Field(
        0, ge=0, description="Preference stages: score held-out users' reward accuracy every K optimizer steps, "
        "for the learning curve (plots/learning_curve.png); 0 scores only at the end."
    )
    tensorboard: bool = Field(True, description="Write TensorBoard events (when tensorboard is installed).")
    mlflow: bool = Field(False, description="Log to MLflow (when installed; MLFLOW_TRACKING_URI applies).")
    wandb: bool = Field(False, description="Log to Weights & Biases (when installed).")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.zero_stage not in (2, 3):
            raise ValueError(f"zero_stage must be 2 or 3 (got {self.zero_stage})")
        for where, gbs, mbs in [("", self.global_batch_size, self.micro_batch_size)] + [
            (f"stages[{i}] ({s.name}).", s.global_batch_size or self.global_batch_size, s.micro_batch_size or self.micro_batch_size)
            for i, s in enumerate(self.stages) if s.global_batch_size or s.micro_batch_size
        ]:
            per_step = mbs * self.num_workers
            if gbs % per_step:
                raise ValueError(
                    f"{where}global_batch_size ({gbs}) must be a multiple of micro_batch_size x num_workers "
                    f"({mbs} x {self.num_workers} = {per_step})"
                )
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, st in enumerate(self.stages):
            earlier = names[:i]
            for field_name in ("init_from", "reference"):
                ref = getattr(st, field_name)
                if ref is not None and ref != "model" and ref not in earlier:
                    raise ValueError(
                        f"stages[{i}] ({st.name}).{field_name}={ref!r} must be 'model' or an earlier stage {earlier}"
                    )
            if st.kind not in ("preference", "describe_preference") and st.reference is not None:
                raise ValueError(f"stages[{i}] ({st.name}): reference applies to preference kinds only")
            if st.kind.startswith("describe") and st.rat:
                raise ValueError(f"stages[{i}] ({st.name}): rat applies to answer stages, not {st.kind!r}")
        if self.only is not None:
            unknown = [n for n in self.only if n not in names]
            if unknown:
                raise ValueError(f"only names unknown stage(s) {unknown}; stages are {names}")
        return self

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)

    def batch_of(self, stage: StageConfig) -> tuple[int, int]:
        """(micro-batch, accumulation steps) of a stage."""
        micro = stage.micro_batch_size or self.micro_batch_size
        return micro, (stage.global_batch_size or self.global_batch_size) // (micro * self.num_workers)


class RunConfig(Section):
    """A whole run: one YAML under jobs/configs/, overridable with key.sub=value."""

    run_name: str = Field("fspo-world", min_length=1, description="Run name; the same name resumes a run.")
    output_dir: str = Field("runs/{run_name}", description="Where every artifact of the run lands.")
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

    @model_validator(mode="after")
    def _resolve_paths(self) -> RunConfig:
        # Placeholders let one YAML serve many runs: output_dir may use {run_name}, paths {output_dir}.
        object.__setattr__(self, "output_dir", self.output_dir.format(run_name=self.run_name))
        for section, name in (("model", "name_or_path"), ("tiny_model", "output")):
            sec = getattr(self, section)
            object.__setattr__(sec, name, getattr(sec, name).replace("{output_dir}", self.output_dir))
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


# --------------------------------------------------------------------------- loading


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}; values parse as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            # Path placeholders ({output_dir}, {run_name}) would read as YAML flow mappings.
            placeholder = raw.startswith(("{output_dir}", "{run_name}"))
            value = raw if placeholder else yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return tree


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def format_validation_error(e: ValidationError) -> str:
    """A pydantic error as one line per field: `  train.zero_stage: <why> (got 4)`."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema; check spelling)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def build_config(data: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Dict (+ overrides) -> validated RunConfig, or ConfigError naming each bad field."""
    merged = _merge(data or {}, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `key.sub=value` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            available = sorted(str(c) for c in Path("jobs/configs").glob("*.yaml")) if Path("jobs/configs").is_dir() else []
            hint = f"; available: {', '.join(available)}" if available else ""
            raise ConfigError(f"config file not found: {p}{hint}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    return build_config(data, overrides)


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """The same config with its local paths made absolute against the driver's working directory.

    Ray workers (Train workers, Data actors) run in their own directories, so a relative
    `runs/x` would name a different place there. Hub ids (no such local path) stay as they are.
    """

    def local(p: str) -> str:
        q = Path(p).expanduser()
        if q.is_absolute():
            return str(q)
        if q.exists() or p.startswith(("./", "../", "runs/")) or p.startswith(cfg.output_dir):
            return str(q.absolute())
        return p

    out = cfg.model_copy(deep=True)
    object.__setattr__(out, "output_dir", str(Path(cfg.output_dir).expanduser().absolute()))
    object.__setattr__(out.model, "name_or_path", local(cfg.model.name_or_path))
    object.__setattr__(out.tiny_model, "output", local(cfg.tiny_model.output))
    return out


def save_resolved(cfg: RunConfig, directory: str | os.PathLike, name: str = "resolved_config.yaml") -> Path:
    """Write the fully resolved config next to a job's outputs; returns the file path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = d / name
    out.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return out
