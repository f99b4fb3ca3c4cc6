"""The Ray Train worker loop: DeepSpeed ZeRO-2/3 over precomputed episode shards.

Each rank reads its deterministic slice of every epoch's shard, so a resumed run replays
exactly the batches an uninterrupted run would: position in the data is the global step.
DeepSpeed is imported here, inside the worker, never on the driver.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CLIENT_STATE = "fspo_state.json"


@dataclass
class LoopSpec:
    """Everything a worker needs, as plain data (it travels to the workers)."""

    stage: str
    kind: str  # base_sft | sft | preference | describe_sft | describe_preference
    init_path: str
    export_dir: str
    stage_dir: str
    shards: list[str]
    micro_batch: int
    accum: int
    zero_stage: int
    use_gpu: bool
    dtype: str
    attn_implementation: str
    forward: str
    lr: float
    optimizer: str
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    loss_type: str
    beta: float
    label_smoothing: float
    gradient_checkpointing: bool
    lora_rank: int
    lora_alpha: int
    checkpoint_every: int
    seed: int
    tensorboard: bool
    mlflow: bool
    wandb: bool
    fail_at_step: int | None = None  # test hook: hard-kill rank 1's process at this step (once)


def _ds_config(spec: LoopSpec, world_size: int) -> dict:
    zero: dict = {"stage": spec.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if spec.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=0)
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch,
        "gradient_accumulation_steps": spec.accum,
        "train_batch_size": spec.micro_batch * spec.accum * world_size,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": spec.use_gpu},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _optimizer(spec: LoopSpec, params):
    import torch

    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; expected one of ('rmsprop', 'adamw')")


def _micro_loss(spec: LoopSpec, model, batch: dict, forward):
    """Loss and per-pair stats of one micro-batch."""

    from fspo_ray.losses import preference_loss

    out = forward(model, batch)
    processed = _processed_tokens(batch)
    if spec.kind in ("base_sft", "sft", "describe_sft"):
        # Pref-FT: mean NLL over the tokens of both completions under the prompt.
        tokens = (out.chosen_tokens + out.rejected_tokens).sum()
        loss = -(out.chosen_logps.sum() + out.rejected_logps.sum()) / tokens.clamp(min=1)
        return loss, _as_tensors({"loss": loss.detach() * len(out.chosen_logps), "pairs": len(out.chosen_logps), "tokens": tokens,
                                 "input_tokens": processed})
    losses, cr, rr = preference_loss(
        out.chosen_logps, out.rejected_logps, batch["ref_chosen_logps"], batch["ref_rejected_logps"],
        loss_type=spec.loss_type, beta=spec.beta, label_smoothing=spec.label_smoothing,
    )
    loss = losses.mean()
    stats = {
        "loss": losses.detach().sum(),
        "pairs": len(losses),
        "tokens": (out.chosen_tokens + out.rejected_tokens).sum(),
        "input_tokens": processed,
        "reward_accuracy": ((cr > rr).float() + 0.5 * (cr == rr).float()).sum(),
        "reward_margin": (cr - rr).sum(),
        "chosen_reward": cr.sum(),
        "rejected_reward": rr.sum(),
    }
    return loss, _as_tensors(stats)


def _processed_tokens(batch: dict):
    """Real (non-pad) tokens the model runs: the packed row's prompt + chosen + rejected, or both
    concatenated rows (the prompt twice)."""
    from fspo_ray.collate import PAD_SEGMENT

    if "segment_ids" in batch:
        return (batch["segment_ids"] != PAD_SEGMENT).sum()
    return batch["attention_mask"].sum()


def _as_tensors(stats: dict) -> dict:
    import torch

    return {k: (v.detach().double().cpu() if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64))
            for k, v in stats.items()}


def _metrics_sinks(spec: LoopSpec, rank: int):
    """Rank 0 writes metrics.jsonl and, when available and enabled, TensorBoard/MLflow/W&B."""
    if rank != 0:
        return []
    sinks = []
    if spec.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(os.path.join(spec.stage_dir, "tensorboard"))
            sinks.append(lambda m, step: [tb.add_scalar(k, v, step) for k, v in m.items() if isinstance(v, float)] and tb.flush())
        except ImportError:
            pass
    if spec.mlflow:
        try:
            import mlflow

            mlflow.start_run(run_name=spec.stage)
            sinks.append(lambda m, step: mlflow.log_metrics({k: v for k, v in m.items() if isinstance(v, float)}, step=step))
        except ImportError:
            pass
    if spec.wandb:
        try:
            import wandb

            wandb.init(name=spec.stage, reinit=True)
            sinks.append(lambda m, step: wandb.log(m, step=step))
        except ImportError:
            pass
    return sinks


def _truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop metric lines of steps that will be replayed."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in keep))


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist

    from fspo_ray.collate import collator_for
    from fspo_ray.forward import forward_for
    from fspo_ray.modeling import load_model_and_tokenizer
    from fspo_ray.training.prepare import read_rank_batches

    spec = LoopSpec(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = f"cuda:{ctx.get_local_rank()}" if spec.use_gpu else "cpu"
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)

    model, tok = load_model_and_tokenizer(spec.init_path, dtype=spec.dtype, attn_implementation=spec.attn_implementation,
                                          device=device)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    steps_per_epoch = [len(read_rank_batches(Path(s), rank=0, world_size=world, micro_batch=spec.micro_batch,
                                             accum=spec.accum)) for s in spec.shards]
    total_steps = sum(steps_per_epoch)
    if total_steps == 0:
        raise RuntimeError(f"stage {spec.stage}: fewer episodes than one global batch; lower train.global_batch_size")
    optimizer = _optimizer(spec, [p for p in model.parameters() if p.requires_grad])
    warmup = max(1, spec.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=_ds_config(spec, world),
        dist_init_required=False,
    )

    # ---- resume: model, optimizer, scheduler, RNG and the position in the data
    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag="ckpt")
            state = json.loads((Path(d) / CLIENT_STATE).read_text())
        step = state["step"]
        random.setstate(_tuple_state(state["py_rng"]))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    metrics_path = Path(spec.stage_dir) / "metrics.jsonl"
    if rank == 0:
        _truncate_metrics(metrics_path, step)
    sinks = _metrics_sinks(spec, rank)

    collate, forward = collator_for(spec.forward), forward_for(spec.forward)
    module = engine.module
    engine.train()
    last_good = step
    for epoch, shard in enumerate(spec.shards):
        first = sum(steps_per_epoch[:epoch])
        if step >= first + steps_per_epoch[epoch]:
            continue  # epoch already done before the resume
        batches = read_rank_batches(Path(shard), rank=rank, world_size=world, micro_batch=spec.micro_batch,
                                    accum=spec.accum)
        for local_step in range(step - first, len(batches)):
            t0 = time.perf_counter()
            totals: dict = {}
            for micro in batches[local_step]:
                batch = {k: v.to(device) for k, v in collate(micro, tok.pad_token_id).items()}
                loss, stats = _micro_loss(spec, module, batch, forward)
                engine.backward(loss)
                engine.step()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
            step += 1
            keys = sorted(totals)
            vec = torch.stack([torch.as_tensor(totals[k], dtype=torch.float64) for k in keys])
            dist.all_reduce(vec)
            agg = dict(zip(keys, vec.tolist(), strict=True))
            pairs = agg.pop("pairs")
            tokens = agg.pop("tokens")
            processed = agg.pop("input_tokens")
            m = {k: v / pairs for k, v in agg.items()}
            elapsed = time.perf_counter() - t0
            m.update(step=step, epoch=epoch, lr=float(scheduler.get_last_lr()[0]),
                     tokens_per_s=processed / elapsed, completion_tokens_per_s=tokens / elapsed,
                     pairs_per_s=pairs / elapsed,
                     grad_norm=float(engine.get_global_grad_norm() or 0.0))
            if not math.isfinite(m["loss"]):
                if rank == 0:
                    (Path(spec.stage_dir) / "diverged.json").write_text(
                        json.dumps({"step": step, "last_good_step": last_good, "loss": str(m["loss"])}))
                return  # every rank sees the same reduced loss, so all stop together; no checkpoint of NaN weights
            if rank == 0:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(m) + "\n")
                for sink in sinks:
                    sink(m, step)
                if step % 10 == 0 or step == total_steps:
                    print(f"[{spec.stage}] step {step}/{total_steps} epoch {epoch} loss {m['loss']:.4f} "
                          + (f"acc {m['reward_accuracy']:.3f} " if "reward_accuracy" in m else "")
                          + f"{m['pairs_per_s']:.1f} pairs/s {m['tokens_per_s']:.0f} tok/s", flush=True)
            if step % spec.checkpoint_every == 0 or step == total_steps:
                _save_and_report(engine, step, m)
                last_good = step
            if spec.fail_at_step is not None and step == spec.fail_at_step and rank == world - 1:
                marker = Path(spec.stage_dir) / "killed_once"
                if not marker.exists():
                    marker.write_text(str(step))
                    os.kill(os.getpid(), 9)  # a real process death (SIGKILL), not an exception
    _export(spec, engine, tok, rank)
    ray.train.report({"step": step, "done": 1.0})


def _tuple_state(state):
    return tuple(tuple(x) if isinstance(x, list) else x for x in state)


def _save_and_report(engine, step: int, metrics: dict) -> None:
    import ray.train
    import torch
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as d:
        engine.save_checkpoint(d, tag="ckpt")
        state = {"step": step, "py_rng": random.getstate(), "torch_rng": torch.get_rng_state().tolist()}
        (Path(d) / CLIENT_STATE).write_text(json.dumps(state))
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                         checkpoint=Checkpoint.from_directory(d))


def _export(spec: LoopSpec, engine, tok, rank: int) -> None:
    """Consolidate the (possibly ZeRO-3-sharded) weights on rank 0 and save a HF directory."""
    import shutil

    import deepspeed
    import torch

    module = engine.module
    state = {}
    for name, param in module.named_parameters():
        # Under ZeRO-3 each rank holds a shard; gather one parameter at a time (bounded memory).
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=spec.zero_stage == 3):
            if rank == 0:
                state[name] = param.detach().to("cpu", torch.float32 if not spec.use_gpu else param.dtype).clone()
    if rank != 0:
        return
    if spec.lora_rank:
        # Rebuild the same PeftModel on CPU from the start weights, load the trained adapter and
        # merge it, so the export is a plain model that from_pretrained and vLLM load.
        from peft import LoraConfig, get_peft_model

        from fspo_ray.modeling import load_model_and_tokenizer

        base, _ = load_model_and_tokenizer(spec.init_path, dtype=spec.dtype, attn_implementation=spec.attn_implementation)
        peft_model = get_peft_model(base, LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        peft_model.load_state_dict(state, strict=False)
        model = peft_model.merge_and_unload()
        state = None
    else:
        model = module
    out = Path(spec.export_dir)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "fspo_stage.json").write_text(json.dumps(asdict(spec), default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written export is never taken for a finished stage
