"""Real failures the other Ray test modules do not inject: a training worker SIGKILLed at a
random step, a generation worker process SIGKILLed mid-run, and a Serve replica killed
while clients keep sending requests. Each test prints one `[resilience]` line with its
figures (faults injected, steps/rows/requests checked, anything lost); docs/operators.md
tabulates them.

Killed processes are found through this cluster's own state API (its workers' pids), never
by name, so other Ray clusters on the machine are never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from fspo_ray.config import build_config
from tests.ray.helpers import running_app, serve_args, tiny_train_cfg

pytestmark = pytest.mark.timeout(900)


def resilience(name: str, **figures) -> None:
    print(f"\n[resilience] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# --------------------------------------------------------------------------- training


def _train_cfg(out: Path, **train):
    return tiny_train_cfg(out, "faults", **train)


def _losses(out: Path) -> tuple[dict[int, float], list[int]]:
    rows = [json.loads(line) for line in (out / "train" / "fspo" / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in rows}, [m["step"] for m in rows]


def test_training_worker_sigkilled_at_a_random_step_resumes_exactly(ray_cluster, tmp_path):
    """SIGKILL of the last rank's process (training/loop.py's fail_at hook: os.kill(getpid(), 9))
    at a step drawn at random; Ray Train restarts the worker group from the last checkpoint."""
    from fspo_ray.modeling import build_tiny_from_config
    from fspo_ray.training.run import run_training
    from tests.world_fixtures import write_world_prefs

    ref = tmp_path / "ref"
    cfg = _train_cfg(ref)
    write_world_prefs(cfg)
    build_tiny_from_config(cfg)
    run_training(cfg)
    ref_losses, ref_steps = _losses(ref)

    seed = int(os.environ.get("FSPO_FAULT_SEED", time.time_ns() % 1_000_000))
    step = random.Random(seed).randint(2, len(ref_steps) - 1)  # after a first step, before the last
    killed = tmp_path / "killed"
    for part in ("prefs", "models/tiny"):  # the same data and start model; episodes are resampled identically
        shutil.copytree(ref / part, killed / part)
    kcfg = _train_cfg(killed)
    run_training(kcfg, fail_at={"stage": "fspo", "step": step})
    assert (killed / "train" / "fspo" / "killed_once").read_text() == str(step), f"FSPO_FAULT_SEED={seed}"
    losses, steps = _losses(killed)
    assert steps == list(range(1, len(ref_steps) + 1)), f"FSPO_FAULT_SEED={seed}: steps {steps}"  # contiguous
    for s in steps:
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-5, abs=1e-6), (s, f"FSPO_FAULT_SEED={seed}")
    last_ckpt = (step // 2) * 2
    resilience("train worker SIGKILL", seed=seed, killed_at_step=step, resumed_from_checkpoint_step=last_ckpt,
               steps_checked=len(steps), steps_replayed=step - last_ckpt, final_loss_equal=True, lost=0)


# --------------------------------------------------------------------------- generation


def _raylet_pid() -> int:
    """The raylet of the cluster this session started (its workers are the raylet's children)."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _busy_generation_workers(raylet: int) -> list[int]:
    """This cluster's worker processes that are running a generation map task right now."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != raylet:
                continue
            title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if title.startswith("ray::") and "MapBatches" in title:
            pids.append(int(d.name))
    return pids


def _manifests(out: Path) -> set[str]:
    d = out / "prefs" / "_manifest"
    return {p.stem for p in d.glob("*.json")} if d.exists() else set()


def test_generation_worker_sigkilled_mid_run_gives_exactly_the_uninterrupted_rows(ray_cluster, tmp_path):
    from fspo_ray.data import read_preferences
    from fspo_ray.generation.pipeline import run_generate

    # Shards of 8 users, two tasks at a time: each task lives long enough to be caught running.
    overrides = ["world.users_train=48", "world.users_held_out=16", "world.users_interpolated=16", "world.prefs_per_user=12",
                 "generate.users_per_shard=8", "generate.tasks.concurrency=2", "generate.report.similarity_questions=0"]
    total = (48 + 16 + 16) // 8
    ref = tmp_path / "ref"
    run_generate(build_config({}, [f"output_dir={ref}", *overrides]))
    want = sorted(read_preferences(ref / "prefs").to_pylist(), key=lambda r: r["pair_id"])

    out = tmp_path / "killed"
    raylet = _raylet_pid()
    kills: list[tuple[int, int]] = []  # (pid, shards committed when it was killed)
    done = threading.Event()

    def killer():
        # SIGKILL a worker in the middle of computing a shard: once at the start, once after 4 commits.
        while not done.is_set() and len(kills) < 2:
            committed = len(_manifests(out))
            if committed >= 4 * len(kills):
                busy = _busy_generation_workers(raylet)
                if busy:
                    os.kill(busy[0], signal.SIGKILL)
                    kills.append((busy[0], committed))
                    continue
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        report = run_generate(build_config({}, [f"output_dir={out}", *overrides]))
    finally:
        done.set()
        t.join(timeout=30)
    assert kills, "no generation worker was running a shard to kill"
    assert all(committed < total for _, committed in kills)  # killed mid-run
    got = sorted(read_preferences(out / "prefs").to_pylist(), key=lambda r: r["pair_id"])
    assert len({r["pair_id"] for r in got}) == len(got)  # no duplicates
    assert got == want  # nothing lost, nothing changed
    assert report["rows"] == len(want) and report["shards"] == total
    runs = [json.loads(line) for line in (out / "generate_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and len(runs[0]["shards_computed"]) == total  # one run: the retries happened inside it
    resilience("generation worker SIGKILL", workers_killed=len(kills), at_shards_committed=[c for _, c in kills],
               shards=total, rows_checked=len(got), duplicates=0, lost=0)


# --------------------------------------------------------------------------- serving

KEY = "fault-key"
MODEL = "fspo-fault"
PREFS = [{"question": f"what should I cook {i}?", "chosen": "a short recipe", "rejected": "a long essay"} for i in range(3)]



@pytest.fixture(scope="module")
def serve_app(ray_cluster, tmp_path_factory):
    from tests.unit.test_personalize import tiny_model_dir

    tmp = tmp_path_factory.mktemp("serve-faults")
    args = serve_args(str(tiny_model_dir(tmp / "model")), MODEL, tmp / "profiles.sqlite3", KEY, num_shots=3,
                      max_ongoing=4, max_queued=8, max_batch=4)
    with running_app(args, "fspo-faults") as url:
        yield url


def _replica(deployment: str) -> str:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::fspo-faults#{deployment}#")]
    assert len(names) == 1, names
    return names[0]


@pytest.mark.parametrize("deployment", ["AnswerDeployment", "PersonaDeployment"])
def test_serve_replica_killed_under_load_gives_only_200_and_503_and_comes_back(serve_app, deployment):
    import ray
    from ray import serve

    old = _replica(deployment)
    codes: list[int | str] = []
    stop = asyncio.Event()

    async def client(ac: httpx.AsyncClient, i: int):
        n = 0
        while not stop.is_set():
            n += 1
            body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "what is for dinner?"}],
                    "fspo": {"user_id": f"load-{i}-{n}", "preferences": PREFS}}  # a new user: both stages run
            try:
                r = await ac.post("/v1/chat/completions", json=body)
                codes.append(r.status_code)
            except httpx.HTTPError as e:
                codes.append(type(e).__name__)

    async def run():
        async with httpx.AsyncClient(base_url=serve_app, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as ac:
            tasks = [asyncio.create_task(client(ac, i)) for i in range(6)]
            await asyncio.sleep(3.0)  # load established
            before = len(codes)
            ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
            t_kill = time.perf_counter()
            back = None
            while time.perf_counter() - t_kill < 90:
                await asyncio.sleep(0.5)
                try:
                    new = _replica(deployment)
                except AssertionError:
                    continue
                status = serve.status().applications["fspo-faults"].deployments[deployment].status
                if new != old and status == "HEALTHY" and codes[-3:] == [200, 200, 200]:
                    back = time.perf_counter() - t_kill
                    break
            await asyncio.sleep(2.0)  # keep the load on the new replica for a moment
            stop.set()
            await asyncio.gather(*tasks)
            return before, back

    before, back = asyncio.run(run())
    other = [c for c in codes if c not in (200, 503)]
    assert not other, f"clients saw {sorted(set(map(str, other)))} ({len(other)} of {len(codes)})"
    assert back is not None, "the replica did not come back within 90 s"
    assert codes.count(200) > before  # served after the kill too
    assert _replica(deployment) != old
    resilience(f"serve {deployment} killed under load", requests=len(codes), ok_200=codes.count(200),
               unavailable_503=codes.count(503), other=len(other), replica_back_s=round(back, 1), lost=0)
