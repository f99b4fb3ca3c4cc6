"""The Ray Train worker loop: every stage of a run in one worker group, DeepSpeed ZeRO-2/3.

Start-up (the worker group, the process group, the imports) is paid once per run. Each stage
then loads its start model, samples and tokenizes its episodes, runs the reference pass on
this rank's rows, builds a fresh optimizer and DeepSpeed engine, trains, scores held-out pairs
(periodically, for the learning curve, and at the end), exports a Hugging Face directory and
frees its engine. A stage whose export exists is skipped, so a restarted group (a lost worker,
a rerun) resumes at the stage in progress, from its last checkpoint. DeepSpeed is imported
here, inside the worker, never on the driver.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from fspo_ray.modeling import PROMPT_CONTRACT
from fspo_ray.splits import SPLITS
from fspo_ray.training.plan import RunPlan, StagePlan

CLIENT_STATE = "fspo_state.json"
STAGE_RECORD = "fspo_stage.json"


def is_exported(path: str | Path) -> bool:
    p = Path(path)
    # A large model's export is sharded: its index names the shards.
    return (p / STAGE_RECORD).is_file() and any((p / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json"))


def _ds_config(plan: RunPlan, stage: StagePlan, world_size: int, *, universal: bool = False) -> dict:
    zero: dict = {"stage": plan.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if plan.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=0)
    return {
        "train_micro_batch_size_per_gpu": stage.micro_batch,
        "gradient_accumulation_steps": stage.accum,
        "train_batch_size": stage.micro_batch * stage.accum * world_size,
        "gradient_clipping": stage.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": plan.use_gpu},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    } | ({"checkpoint": {"load_universal": True}} if universal else {})


def _optimizer(stage: StagePlan, params):
    import torch

    if stage.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    raise ValueError(f"unknown optimizer {stage.optimizer!r}; expected one of ('rmsprop', 'adamw')")


def _metrics_sinks(plan: RunPlan, stage: StagePlan, rank: int):
    """Rank 0 writes metrics.jsonl and, when enabled, TensorBoard/MLflow/W&B (checked at config time)."""
    if rank != 0:
        return []
    sinks = []
    if plan.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(os.path.join(stage.stage_dir, "tensorboard"))
        sinks.append(lambda m, step: [tb.add_scalar(k, v, step) for k, v in m.items() if isinstance(v, float)] and tb.flush())
    if plan.mlflow:
        import mlflow

        mlflow.start_run(run_name=stage.name)
        sinks.append(lambda m, step: mlflow.log_metrics({k: v for k, v in m.items() if isinstance(v, float)}, step=step))
    if plan.wandb:
        import wandb

        wandb.init(name=stage.name, reinit=True)
        sinks.append(lambda m, step: wandb.log(m, step=step))
    return sinks


def _truncate_jsonl(path: Path, after_step: int) -> None:
    """On resume, drop lines of steps that will be replayed."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in keep))


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch

    from fspo_ray.data import load_users

    plan = RunPlan.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = f"cuda:{ctx.get_local_rank()}" if plan.use_gpu else "cpu"
    if plan.use_gpu:
        torch.cuda.set_device(device)
    users = {"train": load_users(plan.pref_dir, "train")}
    for split in SPLITS:
        users[f"eval:{split}"] = load_users(plan.pref_dir, split, max_users=plan.eval_users_per_split)
    ckpt = ray.train.get_checkpoint()
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / CLIENT_STATE).read_text())
    for stage in plan.stages:
        if is_exported(stage.export_dir):
            continue
        resume = ckpt if state is not None and state["stage"] == stage.name else None
        StageRun(plan, stage, rank=rank, world=world, device=device, users=users).run(resume)
    ray.train.report({"done": 1.0})


