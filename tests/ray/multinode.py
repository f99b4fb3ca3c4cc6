"""Several Ray nodes on one machine, shaped like the node groups of cluster/.

The node groups, their custom resources and the autoscaler settings are read from
cluster/aws.yaml and cluster/kuberay/raycluster.yaml (the two must agree), so a test places work
the way the real cluster will: a head with no CPUs for tasks, worker nodes that each advertise
their group's resource (`group_<name>`), work pinned to a group by asking for a sliver of it.

Every cluster here is this test's own: its own temp dir and ports, removed by its own handles
(node processes by pid), never `ray stop`, which would stop every Ray cluster of the user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "cluster" / "aws.yaml"
RAYCLUSTER = ROOT / "cluster" / "kuberay" / "raycluster.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "TOKENIZERS_PARALLELISM": "false"}


def group_resource(group: str) -> str:
    """The custom resource every node of a group advertises (KubeRay's gpu-train = aws.yaml's gpu_train)."""
    return "group_" + group.replace("-", "_")


@dataclass(frozen=True)
class NodeGroup:
    name: str
    resources: dict  # as cluster/aws.yaml declares them (CPU, GPU, accelerator_type:..., group_<name>)
    min_workers: int
    max_workers: int


@dataclass(frozen=True)
class ClusterSpec:
    head_resources: dict
    groups: dict[str, NodeGroup]
    max_workers: int
    upscaling_speed: float
    idle_timeout_s: float


def _kuberay_resources(group: dict) -> dict:
    raw = group.get("rayStartParams", {}).get("resources")
    return json.loads(raw.strip().strip('"').replace("\\", "")) if raw else {}


def cluster_spec() -> ClusterSpec:
    """cluster/aws.yaml's node groups and autoscaler settings, checked against the KubeRay RayCluster,
    plus the RayService's serving group."""
    aws = yaml.safe_load(AWS.read_text())
    kuberay = yaml.safe_load(RAYCLUSTER.read_text())["spec"]
    head = aws["head_node_type"]
    groups = {
        name: NodeGroup(name, dict(t["resources"]), t.get("min_workers", 0), t.get("max_workers", 0))
        for name, t in aws["available_node_types"].items() if name != head
    }
    # The same groups, resources, bounds and idle timeout on Kubernetes.
    k_groups = {g["groupName"].replace("-", "_"): g for g in kuberay["workerGroupSpecs"]}
    assert set(k_groups) == set(groups), (sorted(k_groups), sorted(groups))
    for name, g in groups.items():
        k = k_groups[name]
        assert group_resource(name) in g.resources, f"aws.yaml {name}: no {group_resource(name)} resource"
        assert _kuberay_resources(k).get(group_resource(name)) == g.resources[group_resource(name)], name
        assert (k["minReplicas"], k["maxReplicas"]) == (g.min_workers, g.max_workers), name
    idle_s = aws["idle_timeout_minutes"] * 60
    assert kuberay["autoscalerOptions"]["idleTimeoutSeconds"] == idle_s
    # KubeRay's upscalingMode as Ray's KubeRay autoscaler translates it (Default and Aggressive: 1000).
    speed = {"Conservative": 1.0}.get(kuberay["autoscalerOptions"].get("upscalingMode", "Default"), 1000.0)
    assert speed == float(aws.get("upscaling_speed", 1.0)), (speed, aws.get("upscaling_speed"))
    # The Serve app's own cluster (RayService) adds its serving group.
    service = yaml.safe_load(RAYSERVICE.read_text())["spec"]["rayClusterConfig"]
    for k in service["workerGroupSpecs"]:
        name = k["groupName"].replace("-", "_")
        groups.setdefault(name, NodeGroup(name, _kuberay_resources(k), k["minReplicas"], k["maxReplicas"]))
        assert group_resource(name) in groups[name].resources, f"rayservice.yaml {name}: no {group_resource(name)}"
    return ClusterSpec(dict(aws["available_node_types"][head]["resources"]), groups, aws["max_workers"],
                       float(aws.get("upscaling_speed", 1.0)), idle_s)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pids_with_marker(marker: str) -> list[int]:
    needle = f"FSPO_TEST_CLUSTER={marker}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def retried_tasks(name_part: str) -> int:
    """Tasks whose name contains `name_part` that Ray ran more than once (from the GCS task events)."""
    import ray

    events = ray._private.state.state._get_all_task_events()
    return len({e.task_id for e in events if e.attempt_number > 0 and name_part in e.task_info.name})


