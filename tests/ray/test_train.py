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


TWO_STAGES = [SFT_STAGE, {**FSPO_STAGE, "init_from": "sft"}]


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    """sft then fspo with 2 workers and no interruption: what the resumed runs are compared with
    (a step sees the same rows at any number of workers, so the losses agree up to rounding)."""
    from fspo_ray.training.run import run_training

    out = _run_dir(base, tmp_path_factory.mktemp("uninterrupted"), "ref")
    summary = run_training(_cfg(out, stages=TWO_STAGES))
    return out, summary


def test_killed_worker_resumes_with_identical_losses_and_skips_finished_stages(base, tmp_path, uninterrupted):
    from fspo_ray.training.run import run_training

    ref = uninterrupted[0]
    ref_losses, ref_steps = _losses(ref)

    killed = _run_dir(base, tmp_path, "killed")
    # SIGKILL the last rank after fspo's step 5 (last checkpoint at 4): the restarted group skips
    # the exported sft stage and resumes fspo from step 4.
    run_training(_cfg(killed, stages=TWO_STAGES), fail_at={"stage": "fspo", "step": 5})
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


# --------------------------------------------------------------------------- elastic resume

def _workers(out: Path) -> list[tuple]:
    """(world size, start step, world size of the checkpoint resumed) per start of the stage's group."""
    lines = (out / "train" / "fspo" / "workers.jsonl").read_text().splitlines()
    return [(w["world_size"], w["start_step"], w["checkpoint_world_size"]) for w in map(json.loads, lines)]


def _check_elastic(name: str, out: Path, uninterrupted) -> None:
    """Every fspo step's loss, the exported weights and the reward accuracy of the uninterrupted run;
    prints the figures docs/operators.md tabulates."""
    from safetensors.torch import load_file

    ref, ref_summary = uninterrupted
    ref_losses, ref_steps = _losses(ref)
    losses, steps = _losses(out)
    assert steps == ref_steps and len(steps) >= 6  # steps 6+ follow updates made with the converted optimizer state
    # Another number of workers sums the same gradients in another order: measured 2.6e-6 (2 -> 1) and
    # 7.6e-6 (1 -> 2) at most. Zeroed optimizer moments after the resume showed 5e-3 to 8e-2 from
    # the second step on (AdamW, RMSprop; measured with the DeepSpeed-only runs below).
    for s in steps:
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-4), s
    got, want = (load_file(d / "models" / "fspo" / "model.safetensors") for d in (out, ref))
    start = load_file(ref / "models" / "sft" / "model.safetensors")
    weight_diff = 0.0
    for key, w in want.items():
        # The same weights up to rounding, far closer than the training moved them.
        assert (got[key] - w).norm() <= 1e-4 * w.norm(), key
        assert (got[key] - w).norm() <= 1e-2 * (w - start[key]).norm(), key
        weight_diff = max(weight_diff, float((got[key] - w).norm() / w.norm()))
    summary = json.loads((out / "eval_metrics.json").read_text())
    assert summary["reward_accuracy"] == pytest.approx(ref_summary["reward_accuracy"], abs=1e-9)
    assert not list((out / "train" / "fspo").glob("universal-*"))  # the converted copy is removed once loaded
    timing = json.loads((out / "train" / "fspo" / "timing.json").read_text())
    (saved, _, _), (now, start_step, _) = _workers(out)
    print(f"\n[resilience] {name}: workers {saved} -> {now}, resumed at step {start_step}, steps redone "
          f"{5 - start_step}, universal conversion + load {timing['elastic_resume_s']:.2f} s, steps compared "
          f"{len(steps)}, max loss rel diff {max(abs(losses[s] / ref_losses[s] - 1) for s in steps):.1e}, max weight "
          f"rel diff {weight_diff:.1e}", flush=True)


def test_stage_checkpointed_by_two_workers_resumes_with_one(base, tmp_path, uninterrupted):
    """2 workers, killed after fspo's step 5 with no restart allowed; the same run again with 1 worker
    (the operator got one node back) skips sft, resumes fspo at the step-4 checkpoint through a
    universal checkpoint and ends where the uninterrupted 2-worker run ends."""
    from fspo_ray.training.run import run_training

    out = _run_dir(base, tmp_path, "two-then-one")
    with pytest.raises(FspoError, match="training failed after 0 restart"):
        run_training(_cfg(out, stages=TWO_STAGES, max_failures=0), fail_at={"stage": "fspo", "step": 5})
    run_training(_cfg(out, stages=TWO_STAGES, num_workers=1))
    assert _workers(out) == [(2, 0, None), (1, 4, 2)]
    _check_elastic("training resumed by fewer workers", out, uninterrupted)


