"""The generation pipeline on Ray Data: the stages of `stages` wired as transforms.

Two shapes, the same stage functions:

- fused (world provider, the default): one Ray task per shard runs every stage in
  process. The world holds no model, so nothing needs an actor, and passing 10^6 rows
  between eight transforms would cost more than the world itself.
- per-stage graph (LLM provider, or the world with generate.fused=false): one Ray Data
  transform per stage; model stages run on actor pools (Hugging Face) or ray.data.llm
  processors (vLLM); pairing and refinement group by shard (a barrier), so the graph runs
  in waves of shards and a wave is the resume granularity.

Either way each shard ends in a commit (`shards`), and the driver logs one line per
committed shard (rows, rows/s, ETA) to the terminal and to `ray job logs`.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from fspo_ray.generation.providers import Shard, make_provider, plan_shards
from fspo_ray.generation.rows import PAYLOAD
from fspo_ray.generation.shards import ShardStore, fingerprint
from fspo_ray.generation.stages import (
    add_tokens,
    judge_requests,
    pair_responses,
    plan_slots,
    refine_shard,
    response_requests,
    run_shard_in_process,
)

logger = logging.getLogger("fspo_ray.generate")

ROW_SCHEMA = pa.schema(
    [("shard_id", pa.string()), ("key", pa.string()), (PAYLOAD, pa.string()), ("engine", pa.string()), ("messages_json", pa.string())]
)
SUMMARY_SCHEMA = pa.schema([("shard_id", pa.string()), ("manifest", pa.string())])


# --- rows <-> Arrow batches ------------------------------------------------------------


def to_table(rows: list[dict]) -> pa.Table:
    cols: dict[str, list] = {n: [] for n in ROW_SCHEMA.names}
    for r in rows:
        r = dict(r)
        messages = r.pop("messages", None)
        cols["shard_id"].append(r["shard_id"])
        cols["key"].append(r.get("key", ""))
        cols["engine"].append(r.pop("engine", "") or "")
        cols["messages_json"].append(json.dumps(messages) if messages is not None else "")
        cols[PAYLOAD].append(json.dumps(r, separators=(",", ":")))
    return pa.table(cols, schema=ROW_SCHEMA)


def from_table(table: pa.Table) -> list[dict]:
    """Rows of a batch, with the engine's reply (if any) merged back into each row."""
    names = table.column_names
    if PAYLOAD not in names:  # the pipeline's input items (shards, probe slots)
        return table.to_pylist()
    payloads = table.column(PAYLOAD).to_pylist()
    engines = table.column("engine").to_pylist() if "engine" in names else [""] * len(payloads)
    messages = table.column("messages_json").to_pylist() if "messages_json" in names else [""] * len(payloads)
    rows = []
    for p, e, m in zip(payloads, engines, messages, strict=True):
        r = json.loads(p)
        if e:
            r["engine"] = e
        if m:
            r["messages"] = json.loads(m)
        rows.append(r)
    return rows


def _rows_fn(fn):
    """A stage function over rows -> a Ray Data batch function over Arrow tables."""

    def batch_fn(table: pa.Table) -> pa.Table:
        return to_table(fn(from_table(table)))

    batch_fn.__name__ = getattr(fn, "__name__", "stage")
    return batch_fn


def merge_reply(table: pa.Table) -> pa.Table:
    """After an engine op: put generated_text / errors into the payload and clear the
    engine column, so later ops on other models pass these rows through."""
    names = table.column_names
    n = table.num_rows
    texts = table.column("generated_text").to_pylist() if "generated_text" in names else [""] * n
    errors = table.column("engine_error").to_pylist() if "engine_error" in names else [False] * n
    inference = table.column("__inference_error__").to_pylist() if "__inference_error__" in names else [""] * n
    ntok = table.column("num_generated_tokens").to_pylist() if "num_generated_tokens" in names else [0] * n
    rows = []
    for p, sid, key, engine, text, err, ierr, tokens in zip(
        table.column(PAYLOAD).to_pylist(), table.column("shard_id").to_pylist(), table.column("key").to_pylist(),
        table.column("engine").to_pylist(), texts, errors, inference, ntok, strict=True,
    ):
        r = json.loads(p)
        r["shard_id"], r["key"] = sid, key
        r["generated_text"] = text or ""
        if err or ierr:
            r["engine_error"] = str(ierr or "engine error")
        r["tokens"] = add_tokens(r.get("tokens", {}), {engine: int(tokens or 0)})
        rows.append(r)
    return to_table(rows)


