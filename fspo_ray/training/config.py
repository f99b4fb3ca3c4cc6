"""The training sections of the run config: the policy model, the preference loss, the stages.

What a stage resolves to (its shots, batch, loss and beta after defaults) is decided in one
place, `training/plan.py`; these schemas only check values and how stages refer to each other.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from fspo_ray.sections import ConfigError, Section

# train.<field> -> the package its metric sink imports in the worker, and how to install it.
METRIC_SINKS = {"tensorboard": ("tensorboard", "pip install 'fspo-ray[report]'"),
                "mlflow": ("mlflow", "pip install mlflow"), "wandb": ("wandb", "pip install wandb")}


# The attention implementations the tree forward can mask (fspo_ray.forward.MASKED_ATTENTION; not imported
# here, so the config loads without torch; a unit test keeps the two equal).
TrainAttention = Literal["sdpa", "eager", "flex_attention"]
TRAIN_ATTENTION = get_args(TrainAttention)


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
    attn_implementation: TrainAttention = Field(
        "sdpa", description="Attention kernel passed to transformers: one that takes the tree forward's 4D mask "
        "(fspo_ray.forward.MASKED_ATTENTION); flash_attention_2 does not (the engines' attn_implementation may use it).",
    )

    @field_validator("attn_implementation", mode="before")
    @classmethod
    def _masked_attention(cls, value):
        if value == "flash_attention_2":
            raise ValueError(
                "flash_attention_2 cannot train here: the tree and shared-prefix forwards need a 4D attention mask, "
                f"which it does not take; expected one of {TRAIN_ATTENTION}"
            )
        return value


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
    tensorboard: bool = Field(
        True, description="Write TensorBoard events (needs the tensorboard package: the report extra); the train "
        "job stops before any worker starts when it is on and missing."
    )
    mlflow: bool = Field(False, description="Log to MLflow (needs mlflow; MLFLOW_TRACKING_URI applies).")
    wandb: bool = Field(False, description="Log to Weights & Biases (needs wandb).")

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


def check_metric_sinks(train: TrainConfig) -> None:
    """A metric sink that is on must be importable: the worker imports it without a fallback, so a
    missing package fails here, before any worker starts, with the package named."""
    import importlib.util

    for name, (package, install) in METRIC_SINKS.items():
        if getattr(train, name) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.{name} is on but the {package} package is not installed: {install}, "
                              f"or set train.{name}=false")
