"""Benchmark: world-provider preference rows into parquet, and the 1 -> 2 worker speedup.

    python -m bench.generate_world                       # 1,000,000 rows (about 5 min on 2 cores)
    python -m bench.generate_world --rows 200000 --scaling-rows 50000

Starts its own local Ray (2 CPUs unless --cpus), then in one process:
  1. a small warm-up run (worker imports, world tables);
  2. --scaling-rows rows with 1 worker, then the same with 2 workers (each worker a Ray task
     asking for 1 CPU, one shard at a time); speedup = wall(1) / wall(2);
  3. --rows rows with 2 workers: wall time and rows/s.
Every run is the real pipeline (jobs.generate's run_generate: all stages, parquet, commit,
manifest, report without the embedding ablation). Ends with one JSON line; besides wall
time it gives the shard tasks' CPU time (rows per task-CPU-second), which a shared, busy
machine disturbs much less.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def _config(out: Path, rows: int, workers: int, users_per_shard: int):
    from fspo_ray.config import load_config

    users = math.ceil(rows / 24 * 1.01)  # ~1% of users end a few pairs short of 24
    held = users // 10
    return load_config(
        ROOT / "jobs" / "configs" / "world.yaml",
        [
            f"output_dir={out}",
            f"world.users_train={users - 2 * held}",
            f"world.users_held_out={held}",
            f"world.users_interpolated={held}",
            "world.prefs_per_user=24",
            f"generate.users_per_shard={users_per_shard}",
            "generate.tasks.num_cpus=1",
            f"generate.tasks.concurrency={workers}",
            "generate.report.similarity_questions=0",
        ],
    )


def _rows_on_disk(prefs: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in prefs.glob("split=*/*.parquet"))


def timed_run(base: Path, name: str, rows: int, workers: int, users_per_shard: int) -> dict:
    from fspo_ray.generation.pipeline import run_generate
    from fspo_ray.generation.shards import ShardStore

    out = base / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = _config(out, rows, workers, users_per_shard)
    t0 = time.perf_counter()
    report = run_generate(cfg)
    wall = time.perf_counter() - t0
    on_disk = _rows_on_disk(cfg.layout.prefs)
    assert on_disk == report["rows"], (on_disk, report["rows"])
    # CPU seconds the shard tasks spent (their process time): a figure a busy shared box
    # disturbs far less than wall time.
    cpu = sum(json.loads(f.read_text())["cpu_seconds"] for f in ShardStore(cfg.layout.prefs).manifests.glob("*.json"))
    res = {
        "name": name,
        "workers": workers,
        "rows": on_disk,
        "wall_s": round(wall, 2),
        "rows_per_s": round(on_disk / wall, 1),
        "task_cpu_s": round(cpu, 1),
        "rows_per_task_cpu_s": round(on_disk / cpu, 1),
    }
    print(json.dumps(res), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.generate_world", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the full run (2 workers)")
    ap.add_argument("--scaling-rows", type=int, default=100_000, help="rows of each 1- and 2-worker run")
    ap.add_argument("--users-per-shard", type=int, default=200, help="users per shard (one task each)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--out", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args(argv)

    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    for attempt in range(3):  # a busy shared box can miss Ray's fixed 30 s raylet start wait
        try:
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=True)
            break
        except Exception:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2:
                raise
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        timed_run(base, "warmup", 5_000, 2, 25)
        one = timed_run(base, "scaling-1-worker", args.scaling_rows, 1, args.users_per_shard)
        two = timed_run(base, "scaling-2-workers", args.scaling_rows, 2, args.users_per_shard)
        full = timed_run(base, "full-2-workers", args.rows, 2, args.users_per_shard)
    finally:
        ray.shutdown()
        if args.out is None:
            shutil.rmtree(base, ignore_errors=True)
    result = {
        "rows": full["rows"],
        "wall_s": full["wall_s"],
        "rows_per_s": full["rows_per_s"],
        "speedup_1_to_2_workers": round(one["wall_s"] / two["wall_s"], 3),
        "scaling_rows": one["rows"],
        "scaling_wall_s": {"1_worker": one["wall_s"], "2_workers": two["wall_s"]},
        "rows_per_task_cpu_s": full["rows_per_task_cpu_s"],
        # the full run's rows over `cpus` cores busy with nothing but shard tasks
        "ideal_wall_s_on_idle_cores": round(full["rows"] / (args.cpus * full["rows_per_task_cpu_s"]), 1),
        "cpus": args.cpus,
        "users_per_shard": args.users_per_shard,
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