def select_engine(label: str, keep: bool):
    def select(table: pa.Table) -> pa.Table:
        engines = table.column("engine").to_pylist()
        mask = pa.array([(e == label) == keep for e in engines])
        return table.filter(mask)

    return select


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
        return ds.map_batches(_rows_fn(fn), **self.task_args)

    def ops(self, ds, ops: list[tuple]):
        for op in ops:
            ds = self.task(ds, op[1]) if op[0] == "task" else self.engine_op(ds, *op[1:])
        return ds

    def engine_op(self, ds, model_cfg, purpose: str, strategy: str):
        """Rows whose `engine` is this model go to it; the others pass by."""
        import ray.data

        sampling = self.provider.sampling_for(model_cfg, purpose, strategy)
        if model_cfg.engine == "hf":
            # The actor answers its own rows and passes the rest: no barrier, and all
            # pools of the graph stream together.
            from fspo_ray.generation.engines_ray import HFGenerateActor

            return ds.map_batches(
                HFGenerateActor,
                fn_constructor_kwargs={
                    "model_cfg": model_cfg.model_dump(),
                    "sampling": sampling,
                    "output_dir": self.cfg.output_dir,
                },
                compute=ray.data.ActorPoolStrategy(size=model_cfg.concurrency),
                batch_size=model_cfg.batch_size,
                batch_format="pyarrow",
                num_cpus=model_cfg.num_cpus,
                num_gpus=model_cfg.num_gpus or None,
            )
        # A ray.data.llm processor answers every row it gets: split the rows (the input is
        # materialized so both branches read it once), run the processor on ours, rejoin.
        from fspo_ray.generation.engines_ray import build_vllm_stage

        label = model_cfg.label()
        ds = ds.materialize()
        cpus = self.task_args["num_cpus"]
        mine = ds.map_batches(select_engine(label, True), batch_format="pyarrow", num_cpus=cpus)
        rest = ds.map_batches(select_engine(label, False), batch_format="pyarrow", num_cpus=cpus)
        done = build_vllm_stage(model_cfg, sampling, self.cfg.output_dir)(mine)
        done = done.map_batches(merge_reply, batch_format="pyarrow", num_cpus=cpus)
        return done.union(rest)

    def through_judging(self, ds):
        """Shard rows -> labelled judge rows (stages 1-6)."""
        p = self.provider
        ds = self.task(ds, lambda shards: plan_slots(shards, p))
        ds = self.ops(ds, p.views_ops())
        ds = self.task(ds, response_requests)
        ds = self.ops(ds, p.responses_ops())
        ds = ds.groupby("shard_id").map_groups(
            _rows_fn(lambda rows: pair_responses(rows, p.seed)), batch_format="pyarrow", num_cpus=self.task_args["num_cpus"]
        )
        ds = self.task(ds, judge_requests)
        return self.ops(ds, p.judge_ops())

    def wave(self, shards: list[Shard]):
        """The dataset of one wave: ends in one summary row per committed shard."""
        import ray.data

        ds = ray.data.from_items([s.as_row() for s in shards], override_num_blocks=len(shards))
        ds = self.through_judging(ds)
        kwargs = {
            "cfg_json": self.cfg.model_dump_json(),
            "shards": {s.shard_id: s.as_row() for s in shards},
        }
        if self.provider.kind == "llm":
            judge = self.cfg.generate.llm.judge
            gpus = judge.tensor_parallel_size if judge.engine == "vllm" else judge.num_gpus
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


def provider_for(cfg_json: str):
    """One provider per worker process and config (the world's tables are built once)."""
    from fspo_ray.config import RunConfig

    p = _PROVIDERS.get(cfg_json)
    if p is None:
        p = _PROVIDERS[cfg_json] = make_provider(RunConfig.model_validate_json(cfg_json))
    return p


class RefineCommit:
    """Stage 7 + 8 for the rows of one shard: refine, write, commit; one summary row out.
    As an actor (LLM) it holds the judge engine; for the world it is a plain task."""

    def __init__(self, cfg_json: str, shards: dict):
        self.cfg_json = cfg_json
        self.shards = shards
        self._refiner = None

    def _open(self):
        if self._refiner is None:
            p = provider_for(self.cfg_json)
            if p.kind == "llm":
                from fspo_ray.generation.engines_ray import make_local_engine

                engine = make_local_engine(p.llm.judge, p.cfg.output_dir)
                self._refiner = p.open_refiner(engine)
            else:
                self._refiner = p.open_refiner()
        return provider_for(self.cfg_json), self._refiner

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
    store = ShardStore(Path(provider.cfg.output_dir) / "prefs")
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
    m = ShardStore(Path(provider.cfg.output_dir) / "prefs").committed_one(shard["shard_id"])
    if m is None or (m["start"], m["count"]) != (shard["start"], shard["count"]):
        return None
    return pa.table({"shard_id": [shard["shard_id"]], "manifest": [json.dumps(m)]}, schema=SUMMARY_SCHEMA)


def world_shard_task(cfg_json: str):
    """The fused world path: every stage of each shard in this task, then its commit."""

    def generate_shard(table: pa.Table) -> pa.Table:
        provider = provider_for(cfg_json)
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
    from fspo_ray.generation.report import build_report, similarity_ablation, write_report

    g = cfg.generate
    out_dir = Path(cfg.output_dir)
    provider = make_provider(cfg)
    store = ShardStore(out_dir / "prefs")
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
        provider.n_slots, provider.target, out_dir / "prefs",
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
    write_report(out_dir, report)
    _log_run(out_dir, pending, computed, wall, committed)
    logger.info(
        "generate: %d rows in %d shards (%d computed now in %.1f s); report %s",
        report["rows"], len(manifests), len(computed), wall, out_dir / "data_report.json",
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
        yield ds.map_batches(world_shard_task(cfg.model_dump_json()), **args)
        return
    graph = Graph(cfg, provider)
    for wave in _waves(pending, g.shards_per_wave):
        yield graph.wave(wave)


def _log_run(out_dir: Path, pending, computed: list[dict], wall: float, skipped: dict) -> None:
    """Append this invocation to <output_dir>/generate_runs.jsonl (what was skipped and redone)."""
    rec = {
        "finished_at": time.time(),
        "wall_s": wall,
        "shards_skipped": sorted(skipped),
        "shards_computed": sorted(m["shard_id"] for m in computed),
        "rows_computed": sum(m["rows"] for m in computed),
        "generator_calls": sum(m.get("generator_calls", 0) for m in computed),
    }
    with open(out_dir / "generate_runs.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