def test_resume_that_cannot_change_the_worker_count_fails_before_any_worker_starts(base, tmp_path):
    """ZeRO-3 with RMSprop (gpu_llama3b.yaml's pair), newest checkpoint saved by 2 workers, the run
    now with 1: the driver names the fix before Ray Train starts a worker."""
    from fspo_ray.training.run import run_training

    out = _run_dir(base, tmp_path, "zero3-rmsprop")
    ckpt = out / "ray_train" / "t" / "checkpoint_2026-01-01_00-00-00.000000"
    (ckpt / "ckpt").mkdir(parents=True)
    (ckpt / "fspo_state.json").write_text(json.dumps({"stage": "fspo", "step": 2, "world_size": 2}))
    for rank in range(2):  # ZeRO-3's file names (the driver reads the saving stage from them)
        (ckpt / "ckpt" / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"")
    (ckpt.parent / "checkpoint_manager_snapshot.json").write_text("{}")  # Train v2's, beside the checkpoints
    cfg = _cfg(out, zero_stage=3, num_workers=1, stages=[{**FSPO_STAGE, "optimizer": "rmsprop"}])
    with pytest.raises(FspoError, match=r"stage fspo: the checkpoint was saved by 2 worker\(s\).*num_workers=2"):
        run_training(cfg)
    assert not (out / "train" / "fspo").exists()  # no worker ran


@pytest.mark.slow
def test_stage_checkpointed_by_one_worker_resumes_with_two(base, tmp_path, uninterrupted):
    """The other way: 1 worker killed after fspo's step 5, resumed by 2 (the operator added a node)."""
    from fspo_ray.training.run import run_training

    out = _run_dir(base, tmp_path, "one-then-two")
    with pytest.raises(FspoError, match="training failed after 0 restart"):
        run_training(_cfg(out, stages=TWO_STAGES, max_failures=0, num_workers=1), fail_at={"stage": "fspo", "step": 5})
    run_training(_cfg(out, stages=TWO_STAGES))
    assert _workers(out) == [(1, 0, None), (2, 4, 1)]
    _check_elastic("training resumed by more workers", out, uninterrupted)


# --------------------------------------------------------------------------- elastic resume: DeepSpeed alone


def _ds_rank(rank: int, world: int, port: int, optimizer: str, steps: tuple[int, int], load: str | None,
             universal: bool, save_after: int | None, save_dir: str | None, out: str, zero_stage: int) -> None:
    """One rank of a tiny ZeRO run on gloo (no Ray): global batches of 8 rows in micro-batches of 2,
    so a step sees the same rows at any world size (as training/batches.steps_of cuts them)."""
    import os

    import deepspeed
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = (torch.optim.RMSprop(model.parameters(), lr=1e-2) if optimizer == "rmsprop"
           else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    accum = 8 // (2 * world)
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": accum, "train_batch_size": 8,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": zero_stage, "overlap_comm": False,
                                                              "contiguous_gradients": True},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    if universal:
        config["checkpoint"] = {"load_universal": True}
    engine, _, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=config,
                                               dist_init_required=False)
    if load:
        engine.load_checkpoint(load, tag="ckpt")
    losses = []
    for step in range(*steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 8, generator=g), torch.randn(8, 3, generator=g)  # (8, 8), (8, 3)
        total = torch.zeros(1)
        for a in range(accum):
            rows = slice((a * world + rank) * 2, (a * world + rank + 1) * 2)
            loss = ((engine(x[rows]) - y[rows]) ** 2).mean()
            engine.backward(loss)
            engine.step()
            total += loss.detach()
        dist.all_reduce(total)
        losses.append(total.item() / (accum * world))
        if step + 1 == save_after:
            engine.save_checkpoint(save_dir, tag="ckpt")
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=zero_stage == 3):
        weights = {k: v.detach().clone() for k, v in engine.module.named_parameters()}
    if rank == 0:
        torch.save({"losses": losses, "weights": weights, "lr": sched.get_last_lr()}, out)
    dist.barrier()
    dist.destroy_process_group()


def _ds_run(tmp: Path, name: str, world: int, optimizer: str, steps: tuple[int, int], *, load: Path | None = None,
            universal: bool = False, save_after: int | None = None, zero_stage: int = 2) -> dict:
    import torch.multiprocessing as mp

    from tests.ray.helpers import free_port

    out = tmp / f"{name}.pt"
    mp.spawn(_ds_rank, nprocs=world, args=(world, free_port(), optimizer, steps, str(load) if load else None,
                                           universal, save_after, str(tmp / name), str(out), zero_stage))
    return torch.load(out)


