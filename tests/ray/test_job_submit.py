"""`ray job submit` end to end, as an operator runs it: the README's "Stages" commands, run as
printed in a fresh shell (the venv not activated beforehand): activate, `ray start --head` with
token authentication, then generate -> build_model -> train -> evaluate submitted with
`--working-dir .` on the tiny world, the streamed logs and outputs checked. A cluster refuses a
submission without the token (and with a wrong one).

The head is this module's own: its own --temp-dir, ports and token (RAY_AUTH_TOKEN, so
~/.ray/auth_token is neither read nor written), stopped by signalling its `ray start --block`
process and then killing, by pid, any process left that carries this cluster's marker in its
environment. Never `ray stop`: it would stop every Ray cluster of the user on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ray.multinode import free_ports

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))  # the venv's CLI; the cluster then runs the venv's python
CONFIG = "jobs/configs/world.yaml"
# One FSPO stage from the tiny model; evaluation's baseline is the tiny model itself.
STAGES_YAML = "[{name: fspo, kind: preference, init_from: model, lr: 0.003, warmup_steps: 1, optimizer: adamw, beta: 0.1}]"

pytestmark = pytest.mark.timeout(1800)


def tiny_overrides(out: Path) -> list[str]:
    """The tiny world shared by every stage (as tests/ray/test_train.py's known-good setup)."""
    return [
        f"output_dir={out}", "run_name=e2e",
        "world.users_train=12", "world.users_held_out=3", "world.users_interpolated=3", "world.prefs_per_user=6",
        "generate.users_per_shard=6", "generate.report.similarity_questions=0",
        "tiny_model.vocab_size=400", "tiny_model.hidden_size=32", "tiny_model.intermediate_size=64",
        "tiny_model.num_layers=1", "tiny_model.num_heads=2", "tiny_model.num_kv_heads=2", "tiny_model.corpus_sentences=1500",
        "episodes.num_shots=2", "episodes.min_shots=1", "episodes.max_length=384",
        "train.num_workers=2", "train.global_batch_size=8", "train.micro_batch_size=2", "train.checkpoint_every=4",
        "train.cpus_per_worker=1", "train.eval_users_per_split=3",
        "train.tensorboard=false", f"train.stages={STAGES_YAML}",
        f"evaluate.methods.base.model={out}/models/tiny", "evaluate.only=[fspo]", "evaluate.users_per_split=2", "evaluate.questions_per_user=1", "evaluate.num_shots=2",
        "evaluate.shots_sweep=[]", "evaluate.describe_before=null", "evaluate.describe_after=null",
        "evaluate.inference.max_new_tokens=12",
    ]


# --------------------------------------------------------------------------- the cluster


def _http_status(url: str, token: str | None = None) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries this cluster's marker (ours, whatever their name)."""
    pids = []
    needle = f"FSPO_TEST_CLUSTER={marker}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@dataclass
class Head:
    address: str      # the dashboard / Jobs API, http://127.0.0.1:<port>
    token: str
    marker: str
    proc: subprocess.Popen | None  # `ray start --block`; None for a head `ray start` left running in the background
    temp_dir: str

    def cli_env(self, token: str | None = "mine", mode: str | None = "token") -> dict:
        """A CLI shell's environment: by default `export RAY_AUTH_MODE=token` plus this cluster's token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
        env["RAY_ADDRESS"] = self.address
        if mode is not None:
            env["RAY_AUTH_MODE"] = mode
        if token is not None:
            env["RAY_AUTH_TOKEN"] = self.token if token == "mine" else token
        return env


def _start_head(attempt: int) -> Head:
    temp_dir = tempfile.mkdtemp(prefix="fspo-rj-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token, marker = secrets.token_hex(24), f"{uuid.uuid4().hex}-{attempt}"
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `python` in entrypoints = the venv's
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, FSPO_TEST_CLUSTER=marker,
        RAY_TRAIN_ENABLE_PRINT_PATCH="0", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1", TOKENIZERS_PARALLELISM="false",
    )
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", "--num-cpus=4", "--disable-usage-stats",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--port={gcs}", f"--dashboard-port={dash}",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
         f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}"],
        cwd=temp_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    head = Head(f"http://127.0.0.1:{dash}", token, marker, proc, temp_dir)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # Up when `ray start` has finished starting the node and the Jobs API answers with the token.
        if "--block" in (Path(temp_dir) / "ray_start.log").read_text() and _http_status(head.address + "/api/version", token) == 200:
            return head
        time.sleep(2)
    _stop_head(head)
    raise RuntimeError(f"ray start did not come up (attempt {attempt}): {(Path(temp_dir) / 'ray_start.log').read_text()[-2000:]}")


def _stop_head(head: Head) -> None:
    if head.proc is not None and head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.proc.kill()
    for _ in range(3):  # workers and drivers it left behind, by pid, ours only
        left = _marked_pids(head.marker)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    # On a loaded 2-core machine the raylet can time out waiting for its dashboard agent
    # (a fixed ~15 s in Ray 2.60); a fresh start usually wins the race.
    errors = []
    for attempt in range(3):
        try:
            h = _start_head(attempt)
            break
        except RuntimeError as e:
            errors.append(str(e))
    else:
        raise RuntimeError("\n\n".join(errors))
    yield h
    _stop_head(h)


def ray_cli(head: Head, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], cwd=ROOT, env=env or head.cli_env(), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- tests


def test_submission_without_the_token_is_refused(head, tmp_path):
    home = tmp_path / "home"  # no ~/.ray/auth_token to fall back on
    home.mkdir()
    attempts = {
        "no token (the CLI's default)": (head.cli_env(token=None, mode=None) | {"HOME": str(home)},
                                         "Missing authentication token"),
        "RAY_AUTH_MODE=token but no token": (head.cli_env(token=None) | {"HOME": str(home)},
                                             "couldn't find an authentication token"),
        "a wrong token": (head.cli_env(token="not-" + head.token), "Invalid authentication token"),
    }
    for i, (name, (env, message)) in enumerate(attempts.items()):
        r = ray_cli(head, "job", "submit", "--address", head.address, "--submission-id", f"refused-{i}",
                    "--", "python", "-c", "print(1)", env=env, timeout=180)
        text = r.stdout + r.stderr
        assert r.returncode != 0, name
        assert "AuthenticationError" in text and message in text, f"{name}:\n{text[-1500:]}"
    # The raw Jobs API: 401 without a token, 403 with a wrong one, 200 with the cluster's.
    assert _http_status(head.address + "/api/jobs/") == 401
    assert _http_status(head.address + "/api/jobs/", "wrong") == 403
    assert _http_status(head.address + "/api/jobs/", head.token) == 200
    # Nothing was submitted by the refused attempts.
    listed = ray_cli(head, "job", "list", "--address", head.address, timeout=180)
    assert listed.returncode == 0, listed.stderr[-1500:]
    assert "refused-" not in listed.stdout


def readme_commands() -> list[str]:
    """The README's operator commands (its "Stages" bash block), comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Stages"):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].rstrip() for line in block.splitlines() if line.strip()]


def test_readme_block_is_the_one_the_slow_test_runs():
    """Cheap guard for the slow test below: the lines it runs are the README's, in this order."""
    lines = readme_commands()
    assert lines[:4] == ["source .venv/bin/activate", "ray start --head", "export RAY_AUTH_MODE=token",
                         "OUT=$PWD/runs/fspo-world"]
    assert [line.split("jobs.")[1].split()[0] for line in lines[4:]] == ["generate", "build_model", "train", "evaluate"]
    assert all(line.startswith("ray job submit --working-dir . -- python -m jobs.") and line.endswith("output_dir=$OUT")
               for line in lines[4:])


@pytest.mark.slow  # ~2 min here (four jobs, each a cold Python + Ray start)
def test_readme_commands_generate_build_train_evaluate_in_a_fresh_shell(tmp_path):
    from fspo_ray.data import read_preferences

    out = tmp_path / "run"  # absolute: the jobs run in an uploaded copy of the repository
    temp_dir = tempfile.mkdtemp(prefix="fspo-rd-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token, marker = secrets.token_hex(24), f"{uuid.uuid4().hex}-readme"
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(9)
    # The README's lines, each as printed; only what keeps this cluster apart from others on the
    # machine is added: its own temp dir and ports on `ray start`, the run directory, and the
    # tiny world's sizes after each job's own arguments.
    isolation = {
        "ray start --head": f" --temp-dir={temp_dir} --num-cpus=4 --disable-usage-stats --include-dashboard=true "
        f"--dashboard-host=127.0.0.1 --port={gcs} --dashboard-port={dash} --ray-client-server-port={client} "
        f"--dashboard-agent-listen-port={agent_http} --dashboard-agent-grpc-port={agent_grpc} "
        f"--runtime-env-agent-port={env_agent} --metrics-export-port={metrics} --node-manager-port={node_mgr} "
        f"--object-manager-port={obj_mgr}",
    }
    script = ["set -euo pipefail"]
    for line in readme_commands():
        if line == "OUT=$PWD/runs/fspo-world":
            line = f"OUT={out}"  # not the repository's runs/: the demo's run directory
        elif line.startswith("ray job submit"):
            line += " " + " ".join(shlex.quote(o) for o in tiny_overrides(out)[1:])  # output_dir=$OUT is the README's own
        script.append(line + isolation.get(line, ""))
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.update(RAY_AUTH_TOKEN=token, RAY_ADDRESS=f"http://127.0.0.1:{dash}", FSPO_TEST_CLUSTER=marker)
    assert subprocess.run(["bash", "-c", "command -v ray || echo none"], env=env, capture_output=True,
                          text=True).stdout.strip() == "none"  # a fresh shell: no ray before activating
    t0 = time.perf_counter()
    try:
        r = subprocess.run(["bash", "--noprofile", "--norc", "-c", "\n".join(script)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1700)
    finally:
        _stop_head(Head(f"http://127.0.0.1:{dash}", token, marker, None, temp_dir))  # its processes, by marker
    text = r.stdout + r.stderr
    print(f"[job-submit] README commands: rc={r.returncode} in {time.perf_counter() - t0:.0f} s")
    assert r.returncode == 0, text[-4000:]
    assert len(re.findall(r"Job '[^']+' succeeded", text)) == 4

    rows = read_preferences(out / "prefs").to_pylist()
    n = len(rows)
    assert f"generated {n} rows into {out}/prefs" in text
    assert n > 0.9 * 18 * 6 and len({r["pair_id"] for r in rows}) == n
    assert {r["split"] for r in rows} == {"train", "held_out", "interpolated"}
    assert json.loads((out / "data_report.json").read_text())["rows"] == n
    import yaml

    resolved = yaml.safe_load((out / "resolved_config.generate.yaml").read_text())
    assert resolved["output_dir"] == str(out) and resolved["world"]["users_train"] == 12
    assert f"tiny model and tokenizer saved to {out}/models/tiny" in text
    assert (out / "models" / "tiny" / "config.json").is_file() and (out / "models" / "tiny" / "tokenizer.json").is_file()
    assert re.search(r"\[train\] stages .*fspo.* in one worker group", text)
    assert "[train] stage fspo: reward accuracy" in text
    assert (out / "models" / "fspo" / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (out / "train" / "fspo" / "metrics.jsonl").read_text().splitlines()]
    # Every planned optimizer step, once, in order (12 users in multi-query episodes: a few steps).
    planned = json.loads((out / "train" / "fspo" / "timing.json").read_text())["steps"]
    assert steps == list(range(1, planned + 1)) and planned >= 2
    acc = json.loads((out / "eval_metrics.json").read_text())["reward_accuracy"]
    assert set(acc) == {"train", "held_out", "interpolated"} and all(0.0 <= v <= 1.0 for v in acc.values())
    report = json.loads((out / "report.json").read_text())
    assert set(report["win_rate"]["fspo"]) == {"train", "held_out", "interpolated"}
    assert all(0.0 <= v <= 1.0 for v in report["win_rate"]["fspo"].values())
    assert (out / "report.md").is_file() and f"report: {out / 'report.md'}" in text
    # No raw preference text or persona description reaches a job's logs.
    private = {r["chosen"] for r in rows} | {r["rejected"] for r in rows} | {r["user_description"] or "" for r in rows}
    leaked = [t for t in private if len(t) > 20 and t in text]
    assert not leaked, leaked[:3]
