"""Beyond one node, on one machine: a head and worker nodes shaped like cluster/'s node groups
(tests/ray/multinode.py), work placed by the groups' resources, nodes lost mid-run (SIGKILL of a
node's raylet and everything on it: no drain, no notice) and nodes added and removed by the
autoscaler's fake multi-node provider.

This module's clusters are its own: the session's local Ray is shut down first and started again
after (conftest.start_local_ray). Each test prints a `[resilience]` line with its figures;
docs/operators.md tabulates them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from fspo_ray.config import build_config
from tests.ray.multinode import (
    LocalCluster,
    cluster_spec,
    group_resource,
    retried_tasks,
    serve_replicas,
)

pytestmark = pytest.mark.timeout(900)


def resilience(name: str, **figures) -> None:
    print(f"\n[resilience] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


@pytest.fixture(scope="module", autouse=True)
def own_clusters():
    """No session Ray while this module's clusters run (one driver per process); restored after."""
    import ray

    from tests.ray.conftest import start_local_ray

    was_up = ray.is_initialized()
    ray.shutdown()
    yield
    ray.shutdown()
    if was_up:
        start_local_ray()


# As on the real nodes (cluster/): Serve's proxies answer 503 for a request whose replica was lost.
PROXY_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "fspo_ray.serving.proxy:middlewares"}


@pytest.fixture
def cluster():
    c = LocalCluster(env=PROXY_ENV)
    yield c
    c.shutdown()


def test_the_test_cluster_is_shaped_like_cluster_configs(cluster):
    """The groups, their resources and bounds come from cluster/ (aws.yaml == raycluster.yaml); the
    head runs no tasks; a task pinned to a group runs on that group's node only."""
    import ray

    spec = cluster.spec
    assert spec.head_resources == {"CPU": 0}
    assert set(spec.groups) == {"cpu", "gpu_generate", "gpu_train", "gpu_serve"}
    cpu, train = cluster.add("cpu"), cluster.add("gpu_train")

    @ray.remote(num_cpus=0.1)
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    for group, node in (("cpu", cpu), ("gpu_train", train)):
        pinned = where.options(resources={group_resource(group): 0.01})
        assert set(ray.get([pinned.remote() for _ in range(6)])) == {node}
    cpus = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
    head = ray.get_runtime_context().get_node_id()  # the driver's node
    assert cpus == {head: 0, cpu: 2, train: 2}  # nothing runs on the head


# --------------------------------------------------------------------------- generation


GEN = ["world.users_train=48", "world.users_held_out=12", "world.users_interpolated=12", "world.prefs_per_user=8",
       "generate.users_per_shard=3", "generate.tasks.num_cpus=0.5", "generate.report.similarity_questions=0",
       f"generate.tasks.resources={{{group_resource('cpu')}: 0.01}}"]


def _manifests(out: Path) -> dict[str, dict]:
    d = out / "prefs" / "_manifest"
    found = {}
    for p in (d.glob("*.json") if d.exists() else []):
        try:
            found[p.stem] = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            continue
    return found


def _reference_rows(cfg) -> list[dict]:
    """The rows the plan must give, computed in this process by the same stage functions (no Ray)."""
    from fspo_ray.data import rows_to_table, validate_rows
    from fspo_ray.generation.providers import make_provider
    from fspo_ray.generation.sources import plan_shards
    from fspo_ray.generation.stages import run_shard_in_process

    provider = make_provider(cfg)
    rows = []
    for shard in plan_shards(provider.users_per_split(), cfg.generate.users_per_shard):
        result = run_shard_in_process(shard.as_row(), provider, provider.open_refiner(),
                                      entropy_repeats=cfg.generate.report.entropy_repeats)
        rows += rows_to_table(validate_rows(result.rows)[0]).to_pylist()
    return sorted(rows, key=lambda r: r["pair_id"])