class StageRun:
    """One stage on one rank: data, reference pass, engine, steps, scoring, export."""

    def __init__(self, plan: RunPlan, stage: StagePlan, *, rank: int, world: int, device: str, users: dict):
        self.plan, self.stage, self.rank, self.world, self.device, self.users = plan, stage, rank, world, device, users
        self.dir = Path(stage.stage_dir)
        self.score_batch = max(8, 4 * stage.micro_batch)  # no gradients to hold: larger batches than training
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timing: dict[str, float] = {}

    def _timed(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.timing[name] = self.timing.get(name, 0.0) + now - t0
        return now

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[{self.stage.name}] {msg}", flush=True)

    # ------------------------------------------------------------------ set-up

    def _load(self, path: str):
        from fspo_ray.modeling import load_model_and_tokenizer

        p = self.plan
        return load_model_and_tokenizer(path, dtype=p.dtype, attn_implementation=p.attn_implementation, device=self.device)

    def _data(self, model, tok) -> None:
        """This rank's training rows per epoch and its share of the scored held-out episodes."""
        from fspo_ray.training.batches import (
            encode_examples,
            eval_episodes,
            stage_episodes,
            steps_of,
        )

        p, st = self.plan, self.stage
        self.epochs: list[tuple[list[dict], list]] = []
        self.token_cache: dict[str, list[int]] = {}
        dropped = 0
        for epoch in range(st.epochs):
            episodes = stage_episodes(self.users["train"], st, p, epoch)
            examples, d = encode_examples(episodes, tok, st, p, self.token_cache)
            dropped += d
            steps = steps_of(len(examples), rank=self.rank, world_size=self.world, micro_batch=st.micro_batch, accum=st.accum)
            if st.kind == "describe_preference":
                self._sample_descriptions(model, tok, episodes, examples, steps, epoch)
            self.epochs.append((examples, steps))
        if dropped:
            self.log(f"{dropped} episodes did not fit episodes.max_length even with min_shots; dropped")
        self.total_steps = sum(len(s) for _, s in self.epochs)
        if self.total_steps == 0:
            raise RuntimeError(f"stage {st.name}: fewer episodes than one global batch; lower train.global_batch_size")
        # Scored sets: every split at the stage's N, plus held-out users at each N of the sweep.
        self.scored: dict[str, list[dict]] = {}
        if st.score:
            for split in SPLITS:
                users = self.users[f"eval:{split}"]
                if users.prefs:
                    examples, _ = encode_examples(eval_episodes(users, st, p), tok, st, p, self.token_cache)
                    self.scored[split] = examples[self.rank :: self.world]
            for n in p_sweep(p, st):
                users = self.users["eval:held_out"]
                if users.prefs:
                    sweep_stage = _with_shots(st, n)
                    examples, _ = encode_examples(eval_episodes(users, sweep_stage, p), tok, sweep_stage, p,
                                                  self.token_cache)
                    self.scored[f"held_out@{n}"] = examples[self.rank :: self.world]
        self.curve_keys = ["held_out"] if st.curve_every and "held_out" in self.scored else []

    def _sample_descriptions(self, model, tok, episodes, examples, steps, epoch: int) -> None:
        """RAT stage 2: replace this rank's rows' completions by the closest/farthest of K sampled descriptions."""
        from fspo_ray.training.batches import encode_examples
        from fspo_ray.training.sampling import (
            DescriptionRanker,
            describe_prompts,
            rank_pairs,
            sample_texts,
        )

        p, st = self.plan, self.stage
        mine = sorted({i for step in steps for micro in step for i in micro})
        todo = [(i, episodes[examples[i]["episode"]]) for i in mine]
        if not todo:
            return
        if not hasattr(self, "_ranker"):
            self._ranker = DescriptionRanker(p.embedder_path, device=self.device)
        eps = [e for _, e in todo]
        samples = sample_texts(model, tok, describe_prompts(eps, tok, p.template, p.signed_shots), k=st.num_samples,
                               temperature=st.sample_temperature, max_new_tokens=st.max_description_tokens,
                               seed=hash((p.seed, epoch, self.rank)) % (2**31), device=self.device)
        sims = self._ranker.similarities(samples, [e.user_description for e in eps])
        ranked, quality = rank_pairs(eps, samples, sims)
        for (i, _), r in zip(todo, ranked, strict=True):
            encoded, _ = encode_examples([r], tok, st, p)
            if encoded:  # a pair over budget keeps the gold/gold row: zero gradient, never a skipped step
                examples[i] = encoded[0]
        if self.rank == 0:
            (self.dir / f"description_quality.epoch{epoch}.json").write_text(json.dumps(quality, indent=2))

    def _reference_pass(self, model) -> None:
        """Reference log-probs of every row this rank trains on or scores, computed once."""
        from fspo_ray.training.batches import attach_reference, score

        st = self.stage
        ref = model if st.reference_path == st.init_path else self._load(st.reference_path)[0]
        pad = self.tok.pad_token_id
        sets = [[ex[i] for step in steps for micro in step for i in micro] for ex, steps in self.epochs]
        sets += list(self.scored.values())
        for rows in sets:
            c, r = score(ref, rows, pad_token_id=pad, micro_batch=self.score_batch, device=self.device)
            attach_reference(rows, c, r)
        if ref is not model:
            del ref
            gc.collect()

    # ------------------------------------------------------------------ scoring

    def _score_sets(self, model, keys) -> dict[str, float]:
        """Reward accuracy per scored set, reduced over ranks."""
        import torch
        import torch.distributed as dist

        from fspo_ray.training.batches import reward_correct, score

        vec = []
        for k in keys:
            rows = self.scored[k]
            if rows:
                c, r = score(model, rows, pad_token_id=self.tok.pad_token_id, micro_batch=self.score_batch,
                             device=self.device)
                correct, n = reward_correct(rows, c, r)
            else:
                correct, n = 0.0, 0
            vec += [correct, float(n)]
        t = torch.tensor(vec, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        t = t.cpu().tolist()
        return {k: t[2 * i] / t[2 * i + 1] for i, k in enumerate(keys) if t[2 * i + 1] > 0} | {
            f"{k}_pairs": int(t[2 * i + 1]) for i, k in enumerate(keys)}

    def _curve_point(self, module, step: int) -> None:
        if not self.curve_keys:
            return
        t0 = time.perf_counter()
        m = self._score_sets(module, self.curve_keys)
        if self.rank == 0:
            with (self.dir / "curve.jsonl").open("a") as f:
                f.write(json.dumps({"step": step} | m) + "\n")
        self._timed("curve_eval_s", t0)

    # ------------------------------------------------------------------ resume

    def _load_checkpoint(self, engine, resume, state: dict, elastic: bool) -> None:
        """The stage's last checkpoint into the engine. One saved by another number of workers goes
        through a universal checkpoint (training/elastic.py) that rank 0 writes next to the stage's
        outputs, on the run's shared storage, and removes once every rank has loaded it (or the
        load failed; a conversion left by a killed group is removed by the next start)."""
        import shutil

        import torch.distributed as dist

        from fspo_ray.training.elastic import check_resumable, saved_zero_stage, to_universal

        if self.rank == 0:
            for stale in self.dir.glob("universal-step*"):
                shutil.rmtree(stale, ignore_errors=True)
        with resume.as_directory() as d:
            check_resumable(state["world_size"], self.world, saved_zero_stage=saved_zero_stage(Path(d) / "ckpt"),
                            zero_stage=self.plan.zero_stage, optimizer=self.stage.optimizer)
            if not elastic:
                engine.load_checkpoint(d, tag="ckpt")
                return
            t0 = time.perf_counter()
            universal = self.dir / f"universal-step{state['step']}"
            try:
                if self.rank == 0:
                    to_universal(d, "ckpt", universal)
                dist.barrier()
                engine.load_checkpoint(str(universal), tag="ckpt")
                dist.barrier()
            finally:
                if self.rank == 0:
                    for path in (universal, universal.with_name(universal.name + ".tmp")):
                        shutil.rmtree(path, ignore_errors=True)
        self.timing["elastic_resume_s"] = time.perf_counter() - t0
        self.log(f"checkpoint of step {state['step']} saved by {state['world_size']} worker(s) loaded into "
                 f"{self.world} through a universal checkpoint ({self.timing['elastic_resume_s']:.1f} s)")

    def _record_group(self, step: int, state: dict | None) -> None:
        """One line per start of the stage's worker group in workers.jsonl: its size, the node of each
        rank, the step it starts from and the size of the group that saved that checkpoint."""
        import ray
        import torch.distributed as dist

        nodes: list = [None] * self.world
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
        if self.rank == 0:
            record = {"time": time.time(), "world_size": self.world, "node_ids": nodes, "start_step": step,
                      "checkpoint_world_size": state["world_size"] if state else None}
            with (self.dir / "workers.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ the stage

    def run(self, resume) -> None:
        import deepspeed
        import torch
        import torch.distributed as dist

        from fspo_ray.collate import collate_tree
        from fspo_ray.forward import tree_forward
        from fspo_ray.losses import step_loss
        from fspo_ray.training.batches import tokens_in

        p, st = self.plan, self.stage
        t_start = t0 = time.perf_counter()
        torch.manual_seed(p.seed)
        random.seed(p.seed)
        self.log(f"start ({st.kind}): init {st.init_path}" + (f", reference {st.reference_path}" if st.reference_path else ""))
        model, self.tok = self._load(st.init_path)
        t0 = self._timed("load_s", t0)
        self._data(model, self.tok)
        t0 = self._timed("data_s", t0)
        if st.is_preference:
            self._reference_pass(model)
            t0 = self._timed("reference_s", t0)
        if p.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if p.lora_rank:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=p.lora_rank, lora_alpha=p.lora_alpha,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        optimizer = _optimizer(st, [q for q in model.parameters() if q.requires_grad])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(st, self.total_steps))
        state = _client_state(resume)
        elastic = state is not None and state["world_size"] != self.world  # saved by another number of workers
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=_ds_config(p, st, self.world, universal=elastic), dist_init_required=False,
        )
        step = 0
        if state is not None:
            self._load_checkpoint(engine, resume, state, elastic)
            step = state["step"]
            random.setstate(_tuple_state(state["py_rng"]))
            torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
            self.log(f"resumed at step {step}")
        self._record_group(step, state)
        metrics_path, curve_path = self.dir / "metrics.jsonl", self.dir / "curve.jsonl"
        if self.rank == 0:
            _truncate_jsonl(metrics_path, step)
            _truncate_jsonl(curve_path, step if step else -1)
        sinks = _metrics_sinks(p, st, self.rank)
        t0 = self._timed("engine_s", t0)
        module = engine.module
        engine.train()
        if step == 0:
            self._curve_point(module, 0)
        t0 = time.perf_counter()
        last_good = step
        first = 0
        for epoch, (examples, steps) in enumerate(self.epochs):
            if step >= first + len(steps):
                first += len(steps)
                continue  # epoch done before the resume
            for local_step in range(step - first, len(steps)):
                t_step = time.perf_counter()
                totals: dict = {}
                processed = 0
                for micro in steps[local_step]:
                    rows = [examples[i] for i in micro]
                    batch = {k: v.to(self.device) for k, v in collate_tree(rows, self.tok.pad_token_id).items()}
                    out = tree_forward(module, batch)
                    loss, stats = step_loss(out, batch, kind=st.kind, loss_type=st.loss_type, beta=st.beta,
                                            label_smoothing=st.label_smoothing, rpo_alpha=st.rpo_alpha)
                    engine.backward(loss)
                    engine.step()
                    processed += tokens_in(rows)
                    for k, v in stats.items():
                        totals[k] = totals.get(k, 0.0) + v.detach().double().cpu()
                step += 1
                keys = sorted(totals) + ["input_tokens"]
                vec = torch.stack([torch.as_tensor(totals[k], dtype=torch.float64) for k in keys[:-1]]
                                  + [torch.tensor(float(processed), dtype=torch.float64)]).to(self.device)
                dist.all_reduce(vec)
                agg = dict(zip(keys, vec.cpu().tolist(), strict=True))
                pairs, tokens, processed_all = agg.pop("pairs"), agg.pop("tokens"), agg.pop("input_tokens")
                m = {k: v / pairs for k, v in agg.items()}
                elapsed = time.perf_counter() - t_step
                m.update(step=step, epoch=epoch, lr=float(scheduler.get_last_lr()[0]),
                         tokens_per_s=processed_all / elapsed, completion_tokens_per_s=tokens / elapsed,
                         pairs_per_s=pairs / elapsed, grad_norm=float(engine.get_global_grad_norm() or 0.0))
                self.timing["steps_s"] = self.timing.get("steps_s", 0.0) + elapsed
                if not math.isfinite(m["loss"]):
                    if self.rank == 0:
                        (self.dir / "diverged.json").write_text(
                            json.dumps({"step": step, "last_good_step": last_good, "loss": str(m["loss"])}))
                    raise StageDiverged(st.name)  # every rank sees the same reduced loss: all stop, no NaN checkpoint
                if self.rank == 0:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(m) + "\n")
                    for sink in sinks:
                        sink(m, step)
                    if step % 50 == 0 or step == self.total_steps:
                        print(f"[{st.name}] step {step}/{self.total_steps} epoch {epoch} loss {m['loss']:.4f} "
                              + (f"acc {m['reward_accuracy']:.3f} " if "reward_accuracy" in m else "")
                              + f"{m['pairs_per_s']:.1f} pairs/s {m['tokens_per_s']:.0f} tok/s", flush=True)
                if st.curve_every and step % st.curve_every == 0:
                    self._curve_point(module, step)
                if step % p.checkpoint_every == 0 or step == self.total_steps:
                    t_ck = time.perf_counter()
                    _save_and_report(engine, st.name, step, self.world, m)
                    self._timed("checkpoint_s", t_ck)
                    last_good = step
                fail = p.fail_at or {}
                if fail.get("stage") == st.name and step == fail.get("step") and self.rank == self.world - 1:
                    marker = self.dir / "killed_once"
                    if not marker.exists():
                        marker.write_text(str(step))
                        os.kill(os.getpid(), 9)  # a real process death (SIGKILL), not an exception
            first += len(steps)
        if st.curve_every and step % st.curve_every:
            self._curve_point(module, step)
        t0 = time.perf_counter()
        _export(p, st, engine, self.tok, self.rank)
        t0 = self._timed("export_s", t0)
        if st.score:
            result = self._score_sets(module, list(self.scored))
            if self.rank == 0:
                (self.dir / "eval_metrics.json").write_text(json.dumps(_scored_summary(result), indent=2))
            self._timed("score_s", t0)
        dist.barrier()  # the export is complete before any rank starts a stage that loads it
        self.timing["total_s"] = time.perf_counter() - t_start
        if self.rank == 0:
            (self.dir / "timing.json").write_text(json.dumps(self.timing | {"steps": self.total_steps}, indent=2))
        engine.destroy()
        del engine, module, model, optimizer
        gc.collect()


