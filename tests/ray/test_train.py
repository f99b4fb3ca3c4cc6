"""Ray Train + DeepSpeed on CPU with 2 workers: every stage in one worker group, learning,
ZeRO-2/3 export, the learning curve, real kills and resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from fspo_ray.errors import FspoError
from fspo_ray.modeling import build_tiny_from_config
from tests.ray.helpers import FSPO_STAGE, tiny_train_cfg
from tests.world_fixtures import write_world_prefs

SFT_STAGE = {"name": "sft", "kind": "sft", "lr": 3e-3, "warmup_steps": 1, "optimizer": "adamw", "epochs": 3}


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


def _metrics(out: Path, stage: str = "fspo") -> list[dict]:
    return [json.loads(line) for line in (out / "train" / stage / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path, stage: str = "fspo") -> tuple[dict[int, float], list[int]]:
    steps = _metrics(out, stage)
    return {m["step"]: m["loss"] for m in steps}, [m["step"] for m in steps]


def test_stages_in_one_worker_group_learn_export_and_score(base, tmp_path):
    from transformers import AutoModelForCausalLM

    from fspo_ray.training.run import run_training

    out = _run_dir(base, tmp_path, "learn")
    cfg = _cfg(out, zero_stage=3, curve_every=3, stages=[
        SFT_STAGE, {**FSPO_STAGE, "init_from": "sft"},
    ])
    summary = run_training(cfg)
    sft_losses, _ = _losses(out, "sft")
    assert sft_losses[max(sft_losses)] < sft_losses[1] - 0.2  # SFT loss goes down
    for m in _metrics(out):  # the metrics, every step
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
    contract = json.loads((out / "models" / "fspo" / "fspo_prompt.json").read_text())
    assert contract["num_shots"] == 2 and contract["template"] == "markdown" and contract["queries_per_episode"] == 2
    assert set(summary["reward_accuracy"]) == {"train", "held_out", "interpolated"}
    assert all(0.0 <= v <= 1.0 for v in summary["reward_accuracy"].values())
    assert summary["reward_accuracy"]["train"] > 0.5  # it fits its own training users
    fspo = summary["stages"]["fspo"]
    assert set(fspo["held_out_by_shots"]) == {"0", "2"}  # the N sweep on held-out users
    assert fspo["reference"]["shot_reader"]["held_out"] > 0.5  # the world's predictors on the same pairs
    curve = [json.loads(line) for line in (out / "train" / "fspo" / "curve.jsonl").read_text().splitlines()]
    steps = [p["step"] for p in curve]
    assert steps[0] == 0 and steps == sorted(steps) and steps[-1] == len(_metrics(out))
    assert (out / "plots" / "learning_curve.png").stat().st_size > 1000
    timing = summary["timing"]
    assert 0.0 < timing["optimizer_share"] < 1.0 and set(timing["stages"]) == {"sft", "fspo"}


def test_killed_worker_resumes_with_identical_losses_and_skips_finished_stages(base, tmp_path):
    from fspo_ray.training.run import run_training

    stages = [SFT_STAGE, {**FSPO_STAGE, "init_from": "sft"}]
    ref = _run_dir(base, tmp_path, "ref")
    run_training(_cfg(ref, stages=stages))
    ref_losses, ref_steps = _losses(ref)

    killed = _run_dir(base, tmp_path, "killed")
    # SIGKILL the last rank after fspo's step 5 (last checkpoint at 4): the restarted group skips
    # the exported sft stage and resumes fspo from step 4.
    run_training(_cfg(killed, stages=stages), fail_at={"stage": "fspo", "step": 5})
    assert (killed / "train" / "fspo" / "killed_once").read_text() == "5"
    losses, steps = _losses(killed)
    assert steps == list(range(1, len(ref_steps) + 1))  # contiguous, step 5 replayed once
    assert len(steps) >= 6
    for s in steps:
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-5, abs=1e-6), s
    assert _losses(killed, "sft")[1] == _losses(ref, "sft")[1]  # sft trained once, not again after the kill


def test_resume_exactly_at_epoch_boundary_by_rerunning(base, tmp_path):
    from fspo_ray.data import load_users
    from fspo_ray.modeling import load_tokenizer
    from fspo_ray.training.batches import encode_examples, stage_episodes
    from fspo_ray.training.plan import make_plan
    from fspo_ray.training.run import run_training

    out = _run_dir(base, tmp_path, "boundary")
    cfg = _cfg(out, max_failures=0)
    plan = make_plan(cfg)
    st = plan.stages[0]
    examples, _ = encode_examples(stage_episodes(load_users(out / "prefs", "train"), st, plan, 0),
                                  load_tokenizer(str(out / "models" / "tiny")), st, plan)
    per_epoch = len(examples) // cfg.train.global_batch_size
    cfg = _cfg(out, max_failures=0, checkpoint_every=per_epoch)
    with pytest.raises(FspoError, match="training failed after 0 restart"):
        run_training(cfg, fail_at={"stage": "fspo", "step": per_epoch})  # killed right after the epoch-0 checkpoint
    _, steps = _losses(out)
    assert steps == list(range(1, per_epoch + 1))
    run_training(cfg)  # the same command again: resumes at the boundary
    _, steps = _losses(out)
    assert steps == list(range(1, 2 * per_epoch + 1))  # the whole second epoch trained, nothing twice
    assert (out / "models" / "fspo" / "model.safetensors").is_file()
