"""The train job's plan (no Ray): stage resolution, per-stage batches, the learning-rate schedule."""

import math

import pytest

from fspo_ray.config import ConfigError, build_config
from fspo_ray.training.loop import lr_factor, p_sweep
from fspo_ray.training.plan import make_plan


def _cfg(**train):
    stages = train.pop("stages", [
        {"name": "base_sft", "kind": "base_sft", "global_batch_size": 32, "micro_batch_size": 16},
        {"name": "fspo", "kind": "preference", "init_from": "base_sft"},
        {"name": "ipo_no_context", "kind": "preference", "init_from": "base_sft", "num_shots": 0},
        {"name": "rat_describe_sft", "kind": "describe_sft", "init_from": "fspo"},
        {"name": "fspo_rat", "kind": "preference", "rat": True, "init_from": "fspo", "reference": "base_sft",
         "schedule": "cosine", "rpo_alpha": 0.5},
    ])
    return build_config({"output_dir": "/tmp/plan-run", "episodes": {"num_shots": 8, "min_shots": 4, "queries_per_episode": 16},
                         "loss": {"loss_type": "dpo", "beta": 0.1, "rpo_alpha": 1.0},
                         "train": {"num_workers": 2, "global_batch_size": 8, "micro_batch_size": 2, "stages": stages} | train})


def test_stages_resolve_shots_queries_batches_and_references():
    plan = make_plan(_cfg())
    by = {s.name: s for s in plan.stages}
    assert (by["base_sft"].num_shots, by["base_sft"].queries, by["base_sft"].reference_path) == (0, 1, None)
    assert (by["base_sft"].micro_batch, by["base_sft"].accum) == (16, 1)  # 32 = 16 x 1 accumulation x 2 workers
    assert (by["fspo"].num_shots, by["fspo"].queries, by["fspo"].micro_batch, by["fspo"].accum) == (8, 16, 2, 2)
    assert by["fspo"].init_path == by["fspo"].reference_path == "/tmp/plan-run/models/base_sft"
    assert (by["ipo_no_context"].num_shots, by["ipo_no_context"].queries) == (0, 1)  # no prefix to share
    assert (by["rat_describe_sft"].task, by["rat_describe_sft"].queries) == ("describe", 1)
    assert by["fspo_rat"].init_path.endswith("models/fspo") and by["fspo_rat"].reference_path.endswith("models/base_sft")
    assert (by["fspo_rat"].rpo_alpha, by["fspo"].rpo_alpha, by["fspo"].loss_type) == (0.5, 1.0, "dpo")
    assert by["fspo"].score and not by["rat_describe_sft"].score
    assert plan.stages[0].stage_dir == "/tmp/plan-run/train/base_sft"


def test_stage_batch_must_divide_over_workers():
    with pytest.raises(ConfigError, match=r"stages\[0\] \(s\)\.global_batch_size \(6\) must be a multiple of "
                                          r"micro_batch_size x num_workers \(2 x 2 = 4\)"):
        _cfg(stages=[{"name": "s", "kind": "sft", "global_batch_size": 6}])


def test_cosine_schedule_by_hand():
    stage = make_plan(_cfg()).stages[-1]  # fspo_rat: cosine, warmup 150 by default
    stage.warmup_steps, stage.min_lr_ratio = 10, 0.1
    f = lr_factor(stage, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # linear warmup
    # halfway through the decay (step 60 of 10..110): 0.1 + 0.9 * 0.5 * (1 + cos(pi / 2)) = 0.55
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    stage.schedule = "constant"
    assert lr_factor(stage, 110)(100) == 1.0


def test_held_out_shot_sweep():
    fspo = make_plan(_cfg()).stages[1]
    assert p_sweep(None, fspo) == [0, 2, 4, 8]  # trained N last
    fspo.num_shots = 0
    assert p_sweep(None, fspo) == []
