"""The train job's driver: every selected stage in one Ray Train run (one worker group).

Checks what can fail before a worker starts, resolves the run into a plan (training/plan.py),
fits one TorchTrainer whose workers run the stages in order (training/loop.py), then collects
what the workers wrote: per-stage reward accuracy, the world's reference predictors on the
same held-out pairs, the learning curve and where the time went. Rerunning the same command
(same run_name) resumes: finished stages are skipped, the stage in progress resumes from its
last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fspo_ray.engines.embedder import embedder_path
from fspo_ray.errors import FspoError
from fspo_ray.layout import looks_local
from fspo_ray.splits import SPLITS
from fspo_ray.training.config import check_metric_sinks
from fspo_ray.training.loop import is_exported, train_loop_per_worker
from fspo_ray.training.plan import (
    make_plan,
    resolve_model,
    selected_stages,
    stage_min_shots,
    stage_shots,
)

if TYPE_CHECKING:  # the run config composes this package's section: a type, not an import at run time
    from fspo_ray.config import RunConfig

logger = logging.getLogger(__name__)


def check_inputs(cfg: RunConfig) -> None:
    """Everything that can fail before a worker starts: data, models, the token budget, sinks."""
    from fspo_ray.data import read_preferences
    from fspo_ray.episodes import check_shot_counts
    from fspo_ray.modeling import ModelLoadError

    check_metric_sinks(cfg.train)
    prefs = cfg.layout.prefs
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
        check_shot_counts(counts, n, stage_min_shots(cfg, st))
        for ref in {st.init_from, st.reference or st.init_from}:
            if ref == "model":
                path = Path(cfg.model.name_or_path)
                if path.exists() and not any((path / f).exists() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
                    raise ModelLoadError(f"model.name_or_path {path} has no weights (model.safetensors)")
                if not path.exists() and looks_local(cfg.model.name_or_path):
                    raise ModelLoadError(f"model.name_or_path {path} does not exist; run `python -m jobs.build_model` first")
            elif ref not in produced:
                raise FspoError(f"stage {st.name}: {ref!r} is not a stage of this run")
            elif ref not in {s.name for s in stages} and not is_exported(resolve_model(cfg, ref)):
                raise FspoError(f"stage {st.name}: starts from {ref!r}, which is neither selected (train.only) nor exported")
    if any(st.kind == "describe_preference" for st in stages):
        embedder_path(cfg.embedder)  # fails with the fix named when the embedder is not installed
    _check_budget(cfg, table, stages)


def _check_budget(cfg: RunConfig, table, stages) -> None:
    """Fail early when even min_shots shots of typical size cannot fit episodes.max_length."""
    from fspo_ray.episodes import Preference, render_completion, render_prompt

    rows = table.slice(0, min(64, table.num_rows)).to_pylist()
    prefs = [Preference(r["question"], r["chosen"], r["rejected"]) for r in rows]
    # Conservative for byte-level BPE on English (the exact check runs per episode); a word
    # tokenizer (the compact world) spends about one token per word.
    chars_per_token = 4.0 if cfg.tiny_model.tokenizer == "bpe" or cfg.model.name_or_path != cfg.tiny_model.output else 5.0
    for st in stages:
        n = stage_min_shots(cfg, st)
        longest = max(len(render_completion(p.chosen, "")) for p in prefs)
        text = render_prompt(prefs[:n], prefs[0].question)
        est = (len(text) + longest) / chars_per_token
        if est > cfg.episodes.max_length:
            raise FspoError(
                f"episodes.max_length={cfg.episodes.max_length} cannot fit stage {st.name!r} with even "
                f"min_shots={n} shots (about {int(est)} tokens needed); raise max_length or lower min_shots"
            )


def _embedder(cfg: RunConfig) -> str | None:
    if not any(st.kind == "describe_preference" for st in selected_stages(cfg)):
        return None
    return embedder_path(cfg.embedder)


def fit(cfg: RunConfig, *, fail_at: dict | None = None) -> float:
    """One TorchTrainer over every selected stage; returns its wall time in seconds."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    plan = make_plan(cfg, fail_at=fail_at, embedder_path=_embedder(cfg))
    todo = [s.name for s in plan.stages if not is_exported(s.export_dir)]
    if not todo:
        logger.info("every selected stage is already exported; nothing to train")
        return 0.0
    _check_resume(cfg, plan)
    print(f"[train] stages {todo} in one worker group of {t.num_workers}", flush=True)
    resources = {"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=plan.to_dict(),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=TrainRunConfig(
            name=cfg.run_name,
            storage_path=str(cfg.layout.ray_train.resolve()),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
        ),
    )
    t0 = time.perf_counter()
    try:
        trainer.fit()
    except Exception as e:  # Ray Train raises after max_failures restarts; keep the worker's own words
        diverged = _diverged(plan)
        if diverged is not None:
            raise diverged from None
        lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith(" ")]
        raise FspoError(
            f"training failed after {t.max_failures} restart(s): {lines[-1] if lines else e!r}. Worker logs: "
            f"ray logs / {cfg.layout.root / 'train'}. Rerun the same command to resume from the last checkpoint."
        ) from None
    for s in plan.stages:
        if not is_exported(s.export_dir):
            raise FspoError(f"stage {s.name}: training ended without exporting {s.export_dir}; see the Ray Train logs")
    return time.perf_counter() - t0


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The run's newest Ray Train checkpoint directory (what Ray Train resumes), or None. Ray names
    them `checkpoint_<UTC time>`, so their names sort by time; Train v2's
    `checkpoint_manager_snapshot.json` lives beside them and is not one."""
    return max((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), default=None)


def _check_resume(cfg: RunConfig, plan) -> None:
    """The newest checkpoint of the run is the one Ray Train resumes. One saved by another number
    of workers goes through a universal checkpoint (training/elastic.py); where that cannot work,
    fail here, before any worker starts."""
    from fspo_ray.training.elastic import ElasticResumeError, check_resumable, saved_zero_stage
    from fspo_ray.training.loop import CLIENT_STATE, checkpoint_state

    newest = newest_checkpoint(cfg.layout.ray_train.resolve() / cfg.run_name)
    if newest is None or not (newest / CLIENT_STATE).is_file():
        return
    state = checkpoint_state(newest)
    stage = next((s for s in plan.stages if s.name == state["stage"] and not is_exported(s.export_dir)), None)
    if stage is None:
        return
    saved = state["world_size"]
    try:
        check_resumable(saved, cfg.train.num_workers, saved_zero_stage=saved_zero_stage(newest / "ckpt"),
                        zero_stage=plan.zero_stage, optimizer=stage.optimizer)
    except ElasticResumeError as e:
        raise FspoError(f"stage {stage.name}: {e}") from None
    if saved != cfg.train.num_workers:
        logger.info("stage %s: resuming a checkpoint of %d worker(s) with %d (universal checkpoint)",
                    stage.name, saved, cfg.train.num_workers)


def _diverged(plan) -> FspoError | None:
    for s in plan.stages:
        path = Path(s.stage_dir) / "diverged.json"
        if path.exists():
            info = json.loads(path.read_text())
            return FspoError(
                f"stage {s.name}: loss became {info['loss']} at step {info['step']}; stopped. Last good checkpoint: "
                f"step {info['last_good_step']} (rerun resumes there). Lower the learning rate or check the data."
            )
    return None


def reference_accuracies(cfg: RunConfig, stage) -> dict:
    """The world's shot reader and no-context prior on the very held-out episodes a stage was
    scored on (fspo_ray/world/reference.py): what the shots make knowable, and what they do not."""
    from dataclasses import replace

    from fspo_ray.data import load_users
    from fspo_ray.training.batches import eval_episodes
    from fspo_ray.training.loop import p_sweep
    from fspo_ray.world.reference import population_prior_accuracy, shot_reader_accuracy

    plan = make_plan(cfg)
    st = next(s for s in plan.stages if s.name == stage)
    train = load_users(cfg.layout.prefs, "train")
    out: dict = {"shot_reader": {}, "population_prior": {}, "shot_reader_by_shots": {}}
    for split in SPLITS:
        users = load_users(cfg.layout.prefs, split, max_users=cfg.train.eval_users_per_split)
        if not users.prefs:
            continue
        episodes = eval_episodes(users, st, plan)
        out["population_prior"][split] = population_prior_accuracy(train.prefs, episodes)
        if st.num_shots:
            out["shot_reader"][split] = shot_reader_accuracy(episodes)
        if split == "held_out":
            for n in p_sweep(plan, st):
                if n:
                    sw = replace(st, num_shots=n, min_shots=min(st.min_shots, n))
                    out["shot_reader_by_shots"][n] = shot_reader_accuracy(eval_episodes(users, sw, plan))
    return out


def collect(cfg: RunConfig, wall_s: float) -> dict:
    """Per-stage results the workers wrote, the reference predictors, timing; eval_metrics.json."""
    summary_path = cfg.layout.eval_metrics
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"stages": {}}
    timing: dict = {}
    for st in selected_stages(cfg):
        d = cfg.layout.train(st.name)
        if (d / "timing.json").exists():
            timing[st.name] = json.loads((d / "timing.json").read_text())
        if not (d / "eval_metrics.json").exists():
            continue
        result = json.loads((d / "eval_metrics.json").read_text())
        if cfg.generate.provider == "world":
            result["reference"] = reference_accuracies(cfg, st.name)
            (d / "eval_metrics.json").write_text(json.dumps(result, indent=2))
        summary["stages"][st.name] = result
        acc = result["reward_accuracy"]
        print(f"[train] stage {st.name}: reward accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
        if "reference" in result and result["reference"]["shot_reader"]:
            ref = result["reference"]
            print(f"[train] stage {st.name}: same pairs: shot reader "
                  + ", ".join(f"{k} {v:.3f}" for k, v in ref["shot_reader"].items())
                  + "; no-context prior " + ", ".join(f"{k} {v:.3f}" for k, v in ref["population_prior"].items()),
                  flush=True)
    if wall_s:
        steps = sum(t.get("steps_s", 0.0) for t in timing.values())
        summary["timing"] = {"train_wall_s": round(wall_s, 1), "optimizer_steps_s": round(steps, 1),
                             "optimizer_share": round(steps / wall_s, 3),
                             "stages": {k: {n: round(v, 2) for n, v in t.items()} for k, t in timing.items()}}
    main = "fspo" if "fspo" in summary["stages"] else next(iter(summary["stages"]), None)
    if main is not None:
        summary["reward_accuracy"] = summary["stages"][main]["reward_accuracy"]
        summary["reward_accuracy_stage"] = main
    summary_path.write_text(json.dumps(summary, indent=2))
    from fspo_ray.training.curves import plot_learning_curves

    plot_learning_curves(cfg, summary)
    return summary


def run_training(cfg: RunConfig, *, fail_at: dict | None = None) -> dict:
    """Run every selected stage in one worker group; write eval_metrics.json (reward accuracy per
    split and stage, the reference predictors, timing) and the learning-curve plot."""
    check_inputs(cfg)
    wall = fit(cfg, fail_at=fail_at)
    return collect(cfg, wall)
