"""CPU training throughput: our FSPO step against TRL's DPOTrainer(loss_type="ipo"), same data.

    python -m bench.train_throughput            # 2 rounds x (ours, trl), 16 timed steps each
    python -m bench.train_throughput --quick    # smoke: one round of 3 timed steps

Model: a tiny Llama of the world (hidden 256, 4 layers, 4 heads by default; --hidden etc.; a BPE
vocabulary trained on world text), random init, built once and loaded by every subprocess.
Data: 8-shot FSPO episodes of the simulated world in the official markdown template; both
sides train on the same pairs in the same order, and both precompute reference log-probs
before the clock starts.
Sides, each in its own process with the same threads and allocator settings, alternating:
  ours  collate_packed + shared_prefix_forward + the Ray Train worker's `_micro_loss` (IPO)
        + grad clip + fused AdamW, in a plain process (no Ray, no DeepSpeed)
  trl   DPOTrainer(DPOConfig(loss_type="ipo", precompute_ref_log_probs=True)) on the same
        prompt / chosen / rejected strings
Ends with one JSON line; docs/benchmarks.md says how to read it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench._common import (
    ALLOCATOR_ENV,
    load_average,
    matmul_gflops,
    peak_rss_mb,
    recorded_env,
    significant,
    worker_env,
)

REPO = Path(__file__).resolve().parents[1]
SIDES = {"ours": "shared_prefix", "ours_concat": "concatenated", "trl": "concatenated"}
QUICK = dict(steps=3, warmup=1, rounds=1, batch_size=2, corpus_sentences=2000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", default=str(REPO / "jobs/configs/world.yaml"), help="world + tiny model config"
    )
    p.add_argument("--hidden", type=int, default=256, help="model width")
    p.add_argument("--intermediate", type=int, default=688, help="MLP width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads (= key/value heads)")
    p.add_argument("--steps", type=int, default=16, help="timed optimizer steps per side and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step, both sides")
    p.add_argument("--shots", type=int, default=8, help="few-shot examples per episode")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each side")
    p.add_argument("--rounds", type=int, default=2, help="alternations of ours, trl")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate, both sides")
    p.add_argument(
        "--beta", type=float, default=None, help="IPO beta (default: the config's loss.beta)"
    )
    p.add_argument("--grad-clip", type=float, default=10.0, help="max grad norm, both sides")
    p.add_argument(
        "--corpus-sentences", type=int, default=None, help="tokenizer corpus size (default: config)"
    )
    p.add_argument(
        "--with-concatenated",
        action="store_true",
        help="also time ours with the concatenated layout",
    )
    p.add_argument(
        "--no-allocator-env", action="store_true", help=f"do not set {', '.join(ALLOCATOR_ENV)}"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: " + json.dumps(QUICK))
    p.add_argument("--workdir", help="keep the model, data and per-process results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one side from a spec file
    known, _ = p.parse_known_args(argv)
    if known.quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1 or args.rounds < 1:
        p.error("--steps, --warmup, --batch-size and --rounds must be at least 1")
    return args


# --------------------------------------------------------------------------- shared inputs


def build_inputs(args: argparse.Namespace, workdir: Path) -> dict:
    """Train the tokenizer, build and save the tiny model, and write the episodes both sides use."""
    from transformers.utils import logging as hf_logging

    from fspo_ray.config import load_config
    from fspo_ray.modeling import build_tiny_from_config, load_tokenizer

    hf_logging.disable_progress_bar()
    # The benchmark model: hidden 256, 4 layers (the demo's world.yaml uses a narrower one).
    overrides = [f"tiny_model.output={workdir / 'model'}", f"tiny_model.hidden_size={args.hidden}",
                 f"tiny_model.intermediate_size={args.intermediate}", f"tiny_model.num_layers={args.layers}",
                 f"tiny_model.num_heads={args.heads}", f"tiny_model.num_kv_heads={args.heads}"]  # fmt: skip
    if args.corpus_sentences:
        overrides.append(f"tiny_model.corpus_sentences={args.corpus_sentences}")
    cfg = load_config(args.config, overrides)
    model_dir = build_tiny_from_config(cfg)
    tokenizer = load_tokenizer(str(model_dir))
    n_pairs = (args.warmup + args.steps) * args.batch_size
    records = episode_records(cfg, tokenizer, args.shots, n_pairs)
    records_path = workdir / "records.json"
    records_path.write_text(json.dumps(records))
    beta = args.beta if args.beta is not None else cfg.loss.beta
    return {"model_dir": str(model_dir), "records": str(records_path), "beta": beta}


def episode_records(cfg, tokenizer, shots: int, n_pairs: int) -> list[dict]:
    """`n_pairs` encoded FSPO episodes of world users, with the strings TRL tokenizes itself.

    `prompt` is the markdown prompt with the shots that fit `episodes.max_length`; `chosen` and
    `rejected` are completions without the EOS string, which TRL appends (ours has it in ids).
    """
    from fspo_ray.episodes import (
        Preference,
        build_episodes,
        encode_episode,
        render_completion,
        render_prompt,
    )
    from fspo_ray.world import world_from_config

    world = world_from_config(cfg.world)
    per_user = cfg.world.prefs_per_user
    users = {
        uid: [Preference(r["question"], r["chosen"], r["rejected"])
              for r in world.user_preferences(uid, per_user, seed=cfg.seed)]
        for uid in world.user_ids("train", -(-n_pairs // per_user))
    }  # fmt: skip
    min_shots = min(cfg.episodes.min_shots, shots)
    episodes, _ = build_episodes(users, num_shots=shots, min_shots=min_shots, seed=cfg.seed)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    records = []
    for episode in episodes:
        encoded = encode_episode(
            episode, encode, eos_token=tokenizer.eos_token, max_length=cfg.episodes.max_length,
            min_shots=min_shots, template="markdown",
        )  # fmt: skip
        if encoded is None:
            continue
        kept = episode.shots[len(episode.shots) - encoded.num_shots :]  # oldest shots drop first
        prompt = render_prompt(kept, episode.held_out.question)
        assert encode(prompt) == encoded.prompt_ids
        records.append({
            "prompt": prompt,
            "chosen": render_completion(episode.held_out.chosen, eos_token=""),
            "rejected": render_completion(episode.held_out.rejected, eos_token=""),
            "prompt_ids": encoded.prompt_ids,
            "chosen_ids": encoded.chosen_ids,
            "rejected_ids": encoded.rejected_ids,
            "num_shots": encoded.num_shots,
        })  # fmt: skip
        if len(records) == n_pairs:
            return records
    raise RuntimeError(f"only {len(records)} of {n_pairs} episodes fit episodes.max_length")


# --------------------------------------------------------------------------- the two sides


@dataclass
class SideRun:
    """What one side did, step by step; the parent turns it into rates."""

    side: str
    layout: str  # shared_prefix: one row P+C+R per pair; concatenated: rows P+C and P+R
    step_ends: list[float] = field(default_factory=list)  # perf_counter(); [0] is the start
    step_cpu: list[float] = field(default_factory=list)  # process_time(), all threads, same points
    losses: list[float] = field(default_factory=list)  # mean loss of each step
    pair_lengths: list[list[int]] = field(default_factory=list)  # [P, C, R] per pair, as tokenized
    padded_tokens: list[int] = field(default_factory=list)  # rows x row length per step
    rss_at_start_mb: float = 0.0  # peak RSS when training starts: imports, model, data, reference pass

    def mark(self) -> None:
        """The end of a step (or the start of the first)."""
        if not self.step_ends:
            self.rss_at_start_mb = peak_rss_mb()
        self.step_ends.append(time.perf_counter())
        self.step_cpu.append(time.process_time())


def _loop_spec(mode: str, beta: float):
    """A LoopSpec for `_micro_loss`; it reads kind, loss_type, beta and label_smoothing only."""
    from fspo_ray.training.loop import LoopSpec

    return LoopSpec(
        stage="bench", kind="preference", init_path="", export_dir="", stage_dir="", shards=[],
        micro_batch=1, accum=1, zero_stage=2, use_gpu=False, dtype="float32",
        attn_implementation="sdpa", forward=mode, lr=0.0, optimizer="adamw", weight_decay=0.0,
        warmup_steps=0, grad_clip=0.0, loss_type="ipo", beta=beta, label_smoothing=0.0,
        gradient_checkpointing=False, lora_rank=0, lora_alpha=1, checkpoint_every=1, seed=0,
        tensorboard=False, mlflow=False, wandb=False,
    )  # fmt: skip


def train_ours(
    model,
    records: list[dict],
    *,
    pad_token_id: int,
    batch_size: int,
    steps: int,
    lr: float,
    beta: float,
    grad_clip: float,
    mode: str = "shared_prefix",
    side: str = "ours",
) -> SideRun:
    """Our Ray Train worker's step, without Ray or DeepSpeed, on `steps` batches of `records`."""
    import torch

    from fspo_ray.collate import collator_for
    from fspo_ray.forward import forward_for
    from fspo_ray.training.loop import _micro_loss

    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    examples = [{k: r[k] for k in keys} for r in records[: steps * batch_size]]
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    collate, forward = collator_for(mode), forward_for(mode)

    # Reference log-probs of the initial policy, once and untimed: what prepare.py stores.
    with torch.no_grad():
        for chunk in batches:
            out = forward(model, collate(chunk, pad_token_id))
            for example, c, r in zip(
                chunk, out.chosen_logps.tolist(), out.rejected_logps.tolist(), strict=True
            ):
                example["ref_chosen_logps"], example["ref_rejected_logps"] = c, r

    params = [p for p in model.parameters() if p.requires_grad]
    # TRL's default optim is adamw_torch_fused.
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    spec = _loop_spec(mode, beta)
    run = SideRun(side=side, layout=mode)
    run.pair_lengths = [[len(e[k]) for k in keys] for e in examples]
    model.train()
    run.mark()
    for chunk in batches:
        batch = collate(chunk, pad_token_id)
        loss, stats = _micro_loss(spec, model, batch, forward)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.mark()
        run.losses.append(float(stats["loss"]) / len(chunk))
        run.padded_tokens.append(batch["input_ids"].numel())
    return run


