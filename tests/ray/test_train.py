"""Ray Train + DeepSpeed on CPU with 2 workers: learning, ZeRO-2/3 export, real kills and resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from fspo_ray.errors import FspoError
from fspo_ray.modeling import build_tiny_from_config
from tests.ray.helpers import tiny_train_cfg
from tests.world_fixtures import write_world_prefs


def _cfg(out: Path, **train):
    return tiny_train_cfg(out, "t", **train)


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_cluster):
    """Prefs + tiny model built once; each test copies them into its own run directory."""
    root = tmp_path_factory.mktemp("train-base")
    cfg = _cfg(root)
    write_world_prefs(cfg)
    build_tiny_from_config(cfg)
    return root


def _run_dir(base: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(base / "prefs", out / "prefs")
    shutil.copytree(base / "models" / "tiny", out / "models" / "tiny")
    return out


def _losses(out: Path, stage: str = "fspo") -> dict[int, float]:
    lines = (out / "train" / stage / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines]
    return {m["step"]: m["loss"] for m in steps}, [m["step"] for m in steps]


def test_sft_then_fspo_learns_and_exports(base, tmp_path):
    from transformers import AutoModelForCausalLM

    from fspo_ray.training.run import run_training

    out = _run_dir(base, tmp_path, "learn")
    cfg = _cfg(out, zero_stage=3, stages=[
        {"name": "sft", "kind": "sft", "lr": 3e-3, "warmup_steps": 1, "optimizer": "adamw"},
        {"name": "fspo", "kind": "preference", "init_from": "sft", "lr": 3e-3, "warmup_steps": 1,
         "optimizer": "adamw", "epochs": 2, "beta": 0.1},
    ])
    summary = run_training(cfg)
    sft_losses, _ = _losses(out, "sft")
    assert sft_losses[max(sft_losses)] < sft_losses[1] - 0.2  # SFT loss goes down
    metrics = [json.loads(line) for line in (out / "train" / "fspo" / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:  # the metrics, every step
        for key in ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "lr", "pairs_per_s"):
            assert key in m, key
        # tokens/s counts every token the model runs (prompt included), more than the scored ones
        assert m["tokens_per_s"] > m["completion_tokens_per_s"] > 0
    # The exported ZeRO-3 model (consolidated from shards) loads with from_pretrained and differs
    # from its start in every parameter tensor.
    start = AutoModelForCausalLM.from_pretrained(out / "models" / "sft")
    end = AutoModelForCausalLM.from_pretrained(out / "models" / "fspo")
    changed = [n for (n, a), (_, b) in zip(start.named_parameters(), end.named_parameters(), strict=True)
               if not torch.equal(a, b)]
    assert len(changed) == len(list(start.parameters()))
    assert set(summary["reward_accuracy"]) == {"train", "held_out", "interpolated"}
    assert all(0.0 <= v <= 1.0 for v in summary["reward_accuracy"].values())
    assert summary["reward_accuracy"]["train"] > 0.5  # it fits its own training users


def test_killed_worker_resumes_with_identical_losses(base, tmp_path):
    from fspo_ray.training.run import fit_stage

    ref = _run_dir(base, tmp_path, "ref")
    cfg = _cfg(ref)
    fit_stage(cfg, cfg.train.stages[0])
    ref_losses, ref_steps = _losses(ref)

    killed = _run_dir(base, tmp_path, "killed")
    shutil.copytree(ref / "train" / "fspo" / "episodes", killed / "train" / "fspo" / "episodes")
    kcfg = _cfg(killed)
    fit_stage(kcfg, kcfg.train.stages[0], fail_at_step=5)  # SIGKILL rank 1 after step 5; last checkpoint at 4
    assert (killed / "train" / "fspo" / "killed_once").read_text() == "5"
    losses, steps = _losses(killed)
    assert steps == list(range(1, len(ref_steps) + 1))  # contiguous, step 5 replayed once
    assert len(steps) >= 6
    for s in steps:
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-5, abs=1e-6), s


def test_resume_exactly_at_epoch_boundary_by_rerunning(base, tmp_path):
    from fspo_ray.training.run import fit_stage

    out = _run_dir(base, tmp_path, "boundary")
    cfg = _cfg(out, max_failures=0)
    from fspo_ray.training.prepare import prepare_stage_epochs, read_rank_batches

    st = cfg.train.stages[0]
    shards = prepare_stage_epochs(cfg, st, out / "prefs", str(out / "models" / "tiny"), str(out / "models" / "tiny"),
                                  out / "train" / "fspo")
    per_epoch = len(read_rank_batches(shards[0], rank=0, world_size=2, micro_batch=2, accum=2))
    cfg = _cfg(out, max_failures=0, checkpoint_every=per_epoch)
    with pytest.raises(FspoError, match="training failed after 0 restart"):
        fit_stage(cfg, cfg.train.stages[0], fail_at_step=per_epoch)  # killed right after the epoch-0 checkpoint
    _, steps = _losses(out)
    assert steps == list(range(1, per_epoch + 1))
    fit_stage(cfg, cfg.train.stages[0])  # the same command again: resumes at the boundary
    _, steps = _losses(out)
    assert steps == list(range(1, 2 * per_epoch + 1))  # the whole second epoch trained, nothing twice
    assert (out / "models" / "fspo" / "model.safetensors").is_file()