def test_generation_survives_a_lost_node_with_the_exact_rows(cluster, tmp_path):
    """Shards spread over two `cpu` nodes; one node is lost once both have committed shards. Ray
    Data reruns the lost node's tasks on the survivor: the exact planned row set, no duplicate,
    and no shard committed before the loss computed again (its manifest is untouched)."""
    from fspo_ray.data import read_preferences
    from fspo_ray.generation.pipeline import run_generate
    from fspo_ray.generation.providers import make_provider
    from fspo_ray.generation.sources import plan_shards

    a, b = cluster.add("cpu"), cluster.add("cpu")
    out = tmp_path / "gen"
    cfg = build_config({}, [f"output_dir={out}", *GEN])
    total = len(plan_shards(make_provider(cfg).users_per_split(), cfg.generate.users_per_shard))
    seen: dict[str, float] = {}  # shard -> committed_at when first seen
    lost: dict = {}
    done = threading.Event()

    def watch_and_remove():
        while not done.is_set():
            ms = _manifests(out)
            for sid, m in ms.items():
                seen.setdefault(sid, m["committed_at"])
            by_node = {m["node_id"] for m in ms.values()}
            if not lost and {a, b} <= by_node and len(ms) >= 4:
                lost.update(before=dict(ms), t=time.perf_counter())
                cluster.remove(b)  # the node and everything on it, at once
                lost["wall"] = time.time()
            time.sleep(0.01)

    t = threading.Thread(target=watch_and_remove, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        report = run_generate(cfg)
    finally:
        done.set()
        t.join(timeout=30)
    t_end = time.perf_counter()
    assert lost, f"the run ended before both nodes had committed shards ({len(_manifests(out))}/{total})"
    before = lost["before"]
    assert len(before) < total, "the node was lost after the last commit: not mid-run"
    assert {m["node_id"] for m in before.values()} == {a, b}  # both nodes did work

    final = _manifests(out)
    assert set(final) == {s.shard_id for s in plan_shards(make_provider(cfg).users_per_split(), cfg.generate.users_per_shard)}
    for sid, m in before.items():  # finished before the loss: never recomputed, not even its output lost with b
        assert final[sid]["committed_at"] == m["committed_at"] == seen[sid], sid
        assert final[sid]["node_id"] == m["node_id"]
    assert {m["node_id"] for m in final.values()} == {a, b}
    assert all(m["committed_at"] <= lost["wall"] for m in final.values() if m["node_id"] == b)  # nothing after its death

    got = sorted(read_preferences(out / "prefs").to_pylist(), key=lambda r: r["pair_id"])
    assert len({r["pair_id"] for r in got}) == len(got)  # no duplicates
    assert got == _reference_rows(cfg)  # exactly the planned rows
    assert report["rows"] == len(got) and report["shards"] == total
    runs = [json.loads(line) for line in (out / "generate_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and len(runs[0]["shards_computed"]) == total  # one run: Ray retried inside it
    redone = retried_tasks("generate_shard")  # shards in flight on the lost node, run again on the other
    resilience("generation: cpu node lost mid-run", shards=total, committed_before_loss=len(before),
               committed_by_lost_node_before=sum(m["node_id"] == b for m in before.values()),
               in_flight_redone=redone, committed_recomputed=0, finished_after_loss_s=round(t_end - lost["t"], 1),
               run_s=round(t_end - t0, 1), rows_checked=len(got), duplicates=0, lost=0)


# --------------------------------------------------------------------------- training

TRAIN = "gpu_train"  # cluster/aws.yaml's training group


def _jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL file a worker may be writing."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _train_runs(tmp_path: Path, *names: str) -> list[Path]:
    """Run directories with the tiny world's preferences and tiny model (tests/ray/test_train.py's
    set-up), each a run's own output_dir: its Ray Train storage (`<output_dir>/ray_train`), stage
    outputs and exports, which every node reaches (one disk here; a shared file system on a cluster)."""
    import shutil

    from fspo_ray.modeling import build_tiny_from_config
    from tests.ray.helpers import tiny_train_cfg
    from tests.world_fixtures import write_world_prefs

    base = tmp_path / "base"
    cfg = tiny_train_cfg(base)
    write_world_prefs(cfg)
    build_tiny_from_config(cfg)
    runs = []
    for name in names:
        shutil.copytree(base / "prefs", tmp_path / name / "prefs")
        shutil.copytree(base / "models" / "tiny", tmp_path / name / "models" / "tiny")
        runs.append(tmp_path / name)
    return runs


# 18 optimizer steps of 8 episodes; a checkpoint every 3. Ray Train may restart the group once.
NODE_LOSS_STAGE = {"name": "fspo", "kind": "preference", "init_from": "model", "lr": 1e-3, "warmup_steps": 1,
                   "optimizer": "adamw", "epochs": 6, "beta": 0.1}


@pytest.mark.slow
def test_training_loses_a_node_mid_stage_and_resumes_on_a_replacement(cluster, tmp_path):
    """2 Ray Train workers (ZeRO-2) on two `gpu_train` nodes of one CPU each, so one worker per node.
    One node is lost once the stage is past step 4; a replacement node joins (what the autoscaler
    or KubeRay does). Ray Train restarts the group on the surviving node and the new one, which
    resumes from the last checkpoint in the run's storage_path: every step's loss equals the
    uninterrupted run's on the same cluster, the steps replayed equal their first computation."""
    from fspo_ray.training.run import run_training
    from tests.ray.helpers import tiny_train_cfg

    a, b = cluster.add(TRAIN, num_cpus=1), cluster.add(TRAIN, num_cpus=1)
    ref, out = _train_runs(tmp_path, "uninterrupted", "lost")

    def cfg(run: Path):
        return tiny_train_cfg(run, stages=[NODE_LOSS_STAGE], checkpoint_every=3)

    run_training(cfg(ref))
    ref_losses = {m["step"]: m["loss"] for m in _jsonl(ref / "train" / "fspo" / "metrics.jsonl")}
    ref_groups = _jsonl(ref / "train" / "fspo" / "workers.jsonl")
    assert [sorted(g["node_ids"]) for g in ref_groups] == [sorted([a, b])]  # one rank on each node
    total = len(ref_losses)

    metrics = out / "train" / "fspo" / "metrics.jsonl"
    first: dict[int, float] = {}  # step -> loss as computed before the node was lost
    lost: dict = {}
    result: dict = {}

    def train():
        t0 = time.perf_counter()
        try:
            run_training(cfg(out))
        except BaseException as e:  # re-raised in the test's thread
            result["error"] = e
        result["run_s"] = time.perf_counter() - t0

    # The job runs in a thread; nodes change in this one (starting a Ray node sets signal handlers,
    # which only the main thread may do).
    job = threading.Thread(target=train, daemon=True)
    job.start()
    deadline = time.perf_counter() + 600
    while job.is_alive() and time.perf_counter() < deadline:
        rows = _jsonl(metrics)
        if not lost:
            first.update((m["step"], m["loss"]) for m in rows)
            if first and max(first) >= 4:
                lost.update(t=time.perf_counter(), wall=time.time())
                cluster.remove(b)  # its worker and raylet SIGKILLed: no drain, no notice
                lost["replacement"] = cluster.add(TRAIN, num_cpus=1)
                lost["joined_s"] = time.perf_counter() - lost["t"]
                # A step whose all-reduce completed as the node died may still be written; the
                # restarted group truncates the file only once it has loaded the checkpoint, later.
                for m in _jsonl(metrics):
                    first.setdefault(m["step"], m["loss"])
                lost["done_before"] = max(first)
        elif "recovered_s" not in lost and rows and rows[-1]["step"] > lost["done_before"]:
            lost["recovered_s"] = time.perf_counter() - lost["t"]  # first step past the ones lost
        time.sleep(0.01)
    job.join(timeout=1)
    assert not job.is_alive(), f"training still running 600 s after it started (node lost: {lost})"
    if "error" in result:
        raise result["error"]
    run_s = result["run_s"]
    assert lost, "the stage ended before the node was lost"
    assert lost["done_before"] < total, f"the node was lost after the last step ({lost['done_before']}/{total})"

    groups = _jsonl(out / "train" / "fspo" / "workers.jsonl")
    assert len(groups) == 2, groups  # one restart
    before, after = groups
    c = lost["replacement"]
    assert sorted(before["node_ids"]) == sorted([a, b]) and before["start_step"] == 0
    assert sorted(after["node_ids"]) == sorted([a, c])  # the surviving node and the one added
    resumed = after["start_step"]
    assert resumed % 3 == 0 and resumed <= lost["done_before"] < resumed + 3  # the last checkpoint before the loss
    assert after["world_size"] == after["checkpoint_world_size"] == 2
    # Ray Train's checkpoints are in the run's storage_path, under output_dir.
    assert list((out / "ray_train" / "t").glob("checkpoint_*"))

    rows = _jsonl(metrics)
    losses = {m["step"]: m["loss"] for m in rows}
    assert [m["step"] for m in rows] == list(range(1, total + 1))  # contiguous: nothing lost, nothing twice
    for s in losses:
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-5, abs=1e-6), s
    redone = list(range(resumed + 1, lost["done_before"] + 1))
    for s in redone:  # computed twice, on different node pairs, from the same checkpoint
        assert losses[s] == pytest.approx(first[s], rel=1e-5, abs=1e-6), s
    restart_s = after["time"] - lost["wall"]
    resilience("training: gpu_train node lost mid-stage", workers=2, steps=total, lost_after_step=lost["done_before"],
               resumed_from_checkpoint=resumed, steps_redone=len(redone),
               replacement_joined_s=round(lost["joined_s"], 1), group_restarted_s=round(restart_s, 1),
               first_new_step_s=round(lost["recovered_s"], 1), run_s=round(run_s, 1),
               max_loss_rel_diff=f"{max(abs(losses[s] / ref_losses[s] - 1) for s in losses):.1e}", steps_lost=0)


# --------------------------------------------------------------------------- serving

KEY = "mn-key"
MODEL = "fspo-mn"
PREFS = [{"question": f"what should I cook {i}?", "chosen": "a short recipe", "rejected": "a long essay"} for i in range(3)]
SERVE = "gpu_serve"  # the RayService's worker group (cluster/kuberay/rayservice.yaml)


def _serve_deployments(replicas: int) -> dict:
    pinned = {"num_cpus": 0.25, "resources": {group_resource(SERVE): 0.01}, "max_replicas_per_node": 1,
              "autoscaling": {"min_replicas": replicas, "max_replicas": replicas}, "health_check_period_s": 1,
              "max_ongoing_requests": 4, "max_queued_requests": 8}
    return {"ingress": {**pinned, "max_ongoing_requests": 64, "max_queued_requests": 64},
            "persona": pinned, "answer": pinned,
            "persona_batching": {"max_batch_size": 4}, "answer_batching": {"max_batch_size": 4}}


def _placed(app: str, want: int) -> dict[str, set[str]] | None:
    """deployment -> nodes of its replicas, once every deployment has `want` live replicas on distinct nodes."""
    reps = serve_replicas(app)
    nodes = {d: {n for _, n in r} for d, r in reps.items()}
    ok = set(reps) >= {"Ingress", "PersonaDeployment", "AnswerDeployment"} and all(
        len(reps[d]) == want and len(nodes[d]) == want for d in ("Ingress", "PersonaDeployment", "AnswerDeployment"))
    return nodes if ok else None


class _Load(threading.Thread):
    """Clients looping on /v1/chat/completions, each request a new user (both stages run)."""

    def __init__(self, url: str, headers: dict, clients: int):
        super().__init__(daemon=True)
        self.url, self.headers, self.clients = url, headers, clients
        self.codes: list[int | str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        async def client(ac: httpx.AsyncClient, i: int):
            n = 0
            while not self._halt.is_set():
                n += 1
                req = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "what is for dinner?"}],
                       "fspo": {"user_id": f"load-{i}-{n}", "preferences": PREFS}}
                try:
                    r = await ac.post("/v1/chat/completions", json=req)
                    self.codes.append(r.status_code)
                except httpx.HTTPError as e:
                    self.codes.append(type(e).__name__)

        async def main():
            async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=60) as ac:
                await asyncio.gather(*[client(ac, i) for i in range(self.clients)])

        asyncio.run(main())

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=90)


