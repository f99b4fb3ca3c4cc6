"""Shared-prefix and multi-query vs concatenated forward+backward on a random Llama-3.2-3B-shaped model.

Synthetic 8-shot episodes, no network, no weights: `python -m bench.gpu_shared_prefix` on an
H100 (about 3 minutes); `--queries 1,4,8` times the multi-query (tree) layout instead, each
support set's prefix shared by Q held-out pairs, at the same pairs per step (issue 15);
`--tiny --device cpu` is a smoke test. Prints one line per case, then a single JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.utils import logging as hf_logging

from fspo_ray.collate import collate_concatenated, collate_packed, collate_tree
from fspo_ray.forward import concatenated_forward, shared_prefix_forward, tree_forward
from fspo_ray.losses import step_loss

PAD = 0

# Llama-3.2-3B shapes, and an 8-shot episode of ~1500 prompt and ~150 completion tokens.
FULL = dict(
    hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, vocab=128256,
    prompt_len=1500, question_len=32, completion_len=150, pairs=8, warmup=2, steps=5,
)  # fmt: skip
TINY = dict(
    hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256,
    prompt_len=96, question_len=6, completion_len=12, pairs=2, warmup=1, steps=2,
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny model and episodes (CPU smoke)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="bfloat16 on cuda, float32 on cpu by default")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--prompt-len", type=int, help="mean few-shot prompt length (shots + question)")
    parser.add_argument(
        "--question-len", type=int, help="mean question block length: the part of the prompt a query owns"
    )
    parser.add_argument("--completion-len", type=int, help="mean length of each completion")
    parser.add_argument("--jitter", type=float, default=0.1, help="+- share of length variation")
    parser.add_argument("--pairs", type=int, help="preference pairs per step")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per case")
    parser.add_argument(
        "--attn",
        default=None,
        help="comma list; default sdpa,flex_attention on cuda and sdpa,eager on cpu",
    )
    parser.add_argument(
        "--modes",
        default=None,
        help="comma list of concatenated, shared_prefix; default both, or concatenated with --queries",
    )
    parser.add_argument(
        "--queries",
        default=None,
        help="comma list of Q: also time the tree layout, pairs in support sets of Q (each divides the largest)",
    )
    parser.add_argument(
        "--no-grad-ckpt", action="store_true", help="disable gradient checkpointing"
    )
    parser.add_argument("--pad-to", type=int, default=16, help="pad rows to a multiple of this")
    parser.add_argument(
        "--peak-flops", type=float, default=989e12, help="dense bf16 peak (H100 SXM: 989e12)"
    )
    parser.add_argument(
        "--time-budget-s", type=float, default=200.0, help="skip cases that would start after this"
    )
    parser.add_argument("--seed", type=int, default=0)
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**(TINY if known.tiny else FULL))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    args.queries = sorted({int(q) for q in args.queries.split(",")}) if args.queries else []
    largest = max(args.queries, default=1)
    if args.queries and (args.queries[0] < 1 or any(largest % q for q in args.queries) or args.pairs % largest):
        parser.error(f"--queries {args.queries}: each Q must divide the largest, and it must divide --pairs {args.pairs}")
    if largest > 1 and args.question_len < 1:
        parser.error("several queries per support set need --question-len >= 1")
    args.modes = args.modes or ("concatenated" if args.queries else "concatenated,shared_prefix")
    on_cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    args.attn = args.attn or ("sdpa,flex_attention" if on_cuda else "sdpa,eager")
    return args


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        use_cache=False,
    )
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    if not args.no_grad_ckpt:
        # transformers renamed gradient_checkpointing_enable; accept both (5.17 on the GPU image).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def synthetic_support_sets(args: argparse.Namespace, per_set: int) -> list[dict]:
    """`collate_tree` examples of `args.pairs` random-token pairs, `per_set` per shared prefix.

    Prefix, question and completion lengths vary by +-jitter, so every layout carries padding;
    a prompt (prefix + question) averages `prompt_len` tokens.
    """
    generator = torch.Generator().manual_seed(args.seed)

    def length(mean: int) -> int:
        scale = 1 + args.jitter * (2 * torch.rand((), generator=generator).item() - 1)
        return max(1, round(mean * scale)) if mean else 0

    def ids(n: int) -> list[int]:
        return torch.randint(1, args.vocab, (n,), generator=generator).tolist()

    ref = -float(args.completion_len) * 12.0
    return [
        {
            "prefix_ids": ids(length(args.prompt_len - args.question_len)),
            "queries": [
                {
                    "question_ids": ids(length(args.question_len)),
                    "chosen_ids": ids(length(args.completion_len)),
                    "rejected_ids": ids(length(args.completion_len)),
                    "ref_chosen_logps": ref,
                    "ref_rejected_logps": ref,
                }
                for _ in range(per_set)
            ],
        }
        for _ in range(args.pairs // per_set)
    ]


def single_pairs(support_sets: list[dict]) -> list[dict]:
    """The same pairs one by one, each with its full prompt (the concatenated and packed layouts)."""
    return [
        {"prompt_ids": s["prefix_ids"] + q["question_ids"], **{k: v for k, v in q.items() if k != "question_ids"}}
        for s in support_sets
        for q in s["queries"]
    ]


def regroup(support_sets: list[dict], queries: int) -> list[dict]:
    """Split each support set into sets of `queries` pairs that share its prefix."""
    return [
        {"prefix_ids": s["prefix_ids"], "queries": s["queries"][i : i + queries]}
        for s in support_sets
        for i in range(0, len(s["queries"]), queries)
    ]


def workload(episodes: list[dict], mode: str) -> dict[str, int]:
    """Real (non-pad) tokens through the layers, scored tokens, and attended (query, key) pairs.

    `episodes` are single pairs (`prompt_ids`, ...) for "concatenated" and "shared_prefix" and
    `collate_tree` examples for "tree": the prefix once, then each query's question and both
    completions against the prefix and that question.
    """
    tokens = scored = attended = 0
    if mode == "tree":
        for example in episodes:
            p = len(example["prefix_ids"])
            tokens += p
            attended += p * (p + 1) // 2
            for query in example["queries"]:
                q, c, r = (len(query[k]) for k in ("question_ids", "chosen_ids", "rejected_ids"))
                tokens += q + c + r
                scored += c + r
                attended += q * p + q * (q + 1) // 2
                attended += c * (p + q) + c * (c + 1) // 2 + r * (p + q) + r * (r + 1) // 2
        return {"tokens": tokens, "scored_tokens": scored, "attended_pairs": attended}
    for episode in episodes:
        p, c, r = (len(episode[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        scored += c + r
        if mode == "concatenated":
            tokens += 2 * p + c + r
            attended += (p + c) * (p + c + 1) // 2 + (p + r) * (p + r + 1) // 2
        else:
            tokens += p + c + r
            attended += p * (p + 1) // 2 + c * p + c * (c + 1) // 2 + r * p + r * (r + 1) // 2
    return {"tokens": tokens, "scored_tokens": scored, "attended_pairs": attended}


def model_flops(model: torch.nn.Module, work: dict[str, int]) -> float:
    """Training FLOPs of one step, without recomputation (MFU, not hardware utilisation).

    6 * non-embedding params per token, 6 * hidden * vocab per scored token (lm_head runs on
    scored positions only), and 3 * 4 * layers * heads * head_dim per attended pair.
    """
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    dense = sum(p.numel() for p in model.parameters()) - embedding  # tied lm_head counted once
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim
    return (
        6 * dense * work["tokens"]
        + 6 * config.hidden_size * config.vocab_size * work["scored_tokens"]
        + attention * work["attended_pairs"]
    )


def significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


FORWARDS = {"concatenated": concatenated_forward, "shared_prefix": shared_prefix_forward}
COLLATES = {"concatenated": collate_concatenated, "shared_prefix": collate_packed}


def run_case(
    model, batch, attn: str, mode: str, tokens: int, step_flops: float, args
) -> tuple[dict, torch.Tensor]:
    """Warm up, then time forward+backward steps; returns the row and the last log-probs."""
    on_cuda = args.device.startswith("cuda")
    model.set_attn_implementation(attn)
    forward = tree_forward if mode.startswith("tree") else FORWARDS[mode]
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(args.device)
            start = time.perf_counter()
        output = forward(model, batch)
        # The Ray Train loop's objective; the official recipe's IPO beta.
        loss, _ = step_loss(output, batch, kind="preference", loss_type="ipo", beta=0.01)
        loss.backward()
        model.zero_grad(set_to_none=True)
    synchronize(args.device)
    step_s = (time.perf_counter() - start) / args.steps
    logps = torch.cat([output.chosen_logps, output.rejected_logps]).detach().float().cpu()  # (2P,)
    row = {
        "step_s": significant(step_s),
        "pairs_per_s": significant(args.pairs / step_s),
        "tokens_per_s": significant(tokens / step_s),
        "tflops": significant(step_flops / step_s / 1e12),
        "mfu": significant(step_flops / step_s / args.peak_flops, 3) if on_cuda else None,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda else None,
    }
    return row, logps


def layouts(args: argparse.Namespace, sets: list[dict]) -> dict[str, tuple[list[dict], str]]:
    """Each timed layout's examples and workload mode; every layout holds the same pairs, in order."""
    pairs = single_pairs(sets)
    cases = {mode: (pairs, mode) for mode in args.modes.split(",")}
    for queries in args.queries:
        cases[f"tree_q{queries}"] = (regroup(sets, queries), "tree")
    return cases