def _kill_marked(marker: str) -> None:
    for _ in range(5):
        left = _pids_with_marker(marker)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


# --------------------------------------------------------------------------- ray.cluster_utils.Cluster


class LocalCluster:
    """A head shaped like cluster/aws.yaml's (no CPUs for tasks) plus worker nodes added per group,
    with `ray.cluster_utils.Cluster`; this process's driver is connected to it.

    Every process of the cluster carries a marker in its environment, so `shutdown` can make sure
    none is left (ours only).
    """

    def __init__(self, spec: ClusterSpec | None = None, env: dict[str, str] | None = None):
        from unittest import mock

        import ray
        import ray._common.utils
        import ray._private.utils
        from ray.cluster_utils import Cluster

        self.spec = spec or cluster_spec()
        self.temp_dir = tempfile.mkdtemp(prefix="fspo-mn-", dir="/tmp")  # short: socket paths must fit 107 bytes
        self.marker = uuid.uuid4().hex
        env = {**(env or {}), "FSPO_TEST_CLUSTER": self.marker}  # inherited by every node process we start
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        # Cluster writes the "current cluster" address into the default /tmp/ray; keep it in ours.
        self._patches = [
            mock.patch.object(ray._private.utils, "write_ray_address",
                              lambda addr, temp_dir=None: None),
            mock.patch.object(ray._common.utils, "reset_ray_address", lambda temp_dir=None: None),
        ]
        for p in self._patches:
            p.start()
        head = {k: v for k, v in self.spec.head_resources.items() if k != "CPU"}
        gcs, client, metrics, metrics_agent, agent, env_agent = free_ports(6)
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": self.spec.head_resources.get("CPU", 0), "resources": head, "temp_dir": self.temp_dir,
            "gcs_server_port": gcs, "ray_client_server_port": client, "metrics_export_port": metrics,
            "metrics_agent_port": metrics_agent, "dashboard_agent_listen_port": agent, "runtime_env_agent_port": env_agent,
            "include_dashboard": False, "object_store_memory": 200 * 1024 * 1024,
        })
        self.nodes: dict[str, object] = {}  # node id -> Node
        self.groups: dict[str, str] = {}  # node id -> group
        ray.init(address=self.cluster.address, runtime_env={"env_vars": ENV}, log_to_driver=False)

    def add(self, group: str, num_cpus: float = 2) -> str:
        """A worker node of `group` (its resources as cluster/ declares them, fewer CPUs, no GPUs); its node id."""
        g = self.spec.groups[group]
        extra = {k: v for k, v in g.resources.items() if k not in ("CPU", "GPU") and not k.startswith("accelerator_type:")}
        export, agent = free_ports(2)
        node = self.cluster.add_node(num_cpus=num_cpus, resources=extra, object_store_memory=150 * 1024 * 1024,
                                     metrics_export_port=export, metrics_agent_port=agent)
        self.nodes[node.node_id] = node
        self.groups[node.node_id] = group
        return node.node_id

    def remove(self, node_id: str) -> None:
        """The node is lost, as a machine is: SIGKILL of its worker processes (the tasks and actors
        running there; they would otherwise outlive their raylet for a moment), then of its raylet
        and agents. No drain, no notice."""
        from ray._private import ray_constants

        node = self.nodes.pop(node_id)
        self.groups.pop(node_id)
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        os.kill(raylet, signal.SIGSTOP)  # no new workers while we collect the children
        for pid in _children(raylet):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.cluster.remove_node(node, allow_graceful=False)

    def alive(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        try:
            self.cluster.shutdown()
        finally:
            _kill_marked(self.marker)
            for p in self._patches:
                p.stop()
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def node_of_actor(actor_id: str) -> str | None:
    """The node an actor lives on, from the GCS (no dashboard needed)."""
    import ray

    info = ray._private.state.actors(actor_id=actor_id)
    return info["Address"]["NodeID"] if info and info.get("State") == "ALIVE" else None


def serve_replicas(app: str) -> dict[str, list[tuple[str, str]]]:
    """deployment -> [(replica actor name, node id)] of the live replicas of `app`."""
    import ray

    out: dict[str, list[tuple[str, str]]] = {}
    for actor in ray._private.state.actors().values():
        name = actor.get("Name") or ""
        if actor.get("State") != "ALIVE" or not name.startswith(f"SERVE_REPLICA::{app}#"):
            continue
        deployment = name.split("#")[1]
        out.setdefault(deployment, []).append((name, actor["Address"]["NodeID"]))
    return out


# --------------------------------------------------------------------------- the fake autoscaler


@dataclass
class AutoscalingHead:
    address: str  # GCS address, for ray.init
    marker: str
    proc: subprocess.Popen
    temp_dir: str
    config: dict

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        _kill_marked(self.marker)  # the nodes the fake provider started, and their workers
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_autoscaling_head(node_types: dict, head_resources: dict, **settings) -> AutoscalingHead:
    """`ray start --head` with the autoscaler's fake multi-node provider: worker nodes of
    `node_types` are real raylets on this machine, started and stopped by the autoscaler itself.

    (ray.cluster_utils.AutoscalingCluster does the same but runs `ray stop --force` first and
    last, which would stop every other Ray cluster of the user on the machine.)
    """
    temp_dir = tempfile.mkdtemp(prefix="fspo-as-", dir="/tmp")
    marker = uuid.uuid4().hex
    gcs, client, metrics, agent_http, agent_grpc, env_agent, node_mgr, obj_mgr, dash = free_ports(9)
    config = {
        "cluster_name": f"fspo-fake-{marker[:8]}",
        "max_workers": settings.pop("max_workers"),
        "upscaling_speed": settings.pop("upscaling_speed", 1.0),
        "idle_timeout_minutes": settings.pop("idle_timeout_minutes"),
        # What Ray's fake_multi_node/example.yaml sets (the 2.60 wheel lacks that file): nodes are told
        # apart by node id (they share this machine's IP), and there is no SSH set-up to run or check.
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs}", "use_node_id_as_ip": True,
                     "disable_launch_config_check": True, "disable_node_updaters": True,
                     "foreground_node_launch": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
            **node_types,
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        **settings,
    }
    cfg_path = Path(temp_dir) / "autoscaling.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS",))}
    env.update(ENV, FSPO_TEST_CLUSTER=marker, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
               RAY_AUTH_MODE="disabled", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    head_extra = {k: v for k, v in head_resources.items() if k not in ("CPU", "GPU")}
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--autoscaling-config={cfg_path}",
         f"--num-cpus={head_resources.get('CPU', 0)}", f"--resources={json.dumps(head_extra)}",
         "--disable-usage-stats", "--include-dashboard=false", f"--port={gcs}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}", f"--dashboard-port={dash}",
         f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", "--object-store-memory=200000000"],
        cwd=temp_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    head = AutoscalingHead(f"127.0.0.1:{gcs}", marker, proc, temp_dir, config)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if "--block" in (Path(temp_dir) / "ray_start.log").read_text():  # printed once the node is up
            return head
        time.sleep(1)
    text = (Path(temp_dir) / "ray_start.log").read_text()[-2000:]
    head.stop()
    raise RuntimeError(f"ray start with the fake autoscaler did not come up: {text}")
