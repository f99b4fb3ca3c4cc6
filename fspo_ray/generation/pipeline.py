"""The generate job's driver: plan the shards, run the graph wave by wave, report.

The graph itself (fused per shard, or per stage) is `graph`; each shard ends in a commit
(`shards`), and the driver logs one line per committed shard (rows, rows/s, ETA) to the
terminal and to `ray job logs`. The similarity ablation (`ablation`) runs alongside; the
data report (`report`) aggregates the committed shards, so a resumed run reports all of them.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fspo_ray.generation.ablation import similarity_ablation
from fspo_ray.generation.graph import Graph, world_shard_task
from fspo_ray.generation.providers import make_provider
from fspo_ray.generation.report import build_report, write_report
from fspo_ray.generation.shards import ShardStore, fingerprint
from fspo_ray.generation.sources import Shard, plan_shards

logger = logging.getLogger("fspo_ray.generate")


# --- the driver ------------------------------------------------------------------------


class Progress:
    """One log line per committed shard: rows, rows/s and ETA of this run."""

    def __init__(self, total_shards: int, done_shards: int, done_rows: int):
        self.total = total_shards
        self.done = done_shards
        self.rows = done_rows
        self.run_shards = 0
        self.run_rows = 0
        self.t0 = time.perf_counter()

    def update(self, manifest: dict) -> None:
        self.done += 1
        self.run_shards += 1
        self.rows += manifest["rows"]
        self.run_rows += manifest["rows"]
        dt = max(time.perf_counter() - self.t0, 1e-9)
        left = self.total - self.done
        eta = dt / self.run_shards * left
        logger.info(
            "shard %s committed: %d rows, %d users | %d/%d shards, %d rows | %.0f rows/s | ETA %.0f s",
            manifest["shard_id"], manifest["rows"], manifest["users"], self.done, self.total, self.rows,
            self.run_rows / dt, eta,
        )


def _waves(shards: list[Shard], per_wave: int) -> list[list[Shard]]:
    if per_wave <= 0:
        return [shards] if shards else []
    return [shards[i : i + per_wave] for i in range(0, len(shards), per_wave)]


def run_generate(cfg) -> dict:
    """Generate (or resume) <output_dir>/prefs and write the data report; returns the report.
    Ray must already be initialised (jobs.generate does it after the submit-time checks)."""
    g, layout = cfg.generate, cfg.layout
    provider = make_provider(cfg)
    store = ShardStore(layout.prefs)
    fp = fingerprint(cfg)
    store.prepare(fp, overwrite=g.overwrite)

    shards = plan_shards(provider.users_per_split(), g.users_per_shard)
    plan = {s.shard_id: s for s in shards}
    committed = store.committed()
    for sid, m in list(committed.items()):
        s = plan.get(sid)
        if s is None or (m["start"], m["count"]) != (s.start, s.count) or not g.resume:
            if s is None:
                logger.info("shard %s is not in this plan (fewer users?): removing it", sid)
                store.forget(sid)
            del committed[sid]
    pending = [s for s in shards if s.shard_id not in committed]
    logger.info(
        "generate: provider=%s strategy=%s, %d shards of <=%d users (%d committed, %d to run), "
        "%d slots per user for %d pairs, output %s",
        provider.kind, g.strategy, len(shards), g.users_per_shard, len(committed), len(pending),
        provider.n_slots, provider.target, layout.prefs,
    )
    progress = Progress(len(shards), len(committed), sum(m["rows"] for m in committed.values()))

    with ThreadPoolExecutor(max_workers=1) as pool:
        # The diversity ablation does not depend on the rows: run it alongside.
        sim_future = pool.submit(similarity_ablation, cfg, provider) if g.report.similarity_questions > 0 else None
        t0 = time.perf_counter()
        computed = []
        for ds in _datasets(cfg, provider, pending):
            for row in ds.iter_rows():
                manifest = json.loads(row["manifest"])
                computed.append(manifest)
                progress.update(manifest)
        wall = time.perf_counter() - t0
        similarity = sim_future.result() if sim_future is not None else None

    manifests = store.committed()
    report = build_report(cfg, provider, [manifests[s.shard_id] for s in shards if s.shard_id in manifests], similarity, fp)
    write_report(layout.data_report, report)
    _log_run(layout.generate_runs, pending, computed, wall, committed)
    logger.info(
        "generate: %d rows in %d shards (%d computed now in %.1f s); report %s",
        report["rows"], len(manifests), len(computed), wall, layout.data_report,
    )
    return report


def _datasets(cfg, provider, pending: list[Shard]):
    import ray.data

    if not pending:
        return
    g = cfg.generate
    if provider.kind == "world" and g.fused:
        ds = ray.data.from_items([s.as_row() for s in pending], override_num_blocks=len(pending))
        args = {"num_cpus": g.tasks.num_cpus, "batch_format": "pyarrow", "batch_size": None}
        if g.tasks.resources:
            args["resources"] = dict(g.tasks.resources)
        if g.tasks.concurrency:
            args["compute"] = ray.data.TaskPoolStrategy(size=g.tasks.concurrency)
        yield ds.map_batches(world_shard_task(cfg), **args)
        return
    graph = Graph(cfg, provider)
    for wave in _waves(pending, g.shards_per_wave):
        yield graph.wave(wave)


def _log_run(path: Path, pending, computed: list[dict], wall: float, skipped: dict) -> None:
    """Append this invocation to <output_dir>/generate_runs.jsonl (what was skipped and redone)."""
    rec = {
        "finished_at": time.time(),
        "wall_s": wall,
        "shards_skipped": sorted(skipped),
        "shards_computed": sorted(m["shard_id"] for m in computed),
        "rows_computed": sum(m["rows"] for m in computed),
        "generator_calls": sum(m.get("generator_calls", 0) for m in computed),
    }
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