def test_zero2_checkpoint_resumes_with_another_number_of_workers(tmp_path):
    """RMSprop (the recipe's optimizer, which DeepSpeed's own ds_to_universal cannot convert): 6 steps
    with 2 ranks, saved after step 3; resumed with 1 rank through training/elastic.py's universal
    checkpoint, saved after step 5; resumed with 2 ranks again. Every loss and the final weights
    equal the uninterrupted 2-rank run's (exactly here: these sums do not depend on the order)."""
    from fspo_ray.training.elastic import saved_world_size, saved_zero_stage, to_universal

    ref = _ds_run(tmp_path, "two", 2, "rmsprop", (0, 6), save_after=3)
    assert saved_world_size(tmp_path / "two" / "ckpt") == 2 and saved_zero_stage(tmp_path / "two" / "ckpt") == 2
    universal = to_universal(tmp_path / "two", "ckpt", tmp_path / "two-universal")
    # Each parameter whole: fp32 weights, RMSprop's square_avg and step (steps 4-6 depend on them).
    assert {p.name for p in (universal / "ckpt" / "zero" / "0.weight").iterdir()} == {"fp32.pt", "square_avg.pt", "step.pt"}
    one = _ds_run(tmp_path, "one", 1, "rmsprop", (3, 6), universal=True, save_after=5, load=universal)
    assert saved_world_size(tmp_path / "one" / "ckpt") == 1
    two = _ds_run(tmp_path, "two-again", 2, "rmsprop", (5, 6), universal=True,
                  load=to_universal(tmp_path / "one", "ckpt", tmp_path / "one-universal"))
    assert one["losses"] == pytest.approx(ref["losses"][3:], rel=1e-6)
    assert two["losses"] == pytest.approx(ref["losses"][5:], rel=1e-6)
    assert two["lr"] == ref["lr"] == [1e-2]  # the scheduler's state came along
    for name, w in ref["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, rtol=1e-6, atol=1e-7)


def test_universal_layout_equals_deepspeeds_converter_for_adamw(tmp_path):
    """Where DeepSpeed's ds_to_universal works (Adam's state), training/elastic.py writes the same
    files with the same tensors."""
    import argparse

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    from fspo_ray.training.elastic import to_universal

    _ds_run(tmp_path, "adam", 2, "adamw", (0, 3), save_after=3)
    ours = to_universal(tmp_path / "adam", "ckpt", tmp_path / "ours") / "ckpt"
    theirs = tmp_path / "theirs" / "ckpt"
    ds_to_universal(argparse.Namespace(input_folder=str(tmp_path / "adam" / "ckpt"), output_folder=str(theirs),
                                       num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                       strict=True, inject_missing_state=True))
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*.pt"))
    assert files == sorted(p.relative_to(ours) for p in ours.rglob("*.pt"))
    assert len([f for f in files if f.name == "exp_avg_sq.pt"]) == 4  # 4 parameters, each with Adam's moments
    for f in files:
        a, b = torch.load(ours / f, weights_only=False), torch.load(theirs / f, weights_only=False)
        if f.name == "mp_rank_00_model_states.pt":
            continue  # copied as is by both (theirs with the universal version injected)
        if f.name == "optimizer_state.pt":
            assert a["param_groups"] == b["param_groups"] and a.keys() == b.keys()
        elif isinstance(a, dict):
            torch.testing.assert_close(a["param"], b["param"], rtol=0, atol=0)
        else:
            assert a == b  # step


@pytest.mark.slow
def test_zero3_checkpoint_resumes_with_another_number_of_workers_with_adamw_only(tmp_path):
    """ZeRO-3 goes through DeepSpeed's own converter and loader, which carry Adam's state only:
    AdamW resumes 2 -> 1 to the uninterrupted run's losses and weights; RMSprop is refused with
    the fix named, by the driver's check and by the conversion."""
    from fspo_ray.training.elastic import (
        ElasticResumeError,
        check_resumable,
        saved_zero_stage,
        to_universal,
    )

    ref = _ds_run(tmp_path, "adam", 2, "adamw", (0, 5), save_after=3, zero_stage=3)
    universal = to_universal(tmp_path / "adam", "ckpt", tmp_path / "adam-universal")
    one = _ds_run(tmp_path, "adam-one", 1, "adamw", (3, 5), universal=True, load=universal, zero_stage=3)
    assert one["losses"] == pytest.approx(ref["losses"][3:], rel=1e-6)
    for name, w in ref["weights"].items():
        torch.testing.assert_close(one["weights"][name], w, rtol=1e-6, atol=1e-7)

    _ds_run(tmp_path, "rms", 2, "rmsprop", (0, 1), save_after=1, zero_stage=3)
    with pytest.raises(ElasticResumeError, match="reads Adam's exp_avg/exp_avg_sq only"):
        to_universal(tmp_path / "rms", "ckpt", tmp_path / "rms-universal")
    with pytest.raises(ElasticResumeError, match="Set train.num_workers=2"):
        check_resumable(2, 1, saved_zero_stage=3, zero_stage=3, optimizer="rmsprop")
    check_resumable(2, 1, saved_zero_stage=2, zero_stage=2, optimizer="rmsprop")  # ZeRO-2: any optimizer
    check_resumable(2, 2, saved_zero_stage=3, zero_stage=3, optimizer="rmsprop")  # same count: DeepSpeed's own load
    # The stage is read from the checkpoint's files, and a change of ZeRO stage is refused with the fix.
    assert saved_zero_stage(tmp_path / "rms" / "ckpt") == saved_zero_stage(tmp_path / "adam" / "ckpt") == 3
    with pytest.raises(ElasticResumeError, match="Set train.zero_stage=3"):
        check_resumable(2, 2, saved_zero_stage=3, zero_stage=2, optimizer="adamw")