def train_trl(
    model,
    tokenizer,
    records: list[dict],
    *,
    batch_size: int,
    steps: int,
    lr: float,
    beta: float,
    grad_clip: float,
    output_dir: str,
) -> SideRun:
    """TRL's DPOTrainer with IPO and precomputed reference log-probs, in the same order as ours."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    run = SideRun(side="trl", layout="concatenated")

    class StepClock(TrainerCallback):
        # on_step_end to on_step_end: includes fetching and collating the batch, as ours does.
        def on_train_begin(self, args, state, control, **kwargs):
            run.mark()

        def on_step_end(self, args, state, control, **kwargs):
            run.mark()

    class LossRecordingDPOTrainer(DPOTrainer):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            run.losses.append(float(loss))
            return loss

    config = DPOConfig(
        output_dir=output_dir, loss_type=["ipo"], beta=beta, precompute_ref_log_probs=True,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, max_steps=steps,
        learning_rate=lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=grad_clip,
        optim="adamw_torch_fused", max_length=None, gradient_checkpointing=False, bf16=False,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=steps + 1, disable_tqdm=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    dataset = Dataset.from_list(
        [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records[: steps * batch_size]]
    )
    trainer = LossRecordingDPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    trainer.train()
    tokenized = trainer.train_dataset
    run.pair_lengths = [
        [len(p), len(c), len(r)]
        for p, c, r in zip(
            tokenized["prompt_ids"], tokenized["chosen_ids"], tokenized["rejected_ids"], strict=True
        )
    ]
    for start in range(0, len(run.pair_lengths), batch_size):
        chunk = run.pair_lengths[start : start + batch_size]
        row = max(p + max(c, r) for p, c, r in chunk)
        run.padded_tokens.append(2 * len(chunk) * row)  # (2B, T) rows, right-padded
    return run


def step_flops(model, pair_lengths: list[list[int]], layout: str) -> float:
    """Model FLOPs of one step (bench.gpu_shared_prefix.model_flops, same formula as the GPU bench)."""
    from bench.gpu_shared_prefix import model_flops, workload

    episodes = [{"prompt_ids": range(p), "chosen_ids": range(c), "rejected_ids": range(r)}
                for p, c, r in pair_lengths]  # fmt: skip
    return model_flops(model, workload(episodes, layout))


def run_worker(spec_path: str) -> None:
    """One side in this process: threads, matmul rate, model, training, peak RSS -> a JSON file."""
    import torch
    from transformers.utils import logging as hf_logging

    from fspo_ray.modeling import load_model_and_tokenizer

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gflops = matmul_gflops()
    model, tokenizer = load_model_and_tokenizer(
        spec["model_dir"], dtype="float32", attn_implementation="sdpa"
    )
    records = json.loads(Path(spec["records"]).read_text())
    rss_after_load = peak_rss_mb()
    common = dict(batch_size=spec["batch_size"], steps=spec["total_steps"], lr=spec["lr"], beta=spec["beta"],
                  grad_clip=spec["grad_clip"])  # fmt: skip
    load_before = load_average()
    if spec["side"] == "trl":
        run = train_trl(model, tokenizer, records, output_dir=spec["output_dir"], **common)
    else:
        run = train_ours(model, records, pad_token_id=tokenizer.pad_token_id, mode=SIDES[spec["side"]],
                         side=spec["side"], **common)  # fmt: skip
    # Best of before and after training: a rate measured while other jobs hold the cores would
    # make the MFU look higher than it is.
    gflops = max(gflops, matmul_gflops())
    b = spec["batch_size"]
    flops = [
        step_flops(model, run.pair_lengths[i : i + b], run.layout)
        for i in range(0, len(run.pair_lengths), b)
    ]
    result = {
        **asdict(run),
        "step_flops": flops,
        "matmul_gflops": gflops,
        "threads": torch.get_num_threads(),
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": peak_rss_mb(),
        "env": recorded_env(),
        "load_avg": [load_before, load_average()],
    }
    Path(spec["out"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent


def processed_tokens(pair_lengths: list[list[int]], layout: str) -> int:
    """Real (non-pad) tokens through the layers: P+C+R per pair packed, 2P+C+R concatenated."""
    prompt_copies = 1 if layout == "shared_prefix" else 2
    return sum(prompt_copies * p + c + r for p, c, r in pair_lengths)


def summarize(result: dict, warmup: int, batch_size: int) -> dict:
    """Rates of one subprocess over its timed steps (the median step, robust to a busy machine)."""
    ends = result["step_ends"]
    intervals = [b - a for a, b in zip(ends, ends[1:], strict=False)][warmup:]  # (steps,)
    timed_pairs = result["pair_lengths"][warmup * batch_size :]
    steps = len(intervals)
    step_s = statistics.median(intervals)
    cpu = result["step_cpu"]
    cpu_s = statistics.median([b - a for a, b in zip(cpu, cpu[1:], strict=False)][warmup:])
    flops_per_step = statistics.fmean(result["step_flops"][warmup:])
    return {
        "step_s": step_s,
        "mean_step_s": statistics.fmean(intervals),
        "cpu_s_per_step": cpu_s,  # CPU seconds of all the process's threads: the work, less the waiting
        "pairs_per_s": batch_size / step_s,
        "processed_tokens_per_s": processed_tokens(timed_pairs, result["layout"]) / steps / step_s,
        "pair_tokens_per_s": sum(map(sum, timed_pairs)) / steps / step_s,
        "padded_tokens_per_step": statistics.fmean(result["padded_tokens"][warmup:]),
        "mfu": flops_per_step / step_s / (result["matmul_gflops"] * 1e9),
        "model_gflops_per_s": flops_per_step / step_s / 1e9,
        "matmul_gflops": result["matmul_gflops"],
        "peak_rss_mb": result["peak_rss_mb"],
        "rss_after_load_mb": result["rss_after_load_mb"],
        "rss_at_start_mb": result["rss_at_start_mb"],
        "threads": result["threads"],
        "losses_finite": all(math.isfinite(x) for x in result["losses"]),
        "first_loss": result["losses"][0],
        "last_loss": result["losses"][-1],
        "load_avg": result["load_avg"],
    }


def run_side(side: str, round_: int, args, inputs: dict, workdir: Path) -> dict:
    out = workdir / f"result_{side}_{round_}.json"
    spec = {
        **inputs, "side": side, "threads": args.threads, "batch_size": args.batch_size,
        "total_steps": args.warmup + args.steps, "lr": args.lr, "grad_clip": args.grad_clip,
        "output_dir": str(workdir / f"trl_out_{round_}"), "out": str(out),
    }  # fmt: skip
    spec_path = workdir / f"spec_{side}_{round_}.json"
    spec_path.write_text(json.dumps(spec))
    env = worker_env(args.threads, allocator=not args.no_allocator_env)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.train_throughput", "--worker", str(spec_path)],
                   env=env, cwd=REPO, check=True, stdout=sys.stderr)  # fmt: skip
    result = json.loads(out.read_text())
    row = summarize(result, args.warmup, args.batch_size)
    row["process_s"] = time.perf_counter() - began
    row["pair_lengths"] = result["pair_lengths"]
    row["env"] = result["env"]
    print(f"round {round_} {side:>11}: {row['step_s']:.3f} s/step  {row['pairs_per_s']:.2f} pairs/s  "
          f"{row['processed_tokens_per_s']:.0f} processed tok/s  peak RSS {row['peak_rss_mb']:.0f} MB  "
          f"mfu {row['mfu']:.3f}  load {row['load_avg'][1][0]}", file=sys.stderr, flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return {}
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        inputs = build_inputs(args, workdir)
        sides = ["ours", "trl"] + (["ours_concat"] if args.with_concatenated else [])
        rows: dict[str, list[dict]] = {side: [] for side in sides}
        for round_ in range(args.rounds):
            for side in sides:
                rows[side].append(run_side(side, round_, args, inputs, workdir))
    return report(args, rows, inputs, load_start)


def report(args, rows: dict[str, list[dict]], inputs: dict, load_start: list[float]) -> dict:
    import torch
    import transformers
    import trl

    best = {side: min(side_rows, key=lambda r: r["step_s"]) for side, side_rows in rows.items()}
    ours, base = best["ours"], best["trl"]
    lengths = ours["pair_lengths"]
    result = {
        "bench": "train_throughput",
        "ours_pairs_per_s": significant(ours["pairs_per_s"]),
        "trl_pairs_per_s": significant(base["pairs_per_s"]),
        "ratio_vs_trl": round(ours["pairs_per_s"] / base["pairs_per_s"], 3),
        "ratio_vs_trl_per_round": [
            round(o["pairs_per_s"] / t["pairs_per_s"], 3)
            for o, t in zip(rows["ours"], rows["trl"], strict=True)
        ],  # fmt: skip
        "ours_cpu_s_per_step": significant(ours["cpu_s_per_step"]),
        "trl_cpu_s_per_step": significant(base["cpu_s_per_step"]),
        # Work per pair, independent of how much of the cores other processes took.
        "ratio_vs_trl_cpu": round(base["cpu_s_per_step"] / ours["cpu_s_per_step"], 3),
        "ours_peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows["ours"])),
        "trl_peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows["trl"])),
        "ours_rss_after_load_mb": round(ours["rss_after_load_mb"]),
        "trl_rss_after_load_mb": round(base["rss_after_load_mb"]),
        "ours_rss_at_train_start_mb": round(ours["rss_at_start_mb"]),
        "trl_rss_at_train_start_mb": round(base["rss_at_start_mb"]),
        "mfu": significant(ours["mfu"], 3),
        "trl_mfu": significant(base["mfu"], 3),
        "ours_processed_tokens_per_s": round(ours["processed_tokens_per_s"]),
        "trl_processed_tokens_per_s": round(base["processed_tokens_per_s"]),
        "ours_pair_tokens_per_s": round(ours["pair_tokens_per_s"]),
        "trl_pair_tokens_per_s": round(base["pair_tokens_per_s"]),
        "ours_padded_tokens_per_step": round(ours["padded_tokens_per_step"]),
        "trl_padded_tokens_per_step": round(base["padded_tokens_per_step"]),
        "ours_step_s": [significant(r["step_s"]) for r in rows["ours"]],
        "trl_step_s": [significant(r["step_s"]) for r in rows["trl"]],
        "ours_model_gflops_per_s": significant(ours["model_gflops_per_s"]),
        "trl_model_gflops_per_s": significant(base["model_gflops_per_s"]),
        "matmul_gflops": significant(ours["matmul_gflops"]),
        "same_tokens": ours["pair_lengths"] == base["pair_lengths"],
        "mean_prompt_tokens": round(statistics.fmean(p for p, _, _ in lengths), 1),
        "mean_completion_tokens": round(statistics.fmean((c + r) / 2 for _, c, r in lengths), 1),
        "losses_finite": all(r["losses_finite"] for side_rows in rows.values() for r in side_rows),
        "model": {"hidden_size": args.hidden, "intermediate_size": args.intermediate, "num_layers": args.layers,
                  "num_heads": args.heads},  # fmt: skip
        "threads": args.threads,
        "workers": 1,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "shots": args.shots,
        "lr": args.lr,
        "beta": inputs["beta"],
        "allocator_env": ours["env"],
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    if "ours_concat" in best:
        concat = best["ours_concat"]
        result["ours_concat_pairs_per_s"] = significant(concat["pairs_per_s"])
        result["ours_concat_ratio_vs_trl"] = round(concat["pairs_per_s"] / base["pairs_per_s"], 3)
        result["ours_concat_peak_rss_mb"] = round(
            max(r["peak_rss_mb"] for r in rows["ours_concat"])
        )
        result["ours_concat_mfu"] = significant(concat["mfu"], 3)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