class StageDiverged(RuntimeError):
    """The loss became non-finite; the driver turns diverged.json into the user's message."""


def lr_factor(stage: StagePlan, total_steps: int):
    """The learning-rate multiplier at an optimizer step: linear warmup, then constant or cosine
    decay to min_lr_ratio at the stage's last step."""
    warmup = max(1, stage.warmup_steps)

    def factor(step: int) -> float:
        w = min(1.0, (step + 1) / warmup)
        if stage.schedule == "cosine" and step >= warmup:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            w *= stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return w

    return factor


def p_sweep(plan: RunPlan, stage: StagePlan) -> list[int]:
    """Shots of the held-out reward-accuracy sweep: 0 and powers of two below the trained N, then N."""
    if stage.num_shots == 0:
        return []
    out, n = [0], 2
    while n < stage.num_shots:
        out.append(n)
        n *= 2
    return out + [stage.num_shots]


def _with_shots(stage: StagePlan, n: int) -> StagePlan:
    from dataclasses import replace

    return replace(stage, num_shots=n, min_shots=min(stage.min_shots, n), queries=stage.queries if n else 1)


def _scored_summary(result: dict) -> dict:
    acc = {k: v for k, v in result.items() if k in SPLITS}
    sweep = {int(k.split("@")[1]): v for k, v in result.items() if k.startswith("held_out@") and not k.endswith("_pairs")}
    pairs = {k[: -len("_pairs")]: v for k, v in result.items() if k.endswith("_pairs")}
    return {"reward_accuracy": acc, "held_out_by_shots": dict(sorted(sweep.items())), "pairs": pairs}