@pytest.fixture(scope="module")
def pg():
    from tests import postgres_server

    server = postgres_server.start()
    if isinstance(server, str):
        pytest.skip(f"PostgreSQL: {server}")
    yield server
    server.stop()


@pytest.mark.slow
def test_serve_across_nodes_loses_one_under_load_and_comes_back(cluster, pg, tmp_path):
    """Ingress, persona and answer replicas on two `gpu_serve` nodes (one of each per node), the
    profile store on PostgreSQL. One node is lost while 6 clients loop: every answer is 200 or 503;
    the app serves on from the other node; a replacement node (as the autoscaler or KubeRay would
    add) brings every deployment back to 2 replicas on 2 nodes; a profile written before the loss
    is read after it, by the new replicas too."""
    from ray import serve

    from fspo_ray.serving.app import build_app
    from tests.ray.helpers import free_port, serve_args
    from tests.unit.test_personalize import tiny_model_dir

    a, b = cluster.add(SERVE), cluster.add(SERVE)
    dsn = pg.create_database("serve_mn")
    args = serve_args(str(tiny_model_dir(tmp_path / "model")), MODEL, tmp_path / "unused.sqlite3", KEY, num_shots=3,
                      max_ongoing=4, max_queued=8, max_batch=4)
    args.update(deployments=_serve_deployments(2), store={"kind": "postgres", "path": dsn},
                cache={"ttl_s": 120, "sweep_interval_s": 0.2})
    port = free_port()
    # Clients reach the head's proxy (on a real cluster: a load balancer in front of the live nodes' proxies).
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="mn", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    try:
        assert _placed("mn", 2) == {d: {a, b} for d in ("Ingress", "PersonaDeployment", "AnswerDeployment")}
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
            assert c.post("/v1/users/dora/preferences", json={"preferences": PREFS}).status_code == 200
            body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "what is for dinner?"}],
                    "fspo": {"user_id": "cached", "preferences": PREFS}}
            persona = c.post("/v1/chat/completions", json=body).json()["fspo"]["persona"]

        load = _Load(url, auth, clients=6)  # its own thread and event loop; node changes happen here
        load.start()
        codes, marks = load.codes, {}
        time.sleep(3.0)  # load established
        marks["before"] = len(codes)
        t_loss = time.perf_counter()
        cluster.remove(b)
        # Serving on from node a: 200s again after the loss.
        while time.perf_counter() - t_loss < 60 and codes[marks["before"]:].count(200) < 3:
            time.sleep(0.2)
        marks["serving_again_s"] = time.perf_counter() - t_loss
        marks["after_loss"] = len(codes)
        time.sleep(2.0)
        c_node = cluster.add(SERVE)  # the replacement node joins
        t_join = time.perf_counter()
        while time.perf_counter() - t_join < 120:
            time.sleep(0.5)
            placed = _placed("mn", 2)
            if placed and serve.status().applications["mn"].status == "RUNNING" and codes[-3:] == [200, 200, 200]:
                marks["full_s"] = time.perf_counter() - t_join
                marks["placed"] = placed
                break
        time.sleep(2.0)  # load on the full app for a moment
        load.stop()
        other = [x for x in codes if x not in (200, 503)]
        print(f"\n[serve-mn] before loss {Counter(codes[:marks['before']])}, after {Counter(codes[marks['before']:])}, "
              f"marks {marks}", flush=True)
        assert not other, f"clients saw {sorted(set(map(str, other)))} ({len(other)} of {len(codes)})"
        assert codes[marks["before"]:marks["after_loss"]].count(200) >= 3, "no 200 from the surviving node"
        assert "full_s" in marks, f"not back to 2 replicas per deployment on 2 nodes: {serve_replicas('mn')}"
        assert marks["placed"] == {d: {a, c_node} for d in ("Ingress", "PersonaDeployment", "AnswerDeployment")}

        with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
            # The profile written before the loss, read by whichever ingress replica answers (new ones too).
            for _ in range(6):
                got = c.get("/v1/users/dora").json()
                assert got["count"] == 3 and got["preferences"][0] == PREFS[0]
            r = c.post("/v1/chat/completions", json={**body, "fspo": {"user_id": "dora"}})
            assert r.status_code == 200 and r.json()["fspo"]["preferences_source"] == "store"
            # The cached persona: the same description (from the surviving cache, or regenerated greedily).
            assert all(c.post("/v1/chat/completions", json=body).json()["fspo"]["persona"] == persona for _ in range(4))
            # Deleted through one ingress replica: gone for both (the store is shared, the other's cache swept).
            d = c.delete("/v1/users/dora").json()
            assert d["deleted"] is True and d["preferences_deleted"] == 3
            time.sleep(1.0)  # > cache.sweep_interval_s
            for _ in range(6):
                r = c.post("/v1/chat/completions", json={**body, "fspo": {"user_id": "dora"}})
                assert r.status_code == 400 and r.json()["error"]["code"] == "no_preferences"
        resilience("serve: gpu_serve node lost under load", requests=len(codes), ok_200=codes.count(200),
                   unavailable_503=codes.count(503), other=len(other),
                   serving_again_s=round(marks["serving_again_s"], 1),
                   full_capacity_after_node_joined_s=round(marks["full_s"], 1), profile_kept=True, lost=0)
    finally:
        serve.shutdown()


