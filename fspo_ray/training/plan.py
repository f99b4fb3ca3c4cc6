"""What a train job will do, resolved on the driver before any worker starts: one plain-data
plan for the whole run (every stage's paths, shots, loss and optimizer settings), which
travels to the Ray Train workers as a dict. Pure Python: no Ray, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fspo_ray.layout import RunLayout
from fspo_ray.losses import PREFERENCE_KINDS
from fspo_ray.training.config import StageConfig

if TYPE_CHECKING:  # the run config composes this package's section: a type, not an import at run time
    from fspo_ray.config import RunConfig


@dataclass
class StagePlan:
    """One stage, fully resolved."""

    name: str
    kind: str  # base_sft | sft | preference | describe_sft | describe_preference
    init_path: str  # the model the stage starts from (an earlier stage's export or model.name_or_path)
    reference_path: str | None  # preference kinds: the frozen reference (None: no reference)
    export_dir: str
    stage_dir: str
    num_shots: int
    min_shots: int
    queries: int  # held-out pairs per episode scored against one encoded prefix
    micro_batch: int  # episodes per forward/backward on one worker
    accum: int  # micro-batches per optimizer step
    rat: bool
    task: str  # "answer" or "describe"
    epochs: int
    max_episodes: int | None
    lr: float
    optimizer: str
    weight_decay: float
    warmup_steps: int
    schedule: str
    min_lr_ratio: float
    grad_clip: float
    loss_type: str
    beta: float
    label_smoothing: float
    rpo_alpha: float
    num_samples: int
    sample_temperature: float
    max_description_tokens: int
    score: bool  # score reward accuracy on held-out pairs of each split after the stage
    curve_every: int  # preference stages: score held-out users every K steps (0: never)

    @property
    def is_preference(self) -> bool:
        return self.kind in PREFERENCE_KINDS


@dataclass
class RunPlan:
    """Everything the workers need, as plain data."""

    run_name: str
    pref_dir: str
    seed: int
    template: str
    signed_shots: bool
    max_length: int
    repeats_per_epoch: int
    zero_stage: int
    use_gpu: bool
    dtype: str
    attn_implementation: str
    gradient_checkpointing: bool
    lora_rank: int
    lora_alpha: int
    checkpoint_every: int
    eval_users_per_split: int
    embedder_path: str | None
    tensorboard: bool
    mlflow: bool
    wandb: bool
    stages: list[StagePlan] = field(default_factory=list)
    fail_at: dict | None = None  # test hook: {"stage": name, "step": k}: SIGKILL the last rank there, once

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunPlan:
        return cls(**{**d, "stages": [StagePlan(**s) for s in d["stages"]]})


def stage_shots(cfg: RunConfig, stage: StageConfig) -> int:
    if stage.kind == "base_sft":
        return 0
    return cfg.episodes.num_shots if stage.num_shots is None else stage.num_shots


def stage_min_shots(cfg: RunConfig, stage: StageConfig) -> int:
    """Fewest shots an episode of the stage may have (a user with fewer pairs uses what it has)."""
    return min(cfg.episodes.min_shots, stage_shots(cfg, stage))


def stage_queries(cfg: RunConfig, stage: StageConfig) -> int:
    """Queries per episode: the configured count where shots form a shared prefix; one pair per
    episode without shots (no prefix to share) and for the describe task (one description)."""
    if stage_shots(cfg, stage) == 0 or stage.kind.startswith("describe"):
        return 1
    return cfg.episodes.queries_per_episode


def selected_stages(cfg: RunConfig) -> list[StageConfig]:
    return [s for s in cfg.train.stages if cfg.train.only is None or s.name in cfg.train.only]


def stage_batch(cfg: RunConfig, stage: StageConfig) -> tuple[int, int]:
    """(micro-batch, accumulation steps) of a stage: its own sizes, else train's."""
    t = cfg.train
    micro = stage.micro_batch_size or t.micro_batch_size
    return micro, (stage.global_batch_size or t.global_batch_size) // (micro * t.num_workers)


def resolve_model(cfg: RunConfig, ref: str) -> str:
    return cfg.model.name_or_path if ref == "model" else str(cfg.layout.model(ref))


def make_plan(cfg: RunConfig, *, fail_at: dict | None = None, embedder_path: str | None = None) -> RunPlan:
    t, out = cfg.train, RunLayout(Path(cfg.output_dir).resolve())
    stages = []
    for st in selected_stages(cfg):
        n = stage_shots(cfg, st)
        loss_type = st.loss_type or cfg.loss.loss_type
        preference = st.kind in PREFERENCE_KINDS
        micro, accum = stage_batch(cfg, st)
        stages.append(StagePlan(
            name=st.name, kind=st.kind, init_path=resolve_model(cfg, st.init_from),
            reference_path=resolve_model(cfg, st.reference or st.init_from) if preference else None,
            export_dir=str(cfg.layout.model(st.name)), stage_dir=str(out.train(st.name)),
            num_shots=n, min_shots=stage_min_shots(cfg, st), queries=stage_queries(cfg, st), micro_batch=micro, accum=accum, rat=st.rat,
            task="describe" if st.kind.startswith("describe") else "answer", epochs=st.epochs,
            max_episodes=st.max_episodes, lr=st.lr, optimizer=st.optimizer, weight_decay=st.weight_decay,
            warmup_steps=st.warmup_steps, schedule=st.schedule, min_lr_ratio=st.min_lr_ratio, grad_clip=st.grad_clip, loss_type=loss_type,
            beta=st.beta or cfg.loss.beta, label_smoothing=cfg.loss.label_smoothing if loss_type == "dpo" else 0.0,
            rpo_alpha=cfg.loss.rpo_alpha if st.rpo_alpha is None else st.rpo_alpha,
            num_samples=st.num_samples, sample_temperature=st.sample_temperature,
            max_description_tokens=st.max_description_tokens,
            score=st.kind == "preference", curve_every=t.curve_every if st.kind == "preference" else 0,
        ))
    return RunPlan(
        run_name=cfg.run_name, pref_dir=str(out.prefs), seed=cfg.seed, template=cfg.episodes.template,
        signed_shots=cfg.episodes.signed_shots,
        max_length=cfg.episodes.max_length, repeats_per_epoch=cfg.episodes.repeats_per_epoch,
        zero_stage=t.zero_stage, use_gpu=t.use_gpu,
        dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
        gradient_checkpointing=t.gradient_checkpointing, lora_rank=t.lora_rank, lora_alpha=t.lora_alpha,
        checkpoint_every=t.checkpoint_every, eval_users_per_split=t.eval_users_per_split,
        embedder_path=embedder_path, tensorboard=t.tensorboard, mlflow=t.mlflow,
        wandb=t.wandb, stages=stages, fail_at=fail_at,
    )
