"""The driver's resume check (training/run.py) on a run folder laid out as Ray Train 2.60 leaves it:
`checkpoint_<UTC time>` directories and Train v2's `checkpoint_manager_snapshot.json` beside them.
DeepSpeed's files are empty stand-ins: the check reads their names only."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fspo_ray.errors import FspoError
from fspo_ray.training.elastic import ElasticResumeError, check_resumable, saved_zero_stage
from fspo_ray.training.loop import CLIENT_STATE
from fspo_ray.training.run import _check_resume, newest_checkpoint

ZERO2 = ["mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
         "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
ZERO3 = ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
         "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def _checkpoint(run_dir: Path, when: str, files: list[str], *, stage: str = "fspo", world_size: int = 2) -> Path:
    d = run_dir / f"checkpoint_{when}"
    (d / "ckpt").mkdir(parents=True)
    for f in files:
        (d / "ckpt" / f).write_bytes(b"")
    (d / CLIENT_STATE).write_text(json.dumps({"stage": stage, "step": 4, "world_size": world_size}))
    return d


def _run(tmp_path: Path, *, num_workers: int, zero_stage: int, optimizer: str = "rmsprop"):
    cfg = SimpleNamespace(layout=SimpleNamespace(ray_train=tmp_path / "ray_train"), run_name="run",
                          train=SimpleNamespace(num_workers=num_workers))
    plan = SimpleNamespace(zero_stage=zero_stage, stages=[
        SimpleNamespace(name="fspo", export_dir=str(tmp_path / "models" / "fspo"), optimizer=optimizer)])
    return cfg, plan


def test_newest_checkpoint_is_a_directory_never_trains_v2_snapshot_file(tmp_path):
    run_dir = tmp_path / "ray_train" / "run"
    assert newest_checkpoint(run_dir) is None
    _checkpoint(run_dir, "2026-11-30_10-00-00.000001", ZERO2)
    newest = _checkpoint(run_dir, "2026-11-30_10-05-00.000001", ZERO2)
    # 'checkpoint_m...' sorts after every 'checkpoint_2...': picked by name alone, it would win.
    (run_dir / "checkpoint_manager_snapshot.json").write_text("{}")
    assert newest_checkpoint(run_dir) == newest


def test_driver_refuses_zero3_rmsprop_with_another_worker_count_before_any_worker_starts(tmp_path):
    run_dir = tmp_path / "ray_train" / "run"
    _checkpoint(run_dir, "2026-11-30_10-00-00.000001", ZERO3)
    (run_dir / "checkpoint_manager_snapshot.json").write_text("{}")
    with pytest.raises(FspoError, match=r"stage fspo: .*Set train.num_workers=2"):
        _check_resume(*_run(tmp_path, num_workers=1, zero_stage=3))
    _check_resume(*_run(tmp_path, num_workers=2, zero_stage=3))  # the same count: DeepSpeed's own load
    _check_resume(*_run(tmp_path, num_workers=1, zero_stage=3, optimizer="adamw"))


def test_driver_refuses_a_change_of_zero_stage_read_from_the_checkpoint(tmp_path):
    run_dir = tmp_path / "ray_train" / "run"
    _checkpoint(run_dir, "2026-11-30_10-00-00.000001", ZERO2)
    with pytest.raises(FspoError, match="saved under ZeRO-1/2 and this run uses ZeRO-3.*train.zero_stage=2"):
        _check_resume(*_run(tmp_path, num_workers=2, zero_stage=3, optimizer="adamw"))
    _check_resume(*_run(tmp_path, num_workers=1, zero_stage=2))  # ZeRO-1/2: any optimizer, any count


def test_saved_zero_stage_from_file_names(tmp_path):
    for name, files, stage in (("z2", ZERO2, 2), ("z3", ZERO3, 3)):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"")
        assert saved_zero_stage(d) == stage
    with pytest.raises(ElasticResumeError, match="not a ZeRO checkpoint"):
        saved_zero_stage(tmp_path)
    check_resumable(2, 1, saved_zero_stage=2, zero_stage=1, optimizer="rmsprop")  # ZeRO-1 and 2 share a layout