def token_bound(prompt: float, completion: float, queries: int) -> float:
    """Issue 15's bound on the tokens Q queries per prefix save over Q = 1: Q(P + 2R) / (P + 2QR)."""
    return queries * (prompt + 2 * completion) / (prompt + 2 * queries * completion)


def summarize_queries(result: dict, args: argparse.Namespace) -> dict:
    """Per attention kernel and Q: pairs/s, MFU, memory, and the speedups over Q = 1 and concatenated."""
    by_queries: dict[str, dict] = {}
    for attn in args.attn.split(","):
        rows = {c["mode"]: c for c in result["cases"] if c["attn"] == attn and "step_s" in c}
        concat, q1 = rows.get("concatenated"), rows.get("tree_q1")
        per_q = {}
        for queries in args.queries:
            row = rows.get(f"tree_q{queries}")
            if row is None:
                continue
            per_q[str(queries)] = {
                "pairs_per_s": row["pairs_per_s"],
                "mfu": row["mfu"],
                "peak_mem_gb": row["peak_mem_gb"],
                "speedup_vs_q1": round(row["pairs_per_s"] / q1["pairs_per_s"], 3) if q1 else None,
                "speedup_vs_concatenated": round(row["pairs_per_s"] / concat["pairs_per_s"], 3) if concat else None,
                "token_bound_vs_q1": round(
                    token_bound(result["mean_prompt_len"], result["mean_completion_len"], queries), 3
                ),
            }
        by_queries[attn] = per_q
    return by_queries


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    began = time.perf_counter()
    model = build_model(args)
    sets = synthetic_support_sets(args, max(args.queries, default=1))
    pairs = single_pairs(sets)
    cases = layouts(args, sets)
    batches = {}
    for name, (examples, mode) in cases.items():
        collate = collate_tree if mode == "tree" else COLLATES[mode]
        batches[name] = {k: v.to(args.device) for k, v in collate(examples, PAD, args.pad_to).items()}
    result = {
        "bench": "gpu_shared_prefix",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "dtype": args.dtype,
        "params": sum(p.numel() for p in model.parameters()),
        "grad_ckpt": not args.no_grad_ckpt,
        "pairs": args.pairs,
        "queries": args.queries,
        "mean_prompt_len": sum(len(e["prompt_ids"]) for e in pairs) / len(pairs),
        "mean_completion_len": sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in pairs)
        / (2 * len(pairs)),
        "row_len": {name: batch["input_ids"].shape[1] for name, batch in batches.items()},
        "rows": {name: batch["input_ids"].shape[0] for name, batch in batches.items()},
        "peak_flops": args.peak_flops,
        "cases": [],
    }
    reference_logps = None  # the first successful case (concatenated, when timed)
    for attn in args.attn.split(","):
        for name, batch in batches.items():
            case = {"attn": attn, "mode": name}
            if time.perf_counter() - began > args.time_budget_s:
                case["error"] = f"skipped: past the {args.time_budget_s:.0f} s time budget"
                result["cases"].append(case)
                continue
            work = workload(*cases[name])
            case_start = time.perf_counter()
            try:
                row, logps = run_case(
                    model, batch, attn, name, work["tokens"], model_flops(model, work), args
                )
            except Exception as error:  # report per case; one failing kernel must not end the run
                case["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                model.zero_grad(set_to_none=True)
            else:
                case.update(row)
                if reference_logps is None:
                    reference_logps = logps
                diff = (logps - reference_logps).abs().max().item()
                case["max_abs_logp_diff_vs_ref"] = significant(diff, 3)
            case["case_s"] = round(time.perf_counter() - case_start, 1)
            result["cases"].append(case)
            print(json.dumps(case), file=sys.stderr, flush=True)

    result["max_abs_ref_logp"] = (
        round(reference_logps.abs().max().item(), 2) if reference_logps is not None else None
    )
    result["speedup_pairs_per_s"] = {}
    for attn in args.attn.split(","):
        rows = {c["mode"]: c for c in result["cases"] if c["attn"] == attn and "step_s" in c}
        if {"concatenated", "shared_prefix"} <= rows.keys():
            speedup = rows["shared_prefix"]["pairs_per_s"] / rows["concatenated"]["pairs_per_s"]
            result["speedup_pairs_per_s"][attn] = round(speedup, 3)
    if args.queries:
        result["by_queries"] = summarize_queries(result, args)
    result["total_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
