"""The generation graph on Ray Data: the stages of `stages` wired as transforms.

Two shapes, the same stage functions:

- fused (world provider, the default): one Ray task per shard runs every stage in
  process (`world_shard_task`). The world holds no model, so nothing needs an actor, and
  passing 10^6 rows between eight transforms would cost more than the world itself.
- per-stage graph (LLM provider, or the world with generate.fused=false): one Ray Data
  transform per stage (`Graph`); a model stage is the engines layer's stage
  (fspo_ray/engines/ray_data.py: an actor pool or a ray.data.llm processor per model);
  pairing and refinement group by shard (a barrier), so the graph runs in waves of shards
  and a wave is the resume granularity.

Either way each shard ends in a commit (`shards`) and one summary row.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa

from fspo_ray.generation.providers import make_provider
from fspo_ray.generation.rows import from_table, rows_fn
from fspo_ray.generation.shards import ShardStore
from fspo_ray.generation.sources import Shard
from fspo_ray.generation.stages import (
    judge_requests,
    pair_responses,
    plan_slots,
    refine_shard,
    response_requests,
    run_shard_in_process,
)

SUMMARY_SCHEMA = pa.schema([("shard_id", pa.string()), ("manifest", pa.string())])


# --- the per-stage graph ------------------------------------------------------------------


class Graph:
    """Builds the per-stage Ray Data graph for one provider."""

    def __init__(self, cfg, provider):
        from ray.data import DataContext
        from ray.data.context import ShuffleStrategy

        self.cfg = cfg
        self.provider = provider
        # Group-bys by shard: Ray 2.60's default hash shuffle failed here concatenating an
        # empty partition (no schema) with real ones; the sort shuffle has no such step.
        DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        t = cfg.generate.tasks
        self.task_args = {"num_cpus": t.num_cpus, "batch_format": "pyarrow", "batch_size": t.batch_size}
        if t.resources:
            self.task_args["resources"] = dict(t.resources)
        if t.concurrency:
            import ray.data

            self.task_args["compute"] = ray.data.TaskPoolStrategy(size=t.concurrency)

    def task(self, ds, fn):
        return ds.map_batches(rows_fn(fn), **self.task_args)

    def ops(self, ds, ops: list[tuple]):
        for op in ops:
            ds = self.task(ds, op[1]) if op[0] == "task" else self.engine_op(ds, *op[1:])
        return ds

    def engine_op(self, ds, model_cfg, purpose: str, strategy: str):
        """Rows whose `engine` is this model get its reply; the others pass by. With hf the pool
        answers its own rows and passes the rest without a barrier, so every pool of the graph
        streams together."""
        from fspo_ray.engines.ray_data import generate_stage

        sampling = self.provider.sampling_for(model_cfg, purpose, strategy)
        return generate_stage(ds, {model_cfg.label(): model_cfg}, sampling, cpus=self.task_args["num_cpus"])

    def through_judging(self, ds):
        """Shard rows -> labelled judge rows (stages 1-6)."""
        p = self.provider
        ds = self.task(ds, lambda shards: plan_slots(shards, p))
        ds = self.ops(ds, p.views_ops())
        ds = self.task(ds, response_requests)
        ds = self.ops(ds, p.responses_ops())
        ds = ds.groupby("shard_id").map_groups(
            rows_fn(lambda rows: pair_responses(rows, p.seed)), batch_format="pyarrow", num_cpus=self.task_args["num_cpus"]
        )
        ds = self.task(ds, judge_requests)
        return self.ops(ds, p.judge_ops())

    def wave(self, shards: list[Shard]):
        """The dataset of one wave: ends in one summary row per committed shard."""
        import ray.data

        ds = ray.data.from_items([s.as_row() for s in shards], override_num_blocks=len(shards))
        ds = self.through_judging(ds)
        kwargs = {"cfg": self.cfg, "shards": {s.shard_id: s.as_row() for s in shards}}
        if self.provider.kind == "llm":
            judge = self.cfg.generate.llm.judge
            gpus = judge.resources()["GPU"]
            return ds.groupby("shard_id").map_groups(
                RefineCommit,
                fn_constructor_kwargs=kwargs,
                compute=ray.data.ActorPoolStrategy(size=judge.concurrency),
                batch_format="pyarrow",
                num_cpus=judge.num_cpus,
                num_gpus=gpus or None,
            )
        refine = RefineCommit(**kwargs)

        def refine_commit(table: pa.Table) -> pa.Table:
            return refine(table)

        return ds.groupby("shard_id").map_groups(refine_commit, batch_format="pyarrow", num_cpus=self.task_args["num_cpus"])


_PROVIDERS: dict[str, object] = {}


def provider_for(cfg):
    """One provider per worker process and config (the world's tables are built once)."""
    key = cfg.model_dump_json()
    p = _PROVIDERS.get(key)
    if p is None:
        p = _PROVIDERS[key] = make_provider(cfg)
    return p


class RefineCommit:
    """Stage 7 + 8 for the rows of one shard: refine, write, commit; one summary row out.
    As an actor (LLM) it holds the judge engine; for the world it is a plain task."""

    def __init__(self, cfg, shards: dict):
        self.cfg = cfg
        self.shards = shards
        self._refiner = None

    def _open(self):
        if self._refiner is None:
            p = provider_for(self.cfg)
            if p.kind == "llm":
                from fspo_ray.engines.local import build_engine

                # The actor holds the replica's GPUs: vLLM runs its ranks as processes, not Ray actors.
                self._refiner = p.open_refiner(build_engine(p.llm.judge, executor="mp"))
            else:
                self._refiner = p.open_refiner()
        return provider_for(self.cfg), self._refiner

    def __call__(self, table: pa.Table) -> pa.Table:
        provider, refiner = self._open()
        rows = from_table(table)
        shard = self.shards[rows[0]["shard_id"]]
        t0, c0 = time.perf_counter(), time.process_time()
        result = refine_shard(rows, provider, refiner, entropy_repeats=provider.cfg.generate.report.entropy_repeats)
        timing = (time.perf_counter() - t0, time.process_time() - c0)
        return _commit(provider, shard, result, timing, getattr(refiner, "calls", 0))


def _commit(provider, shard: dict, result, timing: tuple[float, float], judge_calls: int = 0) -> pa.Table:
    import ray

    stats = result.stats()
    stats["seconds"], stats["cpu_seconds"] = timing  # wall and this process's CPU time
    stats["judge_calls_refine"] = judge_calls
    # Which node computed it (operators, multi-node tests); never starts Ray outside a worker.
    stats["node_id"] = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    stats["rows_per_domain"] = _count(result.rows, "domain")
    stats["users_with_rows"] = len({r["user_id"] for r in result.rows})
    store = ShardStore(provider.cfg.layout.prefs)
    manifest = store.commit(shard, result.rows, stats)
    return pa.table({"shard_id": [shard["shard_id"]], "manifest": [json.dumps(manifest)]}, schema=SUMMARY_SCHEMA)


def _count(rows: list[dict], name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r[name]] = out.get(r[name], 0) + 1
    return out


def _already_committed(provider, shard: dict) -> pa.Table | None:
    """The summary of a shard this plan already committed, or None. A task Ray runs again after
    its node died (a retry, or lineage reconstruction of an output lost with the node) then
    returns the committed manifest instead of recomputing the shard."""
    m = ShardStore(provider.cfg.layout.prefs).committed_one(shard["shard_id"])
    if m is None or (m["start"], m["count"]) != (shard["start"], shard["count"]):
        return None
    return pa.table({"shard_id": [shard["shard_id"]], "manifest": [json.dumps(m)]}, schema=SUMMARY_SCHEMA)


def world_shard_task(cfg):
    """The fused world path: every stage of each shard in this task, then its commit."""

    def generate_shard(table: pa.Table) -> pa.Table:
        provider = provider_for(cfg)
        refiner = provider.open_refiner()
        out = []
        for shard in table.to_pylist():
            done = _already_committed(provider, shard)
            if done is not None:
                out.append(done)
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            result = run_shard_in_process(
                shard, provider, refiner, entropy_repeats=provider.cfg.generate.report.entropy_repeats
            )
            out.append(_commit(provider, shard, result, (time.perf_counter() - t0, time.process_time() - c0)))
        return pa.concat_tables(out) if out else SUMMARY_SCHEMA.empty_table()

    return generate_shard


