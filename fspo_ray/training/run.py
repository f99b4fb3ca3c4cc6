"""The train job's driver: run the configured stages in order on Ray Train + DeepSpeed.

Each stage: prepare episode shards (reference log-probs included) with Ray Data, fit a
TorchTrainer, export a Hugging Face directory to <output_dir>/models/<stage>. A stage whose
export exists is skipped, and a stage interrupted mid-way resumes from its last checkpoint
(same RunConfig name and storage path), so rerunning the same command resumes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from fspo_ray.config import RunConfig, StageConfig
from fspo_ray.errors import FspoError
from fspo_ray.training.loop import LoopSpec, train_loop_per_worker
from fspo_ray.training.prepare import (
    episode_records,
    load_users,
    prepare_stage_epochs,
    sample_episodes,
    scored_dataset,
    stage_shots,
)

logger = logging.getLogger(__name__)


def pref_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "prefs"


def stage_model_dir(cfg: RunConfig, name: str) -> Path:
    return Path(cfg.output_dir) / "models" / name


def resolve_model(cfg: RunConfig, ref: str) -> str:
    return cfg.model.name_or_path if ref == "model" else str(stage_model_dir(cfg, ref))


def is_exported(path: str | Path) -> bool:
    p = Path(path)
    return (p / "fspo_stage.json").is_file() and (p / "model.safetensors").is_file()


def check_inputs(cfg: RunConfig) -> None:
    """Everything that can fail before a worker starts: data, models, the token budget."""
    from fspo_ray.data import read_preferences
    from fspo_ray.episodes import check_shot_counts
    from fspo_ray.modeling import ModelLoadError

    prefs = pref_dir(cfg)
    table = read_preferences(prefs, splits=["train"])
    if table.num_rows == 0:
        raise FspoError(f"{prefs}: no rows with split=train to train on")
    counts: dict[str, int] = {}
    for u in table.column("user_id").to_pylist():
        counts[u] = counts.get(u, 0) + 1
    stages = selected_stages(cfg)
    produced = {s.name for s in cfg.train.stages}
    for st in stages:
        n = stage_shots(cfg, st)
        check_shot_counts(counts, n, min(cfg.episodes.min_shots, n))
        for ref in {st.init_from, st.reference or st.init_from}:
            if ref == "model":
                path = Path(cfg.model.name_or_path)
                if path.exists() and not any((path / f).exists() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
                    raise ModelLoadError(f"model.name_or_path {path} has no weights (model.safetensors)")
                if not path.exists() and cfg.model.name_or_path.startswith(("/", ".", "runs")):
                    raise ModelLoadError(f"model.name_or_path {path} does not exist; run `python -m jobs.build_model` first")
            elif ref not in produced:
                raise FspoError(f"stage {st.name}: {ref!r} is not a stage of this run")
    _check_budget(cfg, table, stages)


def _check_budget(cfg: RunConfig, table, stages: list[StageConfig]) -> None:
    """Fail early when even min_shots shots of typical size cannot fit episodes.max_length."""
    from fspo_ray.episodes import Preference, render_completion, render_prompt

    rows = table.slice(0, min(64, table.num_rows)).to_pylist()
    prefs = [Preference(r["question"], r["chosen"], r["rejected"]) for r in rows]
    chars_per_token = 4.0  # conservative for byte-level BPE on English; the exact check runs per episode
    for st in stages:
        n = min(cfg.episodes.min_shots, stage_shots(cfg, st))
        shots = prefs[: n]
        longest = max(len(render_completion(p.chosen, "")) for p in prefs)
        text = render_prompt(shots, prefs[0].question)
        est = (len(text) + longest) / chars_per_token
        if est > cfg.episodes.max_length:
            raise FspoError(
                f"episodes.max_length={cfg.episodes.max_length} cannot fit stage {st.name!r} with even "
                f"min_shots={n} shots (about {int(est)} tokens needed); raise max_length or lower min_shots"
            )


def selected_stages(cfg: RunConfig) -> list[StageConfig]:
    return [s for s in cfg.train.stages if cfg.train.only is None or s.name in cfg.train.only]


def loop_spec(cfg: RunConfig, st: StageConfig, shards: list[Path], stage_dir: Path, fail_at_step: int | None) -> LoopSpec:
    t = cfg.train
    return LoopSpec(
        stage=st.name, kind=st.kind, init_path=resolve_model(cfg, st.init_from),
        export_dir=str(stage_model_dir(cfg, st.name)), stage_dir=str(stage_dir), shards=[str(s) for s in shards],
        micro_batch=t.micro_batch_size, accum=t.grad_accum_steps, zero_stage=t.zero_stage, use_gpu=t.use_gpu,
        dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation, forward=t.forward,
        lr=st.lr, optimizer=st.optimizer, weight_decay=st.weight_decay, warmup_steps=st.warmup_steps,
        grad_clip=st.grad_clip, loss_type=st.loss_type or cfg.loss.loss_type, beta=st.beta or cfg.loss.beta,
        label_smoothing=cfg.loss.label_smoothing if (st.loss_type or cfg.loss.loss_type) == "dpo" else 0.0,
        gradient_checkpointing=t.gradient_checkpointing, lora_rank=t.lora_rank, lora_alpha=t.lora_alpha,
        checkpoint_every=t.checkpoint_every, seed=cfg.seed, tensorboard=t.tensorboard, mlflow=t.mlflow,
        wandb=t.wandb, fail_at_step=fail_at_step,
    )


def fit_stage(cfg: RunConfig, st: StageConfig, *, fail_at_step: int | None = None) -> Path:
    """Prepare shards and fit one stage; returns the exported model directory."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    export = stage_model_dir(cfg, st.name)
    if is_exported(export):
        logger.info("stage %s: already exported at %s, skipping", st.name, export)
        return export
    stage_dir = Path(cfg.output_dir).resolve() / "train" / st.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    init = resolve_model(cfg, st.init_from)
    is_pref = st.kind in ("preference", "describe_preference")
    reference = resolve_model(cfg, st.reference or st.init_from) if is_pref else None
    print(f"[train] stage {st.name} ({st.kind}): init {init}" + (f", reference {reference}" if reference else ""), flush=True)
    shards = prepare_stage_epochs(cfg, st, pref_dir(cfg), init, reference, stage_dir)
    spec = loop_spec(cfg, st, shards, stage_dir, fail_at_step)
    resources = {"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(spec),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=TrainRunConfig(
            name=f"{cfg.run_name}-{st.name}",
            storage_path=str(Path(cfg.output_dir).resolve() / "ray_train"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray Train raises after max_failures restarts; keep the worker's own words
        lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith(" ")]
        raise FspoError(
            f"stage {st.name}: training failed after {t.max_failures} restart(s): {lines[-1] if lines else e!r}. "
            f"Worker logs: ray logs / {stage_dir}. Rerun the same command to resume from the last checkpoint."
        ) from None
    diverged = stage_dir / "diverged.json"
    if diverged.exists():
        info = json.loads(diverged.read_text())
        last = result.checkpoint.path if result.checkpoint else "none"
        raise FspoError(
            f"stage {st.name}: loss became {info['loss']} at step {info['step']}; stopped. Last good checkpoint "
            f"(step {info['last_good_step']}): {last}. Lower the learning rate or check the data."
        )
    if not is_exported(export):
        raise FspoError(f"stage {st.name}: training ended without exporting {export}; see the Ray Train logs")
    return export


def eval_episodes(cfg: RunConfig, st: StageConfig) -> dict[str, list]:
    """The held-out episodes a preference stage is scored on, per split (fixed: epoch 10,000)."""
    out = {}
    for split in ("train", "held_out", "interpolated"):
        users = load_users(pref_dir(cfg), split, max_users=cfg.train.eval_users_per_split)
        if users.prefs:
            out[split] = sample_episodes(cfg, st.model_copy(update={"kind": "preference"}), users, epoch=10_000)
    return out


def reward_accuracy_eval(cfg: RunConfig, st: StageConfig, episodes: dict[str, list]) -> dict[str, float]:
    """Implicit-reward accuracy on held-out pairs per split: does the trained policy, given the
    user's shots, rank the held-out pair as the user did (beta * log-ratio vs the reference)?"""
    policy = str(stage_model_dir(cfg, st.name))
    reference = resolve_model(cfg, st.reference or st.init_from)
    records: list[dict] = []
    for split, split_episodes in episodes.items():
        records.extend(episode_records(split_episodes, split))
    for i, r in enumerate(records):
        r["index"] = i
    rows = scored_dataset(records, cfg, st, policy, {"ref_": reference, "pi_": policy}).take_all()
    correct: dict[str, float] = {}
    count: dict[str, int] = {}
    for r in rows:
        h = (r["pi_chosen_logps"] - r["ref_chosen_logps"]) - (r["pi_rejected_logps"] - r["ref_rejected_logps"])
        correct[r["split"]] = correct.get(r["split"], 0.0) + (1.0 if h > 0 else 0.5 if h == 0 else 0.0)
        count[r["split"]] = count.get(r["split"], 0) + 1
    return {split: correct[split] / count[split] for split in count}


def reference_accuracies(cfg: RunConfig, episodes: dict[str, list]) -> dict[str, dict[str, float]]:
    """For world data: the shot-reader ceiling and the no-context population prior on the same
    held-out episodes as `reward_accuracy_eval` (see fspo_ray/world/reference.py)."""
    from fspo_ray.world.reference import population_prior_accuracy, shot_reader_accuracy

    train = load_users(pref_dir(cfg), "train")
    out: dict[str, dict[str, float]] = {"shot_reader": {}, "population_prior": {}}
    for split, split_episodes in episodes.items():
        out["shot_reader"][split] = shot_reader_accuracy(split_episodes)
        out["population_prior"][split] = population_prior_accuracy(train.prefs, split_episodes)
    return out


def run_training(cfg: RunConfig, *, fail_at_step: dict[str, int] | None = None) -> dict:
    """Run every selected stage; write eval_metrics.json with reward accuracy per split."""
    check_inputs(cfg)
    results: dict[str, dict] = {}
    for st in selected_stages(cfg):
        fit_stage(cfg, st, fail_at_step=(fail_at_step or {}).get(st.name))
        if st.kind == "preference":  # describe stages are scored by the evaluation's description quality
            episodes = eval_episodes(cfg, st)
            acc = reward_accuracy_eval(cfg, st, episodes)
            results[st.name] = {"reward_accuracy": acc}
            if cfg.generate.provider == "world":
                results[st.name]["reference"] = reference_accuracies(cfg, episodes)
            (Path(cfg.output_dir) / "train" / st.name / "eval_metrics.json").write_text(
                json.dumps(results[st.name], indent=2))
            print(f"[train] stage {st.name}: reward accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
            if "reference" in results[st.name]:
                ref = results[st.name]["reference"]
                print(f"[train] stage {st.name}: reference (same pairs): shot reader "
                      + ", ".join(f"{k} {v:.3f}" for k, v in ref["shot_reader"].items())
                      + "; no-context prior " + ", ".join(f"{k} {v:.3f}" for k, v in ref["population_prior"].items()),
                      flush=True)
    summary_path = Path(cfg.output_dir) / "eval_metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"stages": {}}
    summary["stages"].update(results)
    main = "fspo" if "fspo" in summary["stages"] else next(iter(summary["stages"]), None)
    if main is not None:
        summary["reward_accuracy"] = summary["stages"][main]["reward_accuracy"]
        summary["reward_accuracy_stage"] = main
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary
