"""Serve latency: the RAT graph over HTTP vs the same two stages in one process, and cache hits.

    python -m bench.serve_latency             # ~25 min on this shared 2-core machine
    python -m bench.serve_latency --quick     # smoke: fewer requests

Model: a random-init model of the world's tiny size (jobs/configs/world.yaml, 3.6M params),
built in a temp dir, with special and whitespace-only tokens suppressed so every generation
runs to its token budget (fixed work per request, the same on every path); or
--persona-model/--answer-model for trained ones.
Token budgets default to the world's lengths: descriptions ~38 tokens (max 57), answers ~27
(max 40), so persona 48 and answer 32 tokens.

Paths, each closed-loop at concurrency 1, 8, 32:
  graph      HTTP -> Ingress -> PersonaDeployment -> AnswerDeployment, every user new (cache misses)
  inprocess  Personalizer.describe_many + answer_many in this process (one engine, one torch thread)
  cache      the graph with the persona cached (only the answer stage runs)
Threads: each stage replica asks Ray for 1 CPU, so Ray gives it OMP_NUM_THREADS=1; the
in-process baseline also runs torch on 1 thread. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAX_QUEUED = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--persona-model", help="persona (RAT describe) model dir; default: a random world-size model")
    p.add_argument("--answer-model", help="answer model dir; default: the persona model")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=24, help="requests per level = max(this, 4 x concurrency)")
    p.add_argument("--persona-tokens", type=int, default=48)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="8 requests per level at concurrency 1 and 8")
    p.add_argument("--out", help="also write the full results as JSON here")
    return p.parse_args(argv)


def build_world_model(out: Path) -> str:
    """The world's tiny model shape, random weights; special tokens suppressed (fixed-length output)."""
    from transformers import AutoTokenizer, GenerationConfig

    from fspo_ray.config import load_config
    from fspo_ray.modeling import build_tiny_from_config

    cfg = load_config("jobs/configs/world.yaml", [f"tiny_model.output={out}"])
    path = build_tiny_from_config(cfg)
    tok = AutoTokenizer.from_pretrained(path)
    gen = GenerationConfig.from_pretrained(path)
    blank = [i for i in range(len(tok)) if not tok.decode([i]).strip()]
    gen.suppress_tokens = sorted(set(blank + tok.all_special_ids))
    gen.save_pretrained(path)
    return str(path)


def workload(n_users: int, shots: int):
    """World users: `shots` preferences each and one more question."""
    from fspo_ray.config import load_config
    from fspo_ray.episodes import Preference
    from fspo_ray.world import world_from_config

    world = world_from_config(load_config("jobs/configs/world.yaml").world)
    users = []
    for uid in world.user_ids("train", n_users):
        rows = world.user_preferences(uid, shots + 1)
        prefs = [Preference(r["question"], r["chosen"], r["rejected"]) for r in rows[:shots]]
        users.append((uid, prefs, rows[shots]["question"]))
    return users


def summarize(latencies: list[float], codes: Counter, wall: float) -> dict:
    ok = sorted(latencies)
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) >= 2 else ok * 99
    return {"n": sum(codes.values()), "ok": len(ok), "p50_ms": 1000 * statistics.median(ok) if ok else None,
            "p99_ms": 1000 * q[98] if ok else None, "throughput_rps": len(ok) / wall,
            "status_counts": {str(k): v for k, v in sorted(codes.items())}}


# --------------------------------------------------------------------------- in-process


def run_inprocess(personalizer, users, concurrency: int, n: int, persona_sampling, answer_sampling) -> dict:
    lock, counter = threading.Lock(), iter(range(n))
    latencies: list[float] = []

    def worker():
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            _, prefs, question = users[k % len(users)]
            t0 = time.perf_counter()
            desc = personalizer.describe_many([prefs], persona_sampling)[0].text
            personalizer.answer_many([(prefs, desc, question)], answer_sampling)
            with lock:
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return summarize(latencies, Counter({200: len(latencies)}), time.perf_counter() - t0)


# --------------------------------------------------------------------------- over HTTP


async def run_http(url: str, bodies: list[dict], concurrency: int) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    latencies: list[float] = []
    codes: Counter = Counter()
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker():
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                    code = r.status_code
                except httpx.HTTPError:
                    code = "transport_error"
                codes[code] += 1
                if code == 200:
                    latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return summarize(latencies, codes, time.perf_counter() - t0)