# --------------------------------------------------------------------------- autoscaling


def _worker_nodes(head_node: str) -> dict[str, dict]:
    import ray

    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head_node}


AUTOSCALE_JOB = ["world.users_train=24000", "generate.users_per_shard=1000", "generate.tasks.num_cpus=1",
                 "generate.tasks.concurrency=4"]


def _autoscale(tmp_path, idle_timeout_minutes: float):
    """The job, then the idle wait, on the fake autoscaler with cluster/'s node groups and settings
    (each node scaled down to 2 CPUs). Returns the figures."""
    import ray

    from jobs.generate import generate
    from tests.ray.multinode import start_autoscaling_head

    spec = cluster_spec()
    types = {name: {"resources": {**g.resources, "CPU": 2}, "node_config": {},
                    "min_workers": g.min_workers, "max_workers": g.max_workers}
             for name, g in spec.groups.items() if name != "gpu_serve"}  # the launcher's groups
    assert all(t["min_workers"] == 0 for t in types.values())  # nothing runs until a job asks
    head = start_autoscaling_head(types, spec.head_resources, max_workers=spec.max_workers,
                                  upscaling_speed=spec.upscaling_speed, idle_timeout_minutes=idle_timeout_minutes)
    try:
        ray.init(address=head.address, log_to_driver=False)
        head_node = ray.get_runtime_context().get_node_id()
        assert _worker_nodes(head_node) == {} and ray.cluster_resources().get("CPU", 0) == 0
        seen: dict[str, dict] = {}
        done = threading.Event()

        def watch():
            while not done.is_set():
                seen.update(_worker_nodes(head_node))
                time.sleep(0.5)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        out = tmp_path / "gen"
        # 4 tasks of 1 CPU on the `cpu` group: more than the head (0 CPUs) and than one 2-CPU node; and
        # shards of 1,000 users (seconds each), so that the job outlasts the autoscaler's reaction: with
        # GEN's 3-user shards it finished on the first node before a second one was up.
        cfg = build_config({}, [f"output_dir={out}", *GEN, *AUTOSCALE_JOB])
        t0 = time.perf_counter()
        report = generate(cfg)  # the job's own entrypoint function: submit-time checks included
        t_job = time.perf_counter() - t0
        done.set()
        t.join(timeout=10)
        worked = {m["node_id"] for m in _manifests(out).values()}
        # Idle: each node's removal time. Ray 2.60 restarts a node's idle clock when another node is
        # removed (seen here: the second of two idle nodes goes one idle timeout after the first), so
        # k idle nodes may take up to k idle timeouts to go; the wait allows for that.
        t_idle = time.perf_counter()
        removed_s: dict[str, float] = {}
        while time.perf_counter() - t_idle < len(seen) * idle_timeout_minutes * 60 + 120:
            up = _worker_nodes(head_node)
            for node in set(seen) - set(up) - set(removed_s):
                removed_s[node] = time.perf_counter() - t_idle
            if not up:
                break
            time.sleep(0.5)
        left = _worker_nodes(head_node)
        from fspo_ray.generation.providers import make_provider
        from fspo_ray.generation.sources import plan_shards

        planned = len(plan_shards(make_provider(cfg).users_per_split(), cfg.generate.users_per_shard))
        return dict(report=report, planned=planned, seen=seen, worked=worked, left=left, t_job=t_job,
                    removed_s=sorted(removed_s.values()))
    finally:
        ray.shutdown()
        head.stop()


