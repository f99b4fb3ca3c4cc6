"""Resuming a stage's DeepSpeed checkpoint with another number of workers (elastic resume).

A ZeRO checkpoint holds each rank's slice of the fp32 master weights and of the optimizer state,
cut for the world size it was saved with, and DeepSpeed 0.19 refuses to load it into another
("Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not
currently supported"). Its universal checkpoint stores every parameter whole, weights and each
optimizer-state tensor, and its loader (`"checkpoint": {"load_universal": true}`) slices them
again for the world it runs in. DeepSpeed's converter to that layout
(`deepspeed.checkpoint.ds_to_universal`) reads only Adam's state (`exp_avg`, `exp_avg_sq`):
RMSprop, the recipe's optimizer, fails there with `KeyError: 'exp_avg'`. So under ZeRO-1/2
`to_universal` writes the layout itself from whatever state tensors the optimizer keeps (the
ZeRO-1/2 universal loader takes every `<key>.pt` it finds); under ZeRO-3 it calls DeepSpeed's
converter, and only AdamW can resume there, since DeepSpeed's ZeRO-3 universal loader also reads
Adam's two moments and nothing else.

Torch and DeepSpeed's file format only: no Ray.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# deepspeed.checkpoint.constants, spelled out so that reading a checkpoint needs no DeepSpeed import.
OPTIMIZER_STATE_DICT = "optimizer_state_dict"
BASE_OPTIMIZER_STATE = "base_optimizer_state"
FP32_PARTITIONS = "single_partition_of_fp32_groups"
PARAM_SLICE_MAPPINGS = "param_slice_mappings"
PARAM_SHAPES = "param_shapes"
UNIVERSAL_LATEST = "latest_universal"
_OPTIM_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt")


class ElasticResumeError(RuntimeError):
    """A checkpoint that cannot be resumed with the current number of workers, with the fix named."""


def _optim_files(tag_dir: Path) -> list[Path]:
    """One file per data-parallel rank, in rank order."""
    ranked = sorted((int(m.group(1)), p) for p in tag_dir.iterdir() if (m := _OPTIM_FILE.fullmatch(p.name)))
    if [r for r, _ in ranked] != list(range(len(ranked))):
        raise ElasticResumeError(f"{tag_dir}: ZeRO optimizer files of ranks {[r for r, _ in ranked]}; expected 0..n-1")
    return [p for _, p in ranked]


def saved_world_size(tag_dir: str | Path) -> int:
    """Data-parallel ranks a ZeRO checkpoint was saved with (one optimizer file each); for
    checkpoints whose client state does not record it."""
    return len(_optim_files(Path(tag_dir)))


def saved_zero_stage(tag_dir: str | Path) -> int:
    """The ZeRO stage a checkpoint was saved under, from its file names (no tensor is read): ZeRO-3
    saves each rank's module state (`zero_pp_rank_<r>_mp_rank_00_model_states.pt`), ZeRO-1/2 one
    `mp_rank_00_model_states.pt`; 2 stands for either of the two, which share one layout."""
    tag_dir = Path(tag_dir)
    if any(tag_dir.glob("zero_pp_rank_*_mp_rank_*_model_states.pt")):
        return 3
    if any(tag_dir.glob("mp_rank_*_model_states.pt")):
        return 2
    raise ElasticResumeError(f"{tag_dir}: no DeepSpeed model-state file; not a ZeRO checkpoint")


def check_resumable(saved_world: int, world: int, *, saved_zero_stage: int, zero_stage: int, optimizer: str) -> None:
    """Raise when a checkpoint of `saved_world` workers under ZeRO `saved_zero_stage` cannot resume
    with `world` workers under `zero_stage` (the driver asks before any worker starts; the workers
    ask again of the checkpoint they load)."""
    if (saved_zero_stage == 3) != (zero_stage == 3):
        raise ElasticResumeError(
            f"the checkpoint was saved under ZeRO-{saved_zero_stage if saved_zero_stage == 3 else '1/2'} and this "
            f"run uses ZeRO-{zero_stage}: a stage resumes under the ZeRO stage it started with. Set "
            f"train.zero_stage={saved_zero_stage}, or start the stage again (delete its checkpoints)")
    if saved_world != world and zero_stage == 3 and optimizer != "adamw":
        raise ElasticResumeError(
            f"the checkpoint was saved by {saved_world} worker(s) and this run has {world}: under ZeRO-3 only "
            f"AdamW's state can be carried across that change (DeepSpeed 0.19's ZeRO-3 universal loader reads "
            f"exp_avg/exp_avg_sq only), and this stage uses {optimizer}. Set train.num_workers={saved_world}, "
            "or start the stage again (delete its checkpoints) with the new count")


def to_universal(src: str | Path, tag: str, dst: str | Path) -> Path:
    """Convert the checkpoint `src/tag` into a universal one at `dst/tag` (`dst/latest_universal`
    names the tag, as DeepSpeed's loader expects); returns `dst`. Written to `dst.tmp` first. The
    ZeRO stage is the checkpoint's own (`saved_zero_stage`), whatever the current config says."""
    src_tag, dst = Path(src) / tag, Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if saved_zero_stage(src_tag) == 3:
        _zero3_to_universal(src_tag, tmp / tag)
    else:
        _zero12_to_universal(src_tag, tmp / tag)
    (tmp / UNIVERSAL_LATEST).write_text(tag)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def _zero12_to_universal(src: Path, out: Path) -> None:
    """Each parameter's fragments of the fp32 partition and of every optimizer-state tensor,
    joined in rank order: `out/zero/<param>/{fp32,<state key>,step}.pt`, as ds_to_universal writes them."""
    import torch

    model_files = sorted(src.glob("mp_rank_*_model_states.pt"))
    if len(model_files) != 1:
        raise ElasticResumeError(f"{src}: {len(model_files)} model-state files; elastic resume supports data "
                                 "parallelism only (no tensor or pipeline parallel ranks)")
    shapes = torch.load(model_files[0], map_location="cpu", weights_only=False)[PARAM_SHAPES]
    parts: dict[str, dict[str, list]] = {}  # param -> state key -> fragments in rank order
    scalars: dict[str, dict] = {}  # param -> per-group scalar state (the optimizer's step)
    first = None
    for path in _optim_files(src):
        osd = torch.load(path, map_location="cpu", weights_only=False)[OPTIMIZER_STATE_DICT]
        first = first or osd
        for g, mapping in enumerate(osd[PARAM_SLICE_MAPPINGS]):
            state = osd[BASE_OPTIMIZER_STATE]["state"].get(g, {})
            flat = {"fp32": osd[FP32_PARTITIONS][g]} | {
                k: v for k, v in state.items() if torch.is_tensor(v) and v.dim() == 1}  # (partition,) each
            for name, frag in mapping.items():
                for key, t in flat.items():
                    parts.setdefault(name, {}).setdefault(key, []).append(t.narrow(0, frag.start, frag.numel))
                scalars[name] = {k: v for k, v in state.items() if k not in flat}
    shape_of = {n: s for group in shapes for n, s in group.items()}
    zero = out / "zero"
    for name, states in parts.items():
        d = zero / name
        d.mkdir(parents=True)
        for key, fragments in states.items():
            full = torch.cat(fragments)
            if full.numel() != shape_of[name].numel():
                raise ElasticResumeError(f"{src}: {name} {key}: {full.numel()} elements in the fragments, "
                                         f"{shape_of[name].numel()} in the parameter")
            torch.save({"param": full.view(shape_of[name]).clone()}, d / f"{key}.pt")
        if "step" in scalars[name]:
            torch.save(scalars[name]["step"], d / "step.pt")  # the loader takes it as saved
    missing = set(shape_of) - set(parts)
    if missing:
        raise ElasticResumeError(f"{src}: no optimizer fragments for {sorted(missing)}")
    # The optimizer's global state (loss scaler, clip, hyperparameters) from rank 0's file.
    common = {k: v for k, v in first.items() if k not in (BASE_OPTIMIZER_STATE, FP32_PARTITIONS, PARAM_SLICE_MAPPINGS)}
    common["param_groups"] = first[BASE_OPTIMIZER_STATE]["param_groups"]
    torch.save(common, zero / "optimizer_state.pt")
    shutil.copy2(model_files[0], out / model_files[0].name)  # module, lr scheduler, step counters


def _zero3_to_universal(src: Path, out: Path) -> None:
    import argparse

    import torch
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    osd = torch.load(_optim_files(src)[0], map_location="cpu", weights_only=False)[OPTIMIZER_STATE_DICT]
    keys = set(osd[OPTIMIZER_STATE_DICT]["state"][0])
    if not {"exp_avg", "exp_avg_sq"} <= keys:
        raise ElasticResumeError(
            f"a ZeRO-3 checkpoint whose optimizer keeps {sorted(keys)} cannot be resumed with another number of "
            "workers: DeepSpeed 0.19's ZeRO-3 universal loader reads Adam's exp_avg/exp_avg_sq only. Resume with "
            "the checkpoint's number of workers")
    ds_to_universal(argparse.Namespace(input_folder=str(src), output_folder=str(out), num_extract_workers=1,
                                       num_merge_workers=1, keep_temp_folder=False, strict=True,
                                       inject_missing_state=True))  # also writes out.parent/latest_universal