def checkpoint_state(checkpoint_dir: str | Path) -> dict:
    """A checkpoint's fspo_state.json, with the number of workers that saved it (read from its ZeRO
    files for checkpoints written before that was recorded)."""
    from fspo_ray.training.elastic import saved_world_size

    d = Path(checkpoint_dir)
    state = json.loads((d / CLIENT_STATE).read_text())
    if not state.get("world_size"):
        state["world_size"] = saved_world_size(d / "ckpt")
    return state


def _client_state(resume) -> dict | None:
    """The resumed checkpoint's state (None on a fresh start)."""
    if resume is None:
        return None
    with resume.as_directory() as d:
        return checkpoint_state(d)


def _tuple_state(state):
    return tuple(tuple(x) if isinstance(x, list) else x for x in state)


def _save_and_report(engine, stage: str, step: int, world: int, metrics: dict) -> None:
    import ray.train
    import torch
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as d:
        engine.save_checkpoint(d, tag="ckpt")
        state = {"stage": stage, "step": step, "world_size": world, "py_rng": random.getstate(),
                 "torch_rng": torch.get_rng_state().tolist()}
        (Path(d) / CLIENT_STATE).write_text(json.dumps(state))
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))} | {"stage": stage},
                         checkpoint=Checkpoint.from_directory(d))


