"""CPU training throughput of multi-query FSPO episodes against TRL's DPOTrainer(loss_type="ipo").

    python -m bench.train_throughput --queries 1,4,8   # 2 rounds x (ours at Q = 1, 4, 8, trl)
    python -m bench.train_throughput --quick           # smoke: Q = 1, 2, one round of 2 timed steps

Model: a tiny Llama (hidden 256, 4 layers, 4 heads by default; --hidden etc.) with a BPE vocabulary
trained on the world's text rendering (the long-prompt case), random init, built once and loaded
by every subprocess. Data: support sets of one world user's 8 shots (official markdown template)
and Qmax = max(--queries) held-out pairs of that user. Every side trains on the same pairs with the
same tokens, in the same order, at the same number of pairs per optimizer step (B): ours at Q
groups them into B/Q support sets of Q queries (rows `prefix + Q x (question, chosen, rejected)`),
TRL gets each pair's full prompt string. Both precompute reference log-probs before the clock starts.
Sides, each in its own process with the same threads and allocator settings, alternating:
  ours_q<Q>  collate_tree + tree_forward + losses.step_loss (IPO) + grad clip + fused AdamW,
             in a plain process (no Ray, no DeepSpeed)
  trl        DPOTrainer(DPOConfig(loss_type="ipo", precompute_ref_log_probs=True)) on the same
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
# The rich text rendering and its BPE tokenizer: world.yaml defaults to the compact world now.
TEXT_WORLD = ["world.rendering=text", "tiny_model.tokenizer=bpe", "episodes.signed_shots=false",
              "tiny_model.initializer_range=0.02"]  # fmt: skip
QUERY_KEYS = ("question_ids", "chosen_ids", "rejected_ids")
QUICK = dict(steps=2, warmup=1, rounds=1, queries="1,2", corpus_sentences=2000)


def parse_queries(text: str) -> list[int]:
    try:
        queries = sorted({int(q) for q in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--queries takes a comma list of integers, got {text!r}") from None
    if queries[0] < 1:
        raise argparse.ArgumentTypeError(f"--queries must be >= 1, got {text!r}")
    return queries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", default=str(REPO / "jobs/configs/world.yaml"), help="world + tiny model config"
    )
    p.add_argument("--queries", type=parse_queries, default="1,4,8",
                   help="held-out pairs per support set (Q) to time ours at; each must divide the largest")  # fmt: skip
    p.add_argument("--hidden", type=int, default=256, help="model width")
    p.add_argument("--intermediate", type=int, default=688, help="MLP width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads (= key/value heads)")
    p.add_argument("--steps", type=int, default=16, help="timed optimizer steps per side and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per optimizer step, every side (default: the largest Q, one support set)")  # fmt: skip
    p.add_argument("--shots", type=int, default=8, help="few-shot examples per support set")
    p.add_argument("--max-length", type=int, default=1024,
                   help="episodes.max_length: the oldest shots drop until prefix + question + completion fit")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each side")
    p.add_argument("--rounds", type=int, default=2, help="alternations of (ours at each Q, trl)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate, every side")
    p.add_argument(
        "--beta", type=float, default=None, help="IPO beta (default: the config's loss.beta)"
    )
    p.add_argument("--grad-clip", type=float, default=10.0, help="max grad norm, every side")
    p.add_argument(
        "--corpus-sentences", type=int, default=None, help="tokenizer corpus size (default: config)"
    )
    p.add_argument(
        "--with-concatenated",
        action="store_true",
        help="also time ours with the concatenated layout (TRL's two rows per pair)",
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
    largest = max(args.queries)
    args.batch_size = args.batch_size or largest
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1 or args.rounds < 1:
        p.error("--steps, --warmup, --batch-size and --rounds must be at least 1")
    if any(largest % q for q in args.queries) or args.batch_size % largest:
        p.error(f"every Q of --queries {args.queries} must divide the largest ({largest}), and it must divide "
                f"--batch-size {args.batch_size}: each side then trains the same pairs per step")  # fmt: skip
    return args


# --------------------------------------------------------------------------- shared inputs


def build_inputs(args: argparse.Namespace, workdir: Path) -> dict:
    """Train the tokenizer, build and save the tiny model, and write the pairs every side uses."""
    from transformers.utils import logging as hf_logging

    from fspo_ray.config import load_config
    from fspo_ray.modeling import build_tiny_from_config, load_tokenizer

    hf_logging.disable_progress_bar()
    overrides = [*TEXT_WORLD, f"episodes.max_length={args.max_length}", f"tiny_model.output={workdir / 'model'}",
                 f"tiny_model.hidden_size={args.hidden}", f"tiny_model.intermediate_size={args.intermediate}",
                 f"tiny_model.num_layers={args.layers}", f"tiny_model.num_heads={args.heads}",
                 f"tiny_model.num_kv_heads={args.heads}",
                 f"tiny_model.max_position_embeddings={max(1024, args.max_length)}"]  # fmt: skip
    if args.corpus_sentences:
        overrides.append(f"tiny_model.corpus_sentences={args.corpus_sentences}")
    cfg = load_config(args.config, overrides)
    model_dir = build_tiny_from_config(cfg)
    tokenizer = load_tokenizer(str(model_dir))
    n_pairs = (args.warmup + args.steps) * args.batch_size
    records = pair_records(cfg, tokenizer, args.shots, n_pairs, max(args.queries))
    records_path = workdir / "records.json"
    records_path.write_text(json.dumps(records))
    beta = args.beta if args.beta is not None else cfg.loss.beta
    return {"model_dir": str(model_dir), "records": str(records_path), "beta": beta}


def pair_records(cfg, tokenizer, shots: int, n_pairs: int, per_set: int) -> list[dict]:
    """`n_pairs` held-out pairs of world users, `per_set` consecutive ones per support set.

    Each record holds our token ids (`prefix_ids` shared by its support set, `question_ids`,
    `chosen_ids`, `rejected_ids`) and the strings TRL tokenizes itself: `prompt` (the markdown
    prompt with the shots that fit `episodes.max_length` for every query of the set) and the
    completions without the EOS string, which TRL appends (ours has it in the ids).
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
    if per_user - min(shots, per_user - 1) < per_set:
        raise ValueError(f"{per_set} queries and {shots} shots need more than {per_user} pairs per user")
    n_users = -(-n_pairs // (per_user // per_set * per_set)) + 2  # two spare users
    users = {
        uid: [Preference(r["question"], r["chosen"], r["rejected"])
              for r in world.user_preferences(uid, per_user, seed=cfg.seed)]
        for uid in world.user_ids("train", n_users)
    }  # fmt: skip
    min_shots = min(cfg.episodes.min_shots, shots)
    episodes, _ = build_episodes(users, num_shots=shots, min_shots=min_shots, seed=cfg.seed,
                                 queries_per_episode=per_set)  # fmt: skip
    signed = cfg.episodes.signed_shots

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    records: list[dict] = []
    for episode in (e for e in episodes if len(e.queries) == per_set):
        encoded = encode_episode(
            episode, encode, eos_token=tokenizer.eos_token, max_length=cfg.episodes.max_length,
            min_shots=min_shots, template="markdown", signed=signed,
        )  # fmt: skip
        if encoded is None:
            continue
        kept = episode.shots[len(episode.shots) - encoded.num_shots :]  # oldest shots drop first
        support_set = len(records) // per_set
        for query, ids in zip(episode.queries, encoded.queries, strict=True):
            prompt = render_prompt(kept, query.question, signed=signed)
            if encode(prompt) != encoded.prefix_ids + ids.question_ids:
                raise RuntimeError("the prompt string does not tokenize to prefix + question ids")
            records.append({
                "support_set": support_set,
                "prompt": prompt,
                "chosen": render_completion(query.chosen, eos_token=""),
                "rejected": render_completion(query.rejected, eos_token=""),
                "prefix_ids": encoded.prefix_ids,
                "question_ids": ids.question_ids,
                "chosen_ids": ids.chosen_ids,
                "rejected_ids": ids.rejected_ids,
                "num_shots": encoded.num_shots,
            })  # fmt: skip
        if len(records) >= n_pairs:
            return records[:n_pairs]
    raise RuntimeError(f"only {len(records)} of {n_pairs} pairs fit episodes.max_length")


def support_sets(records: list[dict], queries: int) -> list[dict]:
    """`collate_tree` examples: each run of `queries` consecutive records of one support set."""
    examples = []
    for start in range(0, len(records), queries):
        group = records[start : start + queries]
        if len({r["support_set"] for r in group}) != 1 or len(group) != queries:
            raise ValueError(f"records {start}..{start + queries - 1} are not {queries} queries of one support set")
        examples.append({"prefix_ids": group[0]["prefix_ids"], "queries": [{k: r[k] for k in QUERY_KEYS} for r in group]})
    return examples


def single_pairs(records: list[dict]) -> list[dict]:
    """`collate_concatenated` examples: one pair each, the full prompt."""
    return [{"prompt_ids": r["prefix_ids"] + r["question_ids"], "chosen_ids": r["chosen_ids"],
             "rejected_ids": r["rejected_ids"]} for r in records]  # fmt: skip


# --------------------------------------------------------------------------- the sides


def _layout(layout: str):
    from fspo_ray.collate import collate_concatenated, collate_tree
    from fspo_ray.forward import concatenated_forward, tree_forward

    if layout == "tree":
        return collate_tree, tree_forward
    elif layout == "concatenated":
        return collate_concatenated, concatenated_forward
    raise ValueError(f"unknown layout {layout!r}; expected 'tree' or 'concatenated'")


def _pairs_of(example: dict, layout: str) -> list[dict]:
    return example["queries"] if layout == "tree" else [example]


def score_pairs(model, examples: list[dict], *, layout: str, pad_token_id: int,
                rows_per_batch: int) -> tuple[list[float], list[float]]:  # fmt: skip
    """Summed chosen and rejected log-probs of every pair of `examples`, in order, without grad."""
    import torch

    collate, forward = _layout(layout)
    chosen: list[float] = []
    rejected: list[float] = []
    with torch.no_grad():
        for start in range(0, len(examples), rows_per_batch):
            out = forward(model, collate(examples[start : start + rows_per_batch], pad_token_id))
            chosen += out.chosen_logps.tolist()
            rejected += out.rejected_logps.tolist()
    return chosen, rejected


@dataclass
class SideRun:
    """What one side did, step by step; the parent turns it into rates."""

    side: str
    layout: str  # tree: one row per support set; concatenated: rows P+C and P+R per pair
    queries: int = 1  # pairs per row of the tree layout
    step_ends: list[float] = field(default_factory=list)  # perf_counter(); [0] is the start
    step_cpu: list[float] = field(default_factory=list)  # process_time(), all threads, same points
    losses: list[float] = field(default_factory=list)  # mean loss of each step
    pair_lengths: list[list[int]] = field(default_factory=list)  # [P, C, R] per pair, P = prefix + question
    prefix_lengths: list[int] = field(default_factory=list)  # the shots' part of P, per pair (ours)
    padded_tokens: list[int] = field(default_factory=list)  # rows x row length per step
    rss_at_start_mb: float = 0.0  # peak RSS when training starts: imports, model, data, reference pass

    def mark(self) -> None:
        """The end of a step (or the start of the first)."""
        if not self.step_ends:
            self.rss_at_start_mb = peak_rss_mb()
        self.step_ends.append(time.perf_counter())
        self.step_cpu.append(time.process_time())


def train_ours(model, records: list[dict], *, pad_token_id: int, batch_size: int, steps: int, lr: float,
               beta: float, grad_clip: float, queries: int = 1, layout: str = "tree",
               side: str | None = None) -> SideRun:  # fmt: skip
    """The Ray Train worker's step (collate, forward, `step_loss`), plus grad clipping and fused
    AdamW, without Ray or DeepSpeed: `steps` optimizer steps of `batch_size` pairs each, as
    `batch_size // queries` support sets of `queries` pairs (tree) or single pairs (concatenated)."""
    import torch

    from fspo_ray.losses import step_loss

    records = records[: steps * batch_size]
    if layout == "tree":
        examples, rows = support_sets(records, queries), batch_size // queries
    else:
        examples, rows, queries = single_pairs(records), batch_size, 1
    batches = [examples[i : i + rows] for i in range(0, len(examples), rows)]
    collate, forward = _layout(layout)

    # Reference log-probs of the initial policy, once and untimed (TRL: precompute_ref_log_probs).
    chosen, rejected = score_pairs(model, examples, layout=layout, pad_token_id=pad_token_id, rows_per_batch=rows)
    pairs = [pair for example in examples for pair in _pairs_of(example, layout)]
    for pair, c, r in zip(pairs, chosen, rejected, strict=True):
        pair["ref_chosen_logps"], pair["ref_rejected_logps"] = c, r

    params = [p for p in model.parameters() if p.requires_grad]
    # TRL's default optim is adamw_torch_fused.
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    run = SideRun(side=side or f"ours_q{queries}", layout=layout, queries=queries)
    run.pair_lengths = [[len(r["prefix_ids"]) + len(r["question_ids"]), len(r["chosen_ids"]),
                         len(r["rejected_ids"])] for r in records]  # fmt: skip
    run.prefix_lengths = [len(r["prefix_ids"]) for r in records]
    model.train()
    run.mark()
    for chunk in batches:
        batch = collate(chunk, pad_token_id)
        out = forward(model, batch)
        loss, stats = step_loss(out, batch, kind="preference", loss_type="ipo", beta=beta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.mark()
        run.losses.append(float(stats["loss"] / stats["pairs"]))
        run.padded_tokens.append(batch["input_ids"].numel())
    return run


def train_trl(model, tokenizer, records: list[dict], *, batch_size: int, steps: int, lr: float, beta: float,
              grad_clip: float, output_dir: str) -> SideRun:  # fmt: skip
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


# --------------------------------------------------------------------------- work per step


def processed_tokens(pair_lengths: list[list[int]], layout: str, prefix_lengths: list[int] | None = None,
                     queries: int = 1) -> int:  # fmt: skip
    """Real (non-pad) tokens through the layers: 2P + C + R per pair concatenated; P + C + R per pair
    in the tree layout, less the prefix of every query but the first of its support set."""
    if layout == "concatenated":
        return sum(2 * p + c + r for p, c, r in pair_lengths)
    shared = sum(prefix for i, prefix in enumerate(prefix_lengths or []) if i % queries)
    return sum(p + c + r for p, c, r in pair_lengths) - shared


def step_flops(model, pair_lengths: list[list[int]], layout: str, prefix_lengths: list[int] | None = None,
               queries: int = 1) -> float:  # fmt: skip
    """Model FLOPs of one step (bench.gpu_shared_prefix.model_flops, the GPU bench's formula)."""
    from bench.gpu_shared_prefix import model_flops, workload

    if layout == "concatenated":
        pairs = [{"prompt_ids": range(p), "chosen_ids": range(c), "rejected_ids": range(r)}
                 for p, c, r in pair_lengths]  # fmt: skip
        return model_flops(model, workload(pairs, "concatenated"))
    sets = []
    for start in range(0, len(pair_lengths), queries):
        prefix = prefix_lengths[start]
        sets.append({"prefix_ids": range(prefix), "queries": [
            {"question_ids": range(p - prefix), "chosen_ids": range(c), "rejected_ids": range(r)}
            for p, c, r in pair_lengths[start : start + queries]]})  # fmt: skip
    return model_flops(model, workload(sets, "tree"))


def token_bound(prompt: float, completion: float, queries: int) -> float:
    """Issue 15's bound on the speedup of Q queries per prefix over Q = 1, in tokens:
    Q(P + 2R) / (P + 2QR), P the prompt (shared) and R each completion."""
    return queries * (prompt + 2 * completion) / (prompt + 2 * queries * completion)


def token_bound_vs_trl(prompt: float, completion: float, queries: int) -> float:
    """The same against TRL's two rows per pair (2P + 2R tokens): 2Q(P + R) / (P + 2QR)."""
    return 2 * queries * (prompt + completion) / (prompt + 2 * queries * completion)


def side_result(run: SideRun, model, batch_size: int, gflops: float) -> dict:
    """A side's raw record: its step clock, lengths, FLOPs per step and memory."""
    import torch

    b = batch_size
    flops = [step_flops(model, run.pair_lengths[i : i + b], run.layout, run.prefix_lengths[i : i + b], run.queries)
             for i in range(0, len(run.pair_lengths), b)]  # fmt: skip
    return {**asdict(run), "step_flops": flops, "matmul_gflops": gflops, "threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb(), "env": recorded_env()}  # fmt: skip


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
        run = train_ours(model, records, pad_token_id=tokenizer.pad_token_id, queries=spec["queries"],
                         layout=spec["layout"], side=spec["side"], **common)  # fmt: skip
    # Best of before and after training: a rate measured while other jobs hold the cores would
    # make the MFU look higher than it is.
    result = side_result(run, model, spec["batch_size"], max(gflops, matmul_gflops()))
    result.update(rss_after_load_mb=rss_after_load, load_avg=[load_before, load_average()])
    Path(spec["out"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent


def summarize(result: dict, warmup: int, batch_size: int) -> dict:
    """Rates of one subprocess over its timed steps (the median step, robust to a busy machine)."""
    ends = result["step_ends"]
    intervals = [b - a for a, b in zip(ends, ends[1:], strict=False)][warmup:]  # (steps,)
    timed = slice(warmup * batch_size, None)
    timed_pairs = result["pair_lengths"][timed]
    steps = len(intervals)
    step_s = statistics.median(intervals)
    cpu = result["step_cpu"]
    cpu_s = statistics.median([b - a for a, b in zip(cpu, cpu[1:], strict=False)][warmup:])
    flops_per_step = statistics.fmean(result["step_flops"][warmup:])
    tokens = processed_tokens(timed_pairs, result["layout"], result["prefix_lengths"][timed], result["queries"])
    return {
        "step_s": step_s,
        "mean_step_s": statistics.fmean(intervals),
        "cpu_s_per_step": cpu_s,  # CPU seconds of all the process's threads: the work, less the waiting
        "pairs_per_s": batch_size / step_s,
        "processed_tokens_per_step": tokens / steps,
        "processed_tokens_per_s": tokens / steps / step_s,
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
        "pair_lengths": result["pair_lengths"],
        "prefix_lengths": result["prefix_lengths"],
        "env": result["env"],
    }


def side_layout(side: str) -> tuple[str, int]:
    """(layout, queries) of a side: ours_q<Q>, ours_concat or trl."""
    if side.startswith("ours_q"):
        return "tree", int(side.removeprefix("ours_q"))
    return "concatenated", 1


def run_side(side: str, round_: int, args, inputs: dict, workdir: Path) -> dict:
    out = workdir / f"result_{side}_{round_}.json"
    layout, queries = side_layout(side)
    spec = {
        **inputs, "side": side, "layout": layout, "queries": queries, "threads": args.threads,
        "batch_size": args.batch_size, "total_steps": args.warmup + args.steps, "lr": args.lr,
        "grad_clip": args.grad_clip, "output_dir": str(workdir / f"trl_out_{round_}"), "out": str(out),
    }  # fmt: skip
    spec_path = workdir / f"spec_{side}_{round_}.json"
    spec_path.write_text(json.dumps(spec))
    env = worker_env(args.threads, allocator=not args.no_allocator_env)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.train_throughput", "--worker", str(spec_path)],
                   env=env, cwd=REPO, check=True, stdout=sys.stderr)  # fmt: skip
    row = summarize(json.loads(out.read_text()), args.warmup, args.batch_size)
    row["process_s"] = time.perf_counter() - began
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
        sides = [f"ours_q{q}" for q in args.queries] + ["trl"] + (["ours_concat"] if args.with_concatenated else [])
        rows: dict[str, list[dict]] = {side: [] for side in sides}
        for round_ in range(args.rounds):
            for side in sides:
                rows[side].append(run_side(side, round_, args, inputs, workdir))
    return report(args, rows, inputs, load_start)


def report(args, rows: dict[str, list[dict]], inputs: dict, load_start: list[float]) -> dict:
    """The side-by-side table on stdout, then one JSON line (also returned)."""
    import torch
    import transformers
    import trl

    best = {side: min(side_rows, key=lambda r: r["step_s"]) for side, side_rows in rows.items()}
    base = best["trl"]
    trl_peak = max(r["peak_rss_mb"] for r in rows["trl"])
    lengths = base["pair_lengths"]
    first_ours = best[f"ours_q{args.queries[0]}"]
    prompt = statistics.fmean(p for p, _, _ in lengths)
    completion = statistics.fmean((c + r) / 2 for _, c, r in lengths)
    prefix = statistics.fmean(first_ours["prefix_lengths"])

    def ours_row(side: str) -> dict:
        ours, queries = best[side], side_layout(side)[1]
        peak = max(r["peak_rss_mb"] for r in rows[side])
        return {
            "ours_pairs_per_s": significant(ours["pairs_per_s"]),
            "ratio_vs_trl": round(ours["pairs_per_s"] / base["pairs_per_s"], 3),
            "ours_peak_rss_mb": round(peak),
            "peak_rss_vs_trl": round(peak / trl_peak, 3),
            "ratio_vs_trl_per_round": [round(o["pairs_per_s"] / t["pairs_per_s"], 3)
                                       for o, t in zip(rows[side], rows["trl"], strict=True)],  # fmt: skip
            "ours_step_s": [significant(r["step_s"]) for r in rows[side]],
            "ours_cpu_s_per_step": significant(ours["cpu_s_per_step"]),
            # Work per pair, independent of how much of the cores other processes took.
            "ratio_vs_trl_cpu": round(base["cpu_s_per_step"] / ours["cpu_s_per_step"], 3),
            "support_sets_per_step": args.batch_size // queries,
            "mfu": significant(ours["mfu"], 3),
            "model_gflops_per_s": significant(ours["model_gflops_per_s"]),
            "processed_tokens_per_step": round(ours["processed_tokens_per_step"]),
            "processed_tokens_per_s": round(ours["processed_tokens_per_s"]),
            "padded_tokens_per_step": round(ours["padded_tokens_per_step"]),
            # What the tokens alone predict, on these very pairs, against TRL's rows.
            "processed_token_ratio_vs_trl": round(base["processed_tokens_per_step"] / ours["processed_tokens_per_step"], 3),
            "token_bound_vs_q1": round(token_bound(prompt, completion, queries), 3),
            "token_bound_vs_trl": round(token_bound_vs_trl(prompt, completion, queries), 3),
            "rss_at_train_start_mb": round(ours["rss_at_start_mb"]),
            "first_loss": significant(ours["first_loss"]),
            "last_loss": significant(ours["last_loss"]),
        }

    by_queries = {str(side_layout(s)[1]): ours_row(s) for s in rows if s.startswith("ours_q")}
    q1 = by_queries.get("1")
    for row in by_queries.values():
        if q1:
            row["speedup_vs_q1"] = round(row["ours_pairs_per_s"] / q1["ours_pairs_per_s"], 3)
    result = {
        "bench": "train_throughput",
        "queries": args.queries,
        "by_queries": by_queries,
        "trl_pairs_per_s": significant(base["pairs_per_s"]),
        "trl_peak_rss_mb": round(trl_peak),
        "trl_step_s": [significant(r["step_s"]) for r in rows["trl"]],
        "trl_cpu_s_per_step": significant(base["cpu_s_per_step"]),
        "trl_mfu": significant(base["mfu"], 3),
        "trl_model_gflops_per_s": significant(base["model_gflops_per_s"]),
        "trl_processed_tokens_per_step": round(base["processed_tokens_per_step"]),
        "trl_processed_tokens_per_s": round(base["processed_tokens_per_s"]),
        "trl_padded_tokens_per_step": round(base["padded_tokens_per_step"]),
        "trl_rss_at_train_start_mb": round(base["rss_at_start_mb"]),
        "matmul_gflops": significant(base["matmul_gflops"]),
        # TRL tokenized the strings itself and every side saw the same pairs' tokens.
        "same_tokens": all(best[s]["pair_lengths"] == lengths for s in rows),
        "pairs_per_step": args.batch_size,
        "mean_prompt_tokens": round(prompt, 1),
        "mean_prefix_tokens": round(prefix, 1),
        "mean_question_tokens": round(prompt - prefix, 1),
        "mean_completion_tokens": round(completion, 1),
        "token_bound_formula": "Q(P+2R)/(P+2QR) vs Q=1; 2Q(P+R)/(P+2QR) vs TRL",
        "losses_finite": all(r["losses_finite"] for side_rows in rows.values() for r in side_rows),
        "rendering": "text",
        "model": {"hidden_size": args.hidden, "intermediate_size": args.intermediate, "num_layers": args.layers,
                  "num_heads": args.heads},  # fmt: skip
        "threads": args.threads,
        "workers": 1,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "shots": args.shots,
        "max_length": args.max_length,
        "lr": args.lr,
        "beta": inputs["beta"],
        "allocator_env": base["env"],
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
        result["ours_concat_peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in rows["ours_concat"]))
        result["ours_concat_mfu"] = significant(concat["mfu"], 3)
    print(f"{args.batch_size} pairs per optimizer step; prompt {prompt:.0f} tokens (prefix {prefix:.0f}), "
          f"completion {completion:.0f}; {args.threads} threads, one process per side")  # fmt: skip
    print(f"{'side':>12} {'pairs/s':>8} {'x TRL':>6} {'peak MB':>8} {'bound x TRL':>12}")
    for q, row in by_queries.items():
        print(f"{'ours Q=' + q:>12} {row['ours_pairs_per_s']:>8.2f} {row['ratio_vs_trl']:>6.2f} "
              f"{row['ours_peak_rss_mb']:>8} {row['token_bound_vs_trl']:>12.2f}")  # fmt: skip
    print(f"{'TRL':>12} {result['trl_pairs_per_s']:>8.2f} {1.0:>6.2f} {result['trl_peak_rss_mb']:>8}")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