def chat_body(user_id: str, prefs, question: str, max_tokens: int) -> dict:
    return {"model": "fspo-bench", "max_tokens": max_tokens, "messages": [{"role": "user", "content": question}],
            "fspo": {"user_id": user_id, "preferences": [{"question": p.question, "chosen": p.chosen,
                                                          "rejected": p.rejected} for p in prefs]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_graph(pcfg, args) -> str:
    import ray
    from ray import serve

    from fspo_ray.serving.app import build_app

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    stage = {"num_cpus": 1, "max_ongoing_requests": args.max_batch_size, "max_queued_requests": MAX_QUEUED}
    app_args = {
        "model_id": "fspo-bench",
        "personalize": pcfg.model_dump(),
        "deployments": {"ingress": {"num_cpus": 0.5, "max_ongoing_requests": 256, "max_queued_requests": 256},
                        "persona": stage, "answer": stage,
                        "persona_batching": {"max_batch_size": args.max_batch_size},
                        "answer_batching": {"max_batch_size": args.max_batch_size}},
        "limits": {"max_tokens": max(args.answer_tokens, 64)},
        "store": {"kind": "memory"},
    }
    serve.run(build_app(app_args), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def _line(name: str, c: int, r: dict) -> str:
    p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] else "-"
    p99 = f"{r['p99_ms']:.0f}" if r["p99_ms"] else "-"
    return (f"[bench] {name:<9} c={c:<3} p50={p50:>6} ms  p99={p99:>6} ms  {r['throughput_rps']:6.2f} req/s  "
            f"status={r['status_counts']}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    levels = [1, 8] if args.quick else [int(c) for c in args.concurrency.split(",")]
    per_level = (lambda c: 8) if args.quick else (lambda c: max(args.requests, 2 * c))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = Path(tempfile.mkdtemp(prefix="fspo-bench-"))
    print(f"[bench] building models and workload in {tmp} ...", flush=True)
    persona_model = args.persona_model or build_world_model(tmp / "model")
    answer_model = args.answer_model or persona_model
    users = workload(32, args.shots)

    import torch
    from ray import serve

    from fspo_ray.personalize import PersonalizeConfig, Personalizer, StageEngineConfig

    pcfg = PersonalizeConfig(
        num_shots=args.shots,
        persona=StageEngineConfig(model=persona_model, max_new_tokens=args.persona_tokens, torch_threads=1),
        answer=StageEngineConfig(model=answer_model, max_new_tokens=args.answer_tokens, torch_threads=1),
    )
    url = start_graph(pcfg, args)
    print(f"[bench] graph up at {url}", flush=True)
    # In process: one engine (both stages name the same model), one torch thread, like a replica.
    personalizer = Personalizer.from_config(pcfg)
    torch.set_num_threads(1)
    params = sum(p.numel() for p in personalizer._stage("answer").engine.model.parameters())
    ps, as_ = pcfg.persona.sampling(), pcfg.answer.sampling()
    results: dict = {"config": {"persona_tokens": args.persona_tokens, "answer_tokens": args.answer_tokens,
                                "shots": args.shots, "max_batch_size": args.max_batch_size,
                                "max_queued_requests": MAX_QUEUED, "cpus": os.cpu_count(), "levels": levels,
                                "model_params": params, "torch_threads": 1}}
    seq = iter(range(10**9))

    def miss_bodies(n):  # a new user id per request: always a cache miss
        return [chat_body(f"{uid}-{next(seq)}", prefs, q, args.answer_tokens)
                for uid, prefs, q in (users[i % len(users)] for i in range(n))]

    def hit_bodies(n):  # the warmed users again: the persona comes from the cache
        return [chat_body(f"{uid}-warm", prefs, q, args.answer_tokens)
                for uid, prefs, q in (users[i % len(users)] for i in range(n))]

    run_inprocess(personalizer, users, 1, 2, ps, as_)  # warm-ups
    asyncio.run(run_http(url, miss_bodies(4), 2))
    asyncio.run(run_http(url, hit_bodies(len(users)), 8))  # fill the cache for every user

    for c in levels:
        n = per_level(c)
        if c == 1:
            # Interleaved request by request, so load from elsewhere on the machine hits all three alike.
            parts = {"inprocess": [], "graph": [], "cache": []}
            for _ in range(n):
                parts["inprocess"].append(run_inprocess(personalizer, users, 1, 1, ps, as_))
                parts["graph"].append(asyncio.run(run_http(url, miss_bodies(1), 1)))
                parts["cache"].append(asyncio.run(run_http(url, hit_bodies(1), 1)))
            for name, rs in parts.items():
                lat = [r["p50_ms"] / 1000 for r in rs if r["ok"]]
                codes = Counter()
                for r in rs:
                    codes.update({int(k): v for k, v in r["status_counts"].items()})
                results[f"{name}_c1"] = summarize(lat, codes, sum(lat))
        else:
            results[f"inprocess_c{c}"] = run_inprocess(personalizer, users, c, n, ps, as_)
            results[f"graph_c{c}"] = asyncio.run(run_http(url, miss_bodies(n), c))
            results[f"cache_c{c}"] = asyncio.run(run_http(url, hit_bodies(n), c))
        for name in ("inprocess", "graph", "cache"):
            print(_line(name, c, results[f"{name}_c{c}"]), flush=True)

    results["batch_sizes"] = {d: serve.get_deployment_handle(d, "bench").stats.remote().result()["batch_sizes"]
                              for d in ("PersonaDeployment", "AnswerDeployment")}
    print(f"[bench] batch sizes (size: batches): {results['batch_sizes']}", flush=True)
    serve.shutdown()

    top = max(levels)
    status_counts: Counter = Counter()
    for key, r in results.items():
        if key.startswith(("graph_", "cache_")):
            status_counts.update(r["status_counts"])
    summary = {
        "overhead_ratio_c1": results["graph_c1"]["p50_ms"] / results["inprocess_c1"]["p50_ms"],
        "cache_hit_latency_ratio": results["cache_c1"]["p50_ms"] / results["graph_c1"]["p50_ms"],
        "throughput_c8": results["graph_c8"]["throughput_rps"],
        f"throughput_c{top}": results[f"graph_c{top}"]["throughput_rps"],
        f"throughput_ratio_c{top}_c8": results[f"graph_c{top}"]["throughput_rps"] / results["graph_c8"]["throughput_rps"],
        "inprocess_throughput_c8": results["inprocess_c8"]["throughput_rps"],
        "p50_ms_graph_c1": results["graph_c1"]["p50_ms"],
        "p50_ms_inprocess_c1": results["inprocess_c1"]["p50_ms"],
        "p50_ms_cache_c1": results["cache_c1"]["p50_ms"],
        "status_counts": dict(status_counts),
        "model_params": params,
    }
    results["summary"] = summary
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