def prompt_contract(plan: RunPlan, stage: StagePlan, tok) -> dict:
    """How the model was trained to be prompted: evaluation and serving read it (fspo_prompt.json)."""
    from fspo_ray.episodes import RESPONSE_HEADER

    return {"template": plan.template, "signed_shots": plan.signed_shots, "num_shots": stage.num_shots, "rat": stage.rat, "task": stage.task,
            "max_length": plan.max_length, "queries_per_episode": stage.queries, "eos_token": tok.eos_token,
            "response_header": RESPONSE_HEADER, "stage": stage.name, "kind": stage.kind}


def _export(plan: RunPlan, stage: StagePlan, engine, tok, rank: int) -> None:
    """Consolidate the (possibly ZeRO-3-sharded) weights on rank 0 and save a HF directory."""
    import shutil

    import deepspeed
    import torch

    module = engine.module
    state = {}
    for name, param in module.named_parameters():
        # Under ZeRO-3 each rank holds a shard; gather one parameter at a time (bounded memory).
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=plan.zero_stage == 3):
            if rank == 0:
                state[name] = param.detach().to("cpu", torch.float32 if not plan.use_gpu else param.dtype).clone()
    if rank != 0:
        return
    if plan.lora_rank:
        # Rebuild the same PeftModel on CPU from the start weights, load the trained adapter and
        # merge it, so the export is a plain model that from_pretrained and vLLM load.
        from peft import LoraConfig, get_peft_model

        from fspo_ray.modeling import load_model_and_tokenizer

        # In the dtype the model trained in (bf16 on GPUs under "auto"), as a full fine-tune's export
        # is; loaded on CPU, "auto" alone would give fp32 (twice the size, and not what trained).
        dtype = plan.dtype if plan.dtype != "auto" else ("bfloat16" if plan.use_gpu else "float32")
        base, _ = load_model_and_tokenizer(stage.init_path, dtype=dtype, attn_implementation=plan.attn_implementation)
        peft_model = get_peft_model(base, LoraConfig(r=plan.lora_rank, lora_alpha=plan.lora_alpha,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        peft_model.load_state_dict(state, strict=False)
        model = peft_model.merge_and_unload()
        state = None
    else:
        model = module
    out = Path(stage.export_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / PROMPT_CONTRACT).write_text(json.dumps(prompt_contract(plan, stage, tok), indent=2))
    (tmp / STAGE_RECORD).write_text(json.dumps({"stage": asdict(stage), "run": {
        k: v for k, v in asdict(plan).items() if k != "stages"}}, default=str, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written export is never taken for a finished stage