def _check_autoscaled(f, idle_timeout_minutes: float):
    cpu = group_resource("cpu")
    assert f["report"]["shards"] == f["planned"] == 26 and f["report"]["rows"] > 0
    assert len(f["seen"]) >= 2, f"the autoscaler added {len(f['seen'])} node(s) for 4 CPUs of work"
    assert all(r.get(cpu) == 1 and "GPU" not in r for r in f["seen"].values()), f["seen"]  # the cpu group only
    assert f["worked"] <= set(f["seen"]) and len(f["worked"]) >= 2  # the added nodes did the work
    timeout_s = idle_timeout_minutes * 60
    removed = f["removed_s"]
    assert f["left"] == {}, f"idle nodes still up; removed so far after {removed} s"
    assert removed[0] >= timeout_s * 0.9, removed  # not before the idle timeout
    # One idle timeout per node at most (a removal restarts the survivors' idle clocks), plus the
    # autoscaler's and raylets' reaction.
    assert removed[-1] <= len(removed) * timeout_s + 60, removed
    resilience("autoscaler: job beyond the head, then idle", idle_timeout_s=timeout_s,
               nodes_added=len(f["seen"]), nodes_that_did_work=len(f["worked"]), job_s=round(f["t_job"], 1),
               idle_nodes_removed_after_s=[round(r, 1) for r in removed], nodes_left=0)


@pytest.mark.slow
def test_autoscaler_adds_cpu_nodes_for_a_job_and_removes_them_once_idle(tmp_path):
    """cluster/'s groups, bounds and upscaling speed; the idle timeout scaled from 10 min to 15 s."""
    _check_autoscaled(_autoscale(tmp_path, 0.25), 0.25)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_autoscaler_with_the_idle_timeout_of_cluster_configs(tmp_path):
    """The same with every setting as cluster/aws.yaml has it, the 10-minute idle timeout included
    (k idle nodes may take k x 10 minutes to go: see _autoscale)."""
    minutes = cluster_spec().idle_timeout_s / 60
    _check_autoscaled(_autoscale(tmp_path, minutes), minutes)
