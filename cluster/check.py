"""Check the cluster configs in cluster/ before anyone applies them.

    python cluster/check.py                      # every config in cluster/
    python cluster/check.py cluster/kuberay/rayjob-train.yaml

For each file: the schema (Ray's cluster-launcher schema; the KubeRay CRDs from
../shared/kuberay-crds or $FSPO_KUBERAY_CRDS, unknown fields rejected as `kubectl --validate=strict`
would), token authentication, what it names exists in this repository (entrypoint modules,
--config files, Serve import paths) and validates, output_dir is on a volume every pod mounts,
and the GPU shapes of the named job configs fit the node groups. Prints one line per problem,
`<file>: <where>: <what>`, and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python cluster/check.py` from a checkout: import fspo_ray from here
IMAGE_REPO_DIR = "/home/ray/fspo-ray"  # where cluster/Dockerfile copies the repository
KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
# vCPUs, GPUs and accelerator of the instance types the configs use (AWS).
INSTANCE_SHAPES = {
    "p5.48xlarge": (192, 8, "H100"),
    "p4de.24xlarge": (96, 8, "A100"),
    "p4d.24xlarge": (96, 8, "A100"),
    "g6e.12xlarge": (48, 4, "L40S"),
    "g5.48xlarge": (192, 8, "A10G"),
    "m7i.4xlarge": (16, 0, None),
    "m7i.8xlarge": (32, 0, None),
}
SECRET_WORDS = {"TOKEN", "KEY", "SECRET", "PASSWORD"}  # parts of an env var name: HF_TOKEN, API_KEY
WORKLOADS_ANNOTATION = "fspo-ray/workloads"  # on a RayCluster: the jobs it is sized for (YAML list)


def crd_dir() -> Path:
    return Path(os.environ.get("FSPO_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))


# --------------------------------------------------------------------------- shapes


@dataclass
class Group:
    """A node group: GPUs per node, most nodes, accelerator types it provides."""

    name: str
    gpus: int
    max_nodes: int
    accelerators: frozenset[str]


@dataclass
class Pool:
    """GPU demand of one part of a job: `replicas` x `gpus` GPUs, each replica on one node."""

    where: str
    gpus: int
    replicas: int
    accelerator: str | None = None
    workers: bool = False  # Ray Train ranks: may span nodes, in whole nodes


def _model_pool(where: str, m, factor: int = 1) -> Pool | None:
    gpus = m.tensor_parallel_size if m.kind == "vllm" else math.ceil(m.num_gpus)
    return Pool(where, gpus, m.concurrency * factor, m.accelerator_type) if gpus else None


def gpu_pools(stage: str, cfg) -> list[Pool]:
    """What a stage asks of the cluster's GPUs under this config (pools run one at a time)."""
    pools: list[Pool | None] = []
    if stage == "generate" and cfg.generate.provider == "llm":
        llm = cfg.generate.llm
        pools += [_model_pool(f"generate.llm.generators[{m.name or m.model}]", m) for m in llm.generators]
        # The judge runs twice in the last stage: both-order judging and the refinement actors.
        pools.append(_model_pool("generate.llm.judge", llm.judge, factor=2))
        emb = cfg.embedder
        if emb.num_gpus:
            pools.append(Pool("embedder", math.ceil(emb.num_gpus), 1))
    elif stage == "train" and cfg.train.use_gpu:
        t = cfg.train
        # One worker group runs every stage, its reference and scoring passes included.
        pools += [Pool("train.num_workers", 1, t.num_workers, workers=True)]
    elif stage == "evaluate":
        ev = cfg.evaluate
        names = ev.only or list(ev.methods)
        models = {ev.methods[n].model for n in {*names, ev.baseline}}
        models |= {ev.methods[n].describer for n in names if ev.methods[n].describer}
        inf = ev.inference
        gpus = inf.tensor_parallel_size if inf.kind == "vllm" else math.ceil(inf.num_gpus)
        if gpus:
            pools.append(Pool(f"evaluate.inference ({len(models)} models)", gpus, inf.concurrency * len(models), inf.accelerator_type))
        if ev.judge.kind == "llm":
            pools.append(_model_pool("evaluate.judge.llm", ev.judge.llm))
    return [p for p in pools if p is not None]


def check_fit(pools: list[Pool], groups: list[Group]) -> list[str]:
    problems = []
    for p in pools:
        fit = [g for g in groups if g.gpus > 0 and (p.accelerator is None or p.accelerator in g.accelerators)]
        if not fit:
            want = f"accelerator_type {p.accelerator}" if p.accelerator else "GPUs"
            problems.append(f"{p.where}: asks for {want}, but no GPU node group provides it")
            continue
        big = max(fit, key=lambda g: g.gpus)
        capacity = sum(g.gpus * g.max_nodes for g in fit)
        need = p.gpus * p.replicas
        if p.gpus > big.gpus:
            problems.append(
                f"{p.where}: {p.gpus} GPUs per replica (tensor_parallel_size) must fit on one node, "
                f"but the largest GPU group ({big.name}) has {big.gpus} GPUs per node"
            )
        elif p.gpus > 1 and big.gpus % p.gpus:
            problems.append(
                f"{p.where}: {p.gpus} GPUs per replica do not divide the {big.gpus} GPUs of a {big.name} node "
                f"({big.gpus % p.gpus} would sit idle)"
            )
        if p.workers and p.replicas > big.gpus and p.replicas % big.gpus:
            problems.append(
                f"{p.where}: {p.replicas} GPU workers must fill whole {big.name} nodes of {big.gpus} GPUs "
                f"(<= {big.gpus} or a multiple of it)"
            )
        if need > capacity:
            problems.append(
                f"{p.where}: {p.replicas} replica(s) x {p.gpus} GPU = {need} GPUs, but the GPU groups "
                f"({', '.join(g.name for g in fit)}) hold at most {capacity}"
            )
    return problems


# --------------------------------------------------------------------------- what configs name


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def check_import_path(import_path: str) -> str | None:
    """'pkg.mod:attr' -> None when pkg/mod.py exists here and defines attr at top level."""
    module, _, attr = import_path.partition(":")
    path = _module_file(module)
    if path is None:
        return f"import_path {import_path!r}: module {module} has no file in the repository"
    tree = ast.parse(path.read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if attr and attr not in names:
        return f"import_path {import_path!r}: {path.relative_to(REPO)} defines no {attr}"
    return None


def check_job(stage_module: str, config: str, overrides: list[str], where: str):
    """A job named by module, --config and overrides: (stage, RunConfig or None, problems)."""
    from fspo_ray.config import ConfigError, load_config

    problems = []
    stage = stage_module.removeprefix("jobs.")
    if not stage_module.startswith("jobs.") or _module_file(stage_module) is None:
        problems.append(f"{where}: entrypoint module {stage_module} does not exist (no {stage_module.replace('.', '/')}.py)")
    if not (REPO / config).is_file():
        problems.append(f"{where}: --config {config}: no such file in the repository")
        return stage, None, problems
    try:
        cfg = load_config(REPO / config, overrides)
    except ConfigError as e:
        problems.append(f"{where}: --config {config} {' '.join(overrides)}: {e}".replace("\n", " "))
        return stage, None, problems
    return stage, cfg, problems


def parse_entrypoint(entrypoint: str) -> tuple[str, str, list[str]] | None:
    """'python -m jobs.X --config F k=v ...' -> ('jobs.X', 'F', ['k=v', ...]); None otherwise."""
    argv = shlex.split(entrypoint)
    if len(argv) < 5 or argv[0] not in ("python", "python3") or argv[1] != "-m" or argv[3] != "--config":
        return None
    return argv[2], argv[4], argv[5:]


def looks_secret(name: str) -> bool:
    return bool(SECRET_WORDS & set(name.upper().split("_")))


def literal_secrets(containers: list[dict], where: str) -> list[str]:
    out = []
    for c in containers:
        for env in c.get("env", []):
            if looks_secret(env.get("name", "")) and "value" in env:
                out.append(f"{where}: container {c.get('name')}: env {env['name']} is a literal value; use valueFrom.secretKeyRef")
    return out


# --------------------------------------------------------------------------- KubeRay


def _strict(node):
    """Reject unknown fields, as `kubectl apply --validate=strict` does (CRDs only prune them)."""
    if isinstance(node, dict):
        if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for v in node.values():
            _strict(v)
    elif isinstance(node, list):
        for v in node:
            _strict(v)
    return node


@cache
def crd_schema(kind: str) -> dict:
    path = crd_dir() / KINDS[kind]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(copy.deepcopy(v1["schema"]["openAPIV3Schema"]))


def schema_problems(doc: dict, kind: str) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(kind))
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path) or "<root>"
        out.append(f"{where}: {e.message}")
    return out


def _ray_resources(group: dict) -> dict:
    raw = group.get("rayStartParams", {}).get("resources")
    res = dict(group.get("resources", {}))
    if raw:
        res.update(json.loads(raw.strip().strip('"').replace("\\", "")))
    return res


def group_resource(group: str) -> str:
    """The custom resource every node of a worker group advertises; placement asks for a sliver of it."""
    return "group_" + group.replace("-", "_")


def check_group_resource(group: str, resources: dict, where: str) -> list[str]:
    want = group_resource(group)
    if resources.get(want) != 1:
        return [f"{where}: resources lack {want}: 1 (every worker group advertises group_<name>, so work and the "
                f"autoscaler can target it; tests/ray/test_multinode.py places work by it)"]
    return []


def kuberay_groups(cluster: dict) -> tuple[list[Group], list[str]]:
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    groups, problems = [], []
    for g in cluster.get("workerGroupSpecs", []):
        c = g["template"]["spec"]["containers"][0]
        limits = c.get("resources", {}).get("limits", {})
        gpus = int(limits.get("nvidia.com/gpu", 0))
        start = g.get("rayStartParams", {})
        if "num-gpus" in start and int(start["num-gpus"]) != gpus:
            problems.append(f"workerGroupSpecs[{g['groupName']}]: rayStartParams num-gpus {start['num-gpus']} "
                            f"but the container's nvidia.com/gpu limit is {gpus}")
        problems += check_group_resource(g["groupName"], _ray_resources(g),
                                         f"workerGroupSpecs[{g['groupName']}].rayStartParams")
        nodes = max(g.get("replicas", 0), g["maxReplicas"]) if autoscaling else g.get("replicas", 0)
        accels = frozenset(k.split(":", 1)[1] for k in _ray_resources(g) if k.startswith("accelerator_type:"))
        groups.append(Group(g["groupName"], gpus, nodes, accels))
    return groups, problems


def _all_containers(cluster: dict) -> list[tuple[str, dict, dict]]:
    """(group name, container, pod spec) for the head and every worker group."""
    out = [("head", c, cluster["headGroupSpec"]["template"]["spec"]) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"][:1]]
    for g in cluster.get("workerGroupSpecs", []):
        out += [(g["groupName"], c, g["template"]["spec"]) for c in g["template"]["spec"]["containers"][:1]]
    return out


def check_shared_output(cluster: dict, output_dir: str, where: str) -> list[str]:
    """output_dir must lie on a volume that every Ray container mounts (shared storage)."""
    if "://" in output_dir:
        # Prefs, models and Ray Train's storage_path (output_dir/ray_train) are written with
        # local paths (pathlib, pyarrow local files): a URI would become a directory named "s3:".
        return [f"{where}: output_dir {output_dir} is a URI; fspo-ray writes through a file system "
                "path: mount the shared storage (EFS, FSx, Filestore, NFS) on every node and name the mount"]
    out = []
    for group, c, pod in _all_containers(cluster):
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
        hits = [name for m, name in mounts.items() if output_dir == m or output_dir.startswith(m + "/")]
        if not hits:
            out.append(f"{where}: output_dir {output_dir} is not on a volume mounted by group {group} "
                       f"(mounts: {list(mounts) or 'none'}); every node must see the same run directory")
            continue
        volume = next((v for v in pod.get("volumes", []) if v["name"] == hits[-1]), {})
        local = [k for k in ("emptyDir", "hostPath") if k in volume]
        if local:
            out.append(f"{where}: output_dir {output_dir} is on volume {hits[-1]} of group {group}, a {local[0]}: "
                       "node-local, not shared; use a ReadWriteMany persistentVolumeClaim")
    return out


def check_kuberay(path: Path, doc: dict) -> list[str]:
    kind = doc.get("kind")
    if kind not in KINDS:
        return [f"kind {kind!r} is not one of {sorted(KINDS)}"]
    problems = []
    if (crd_dir() / KINDS[kind]).is_file():
        problems += schema_problems(doc, kind)
    if problems:
        return problems  # the shape checks below assume a schema-valid document
    spec = doc["spec"]
    cluster, prefix = {"RayCluster": (spec, "spec"), "RayJob": (spec.get("rayClusterSpec"), "spec.rayClusterSpec"),
                       "RayService": (spec.get("rayClusterConfig"), "spec.rayClusterConfig")}[kind]
    if cluster is None:
        return [f"{prefix}: missing (this project's {kind}s bring their own cluster)"]
    if cluster.get("authOptions", {}).get("mode") != "token":
        problems.append(f"{prefix}.authOptions.mode: token authentication is off; set mode: token")
    import ray

    if cluster.get("rayVersion") != ray.__version__:
        problems.append(f"{prefix}.rayVersion: {cluster.get('rayVersion')!r} but the project pins Ray {ray.__version__}")
    for group, c, _ in _all_containers(cluster):
        problems += literal_secrets([c], f"{prefix} group {group}")
    head = cluster.get("headGroupSpec", {})
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        problems.append(f"{prefix}.headGroupSpec: the head service (dashboard, Jobs API, GCS) is exposed outside "
                        "the cluster; keep serviceType ClusterIP without ingress and use kubectl port-forward")
    groups, shape_problems = kuberay_groups(cluster)
    problems += [f"{prefix}.{p}" for p in shape_problems]

    if kind == "RayJob":
        if spec.get("shutdownAfterJobFinishes") is not True:
            problems.append("spec.shutdownAfterJobFinishes: must be true (the job's cluster is deleted when it ends)")
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        for name in runtime_env.get("env_vars", {}):
            if looks_secret(name):
                problems.append(f"spec.runtimeEnvYAML: env_vars.{name} looks like a secret; the runtime env is shown "
                                "by the dashboard and logged: set it on the pods from a Secret")
        wd = runtime_env.get("working_dir")
        if wd is not None and "://" not in wd and wd != IMAGE_REPO_DIR:
            problems.append(f"spec.runtimeEnvYAML: working_dir {wd!r} is neither a remote URI nor the image's "
                            f"repository copy {IMAGE_REPO_DIR} (cluster/Dockerfile)")
        parsed = parse_entrypoint(spec.get("entrypoint", ""))
        if parsed is None:
            problems.append(f"spec.entrypoint: {spec.get('entrypoint')!r} is not `python -m jobs.<stage> --config <file> [key=value ...]`")
            return problems
        stage, cfg, job_problems = check_job(*parsed, where="spec.entrypoint")
        problems += job_problems
        if cfg is not None:
            problems += check_shared_output(cluster, cfg.output_dir, "spec.entrypoint")
            problems += [f"spec.entrypoint ({stage}): {p}" for p in check_fit(gpu_pools(stage, cfg), groups)]
    elif kind == "RayService":
        problems += check_serve_config(spec.get("serveConfigV2", ""), cluster, groups)
    else:  # a long-lived RayCluster: the jobs it is sized for, from its annotation
        raw = doc.get("metadata", {}).get("annotations", {}).get(WORKLOADS_ANNOTATION, "[]")
        for i, w in enumerate(yaml.safe_load(raw) or []):
            where = f"metadata.annotations[{WORKLOADS_ANNOTATION}][{i}]"
            problems += check_workload(w, where, groups, lambda cfg, w=w, where=where: check_shared_output(cluster, cfg.output_dir, where))
    return problems


def check_workload(w: dict, where: str, groups: list[Group], extra=None) -> list[str]:
    """{stage, config, overrides?, group}: the job exists, validates and fits its node group."""
    stage, cfg, problems = check_job(f"jobs.{w['stage']}", w["config"], w.get("overrides", []), where)
    group = [g for g in groups if g.name == w.get("group")]
    if not group:
        problems.append(f"{where}: group {w.get('group')!r} is not a worker group ({[g.name for g in groups]})")
    elif cfg is not None:
        problems += [f"{where} ({stage}): {p}" for p in check_fit(gpu_pools(stage, cfg), group)]
    if cfg is not None and extra is not None:
        problems += extra(cfg)
    return problems


def check_serve_config(text: str, cluster: dict, groups: list[Group]) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    from fspo_ray.config import ConfigError
    from fspo_ray.serving.config import load_serve_config

    where = "spec.serveConfigV2"
    data = yaml.safe_load(text) or {}
    try:
        ServeDeploySchema.model_validate(data)
    except Exception as e:  # pydantic's ValidationError: name the first error
        return [f"{where}: not a Serve config: {str(e).splitlines()[0]}"]
    problems = []
    for app in data["applications"]:
        name = f"{where}.applications[{app['name']}]"
        err = check_import_path(app["import_path"])
        if err:
            problems.append(f"{name}: {err}")
            continue
        try:
            cfg = load_serve_config(app.get("args"))
        except ConfigError as e:
            problems.append(f"{name}.args: {e}".replace("\n", " "))
            continue
        problems += check_shared_output(cluster, cfg.output_dir, f"{name}.args")
        d = cfg.deployments
        pools = [Pool(f"{name}.args.deployments.{s}", math.ceil(getattr(d, s).num_gpus), getattr(d, s).autoscaling.max_replicas)
                 for s in ("persona", "answer") if getattr(d, s).num_gpus]
        total = Pool(f"{name}.args.deployments (persona + answer at max_replicas)", 1, sum(p.gpus * p.replicas for p in pools))
        problems += check_fit([*pools, total], groups)
        env_name = cfg.auth.api_key_env
        if cfg.auth.api_key is not None:
            problems.append(f"{name}.args.auth.api_key: a literal key in the manifest; use api_key_env and a Secret")
        elif env_name is None:
            problems.append(f"{name}.args.auth: no API key; the endpoint faces untrusted users (set api_key_env)")
        else:
            for group, c, _ in _all_containers(cluster):
                env = {e["name"]: e for e in c.get("env", [])}
                if "secretKeyRef" not in env.get(env_name, {}).get("valueFrom", {}):
                    problems.append(f"{name}.args.auth.api_key_env: group {group} does not set {env_name} from a Secret")
    return problems


# --------------------------------------------------------------------------- cluster launcher


def _start_commands(doc: dict) -> list[tuple[str, str]]:
    return [(key, cmd) for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for cmd in doc.get(key, []) if "ray start" in cmd]


def check_launcher(path: Path, doc: dict) -> list[str]:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        full = prepare_config(copy.deepcopy(doc))
        validate_config(full)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "<root>"
        return [f"{where}: {e.message}"]
    except (ValueError, KeyError, RuntimeError) as e:
        return [f"<root>: not a valid cluster launcher config: {e}"]
    problems = []
    if "idle_timeout_minutes" not in doc:
        problems.append("idle_timeout_minutes: not set (idle GPU nodes would stay up)")
    types = doc["available_node_types"]
    head = doc["head_node_type"]
    if types[head]["resources"].get("GPU"):
        problems.append(f"available_node_types.{head}: the head should be a CPU node")
    groups = []
    for name, t in types.items():
        res = t["resources"]
        shape = INSTANCE_SHAPES.get(t["node_config"].get("InstanceType"))
        if shape is not None:
            cpus, gpus, accel = shape
            if res.get("GPU", 0) != gpus:
                problems.append(f"available_node_types.{name}.resources.GPU: {res.get('GPU', 0)}, but "
                                f"{t['node_config']['InstanceType']} has {gpus} GPUs")
            if res.get("CPU", 0) > cpus:
                problems.append(f"available_node_types.{name}.resources.CPU: {res['CPU']}, but "
                                f"{t['node_config']['InstanceType']} has {cpus} vCPUs")
            for k in res:
                if k.startswith("accelerator_type:") and k.split(":", 1)[1] != accel:
                    problems.append(f"available_node_types.{name}.resources: {k}, but "
                                    f"{t['node_config']['InstanceType']} has {accel or 'no'} GPUs")
        if t.get("min_workers", 0) > t.get("max_workers", 0):
            problems.append(f"available_node_types.{name}: min_workers {t['min_workers']} > max_workers {t['max_workers']}")
        if name != head:
            problems += check_group_resource(name, res, f"available_node_types.{name}")
            accels = frozenset(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
            groups.append(Group(name, res.get("GPU", 0), t.get("max_workers", 0), accels))
    if not any(g.gpus for g in groups):
        problems.append("available_node_types: no GPU worker node type")
    # Token authentication: every `ray start` in token mode, the token on every node.
    for key, cmd in _start_commands(doc):
        if "RAY_AUTH_MODE=token" not in cmd:
            problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token: {cmd.strip()[:80]}")
        if "--dashboard-host=0.0.0.0" in cmd:
            problems.append(f"{key}: the dashboard (Jobs API) listens on every interface; use "
                            "--dashboard-host=127.0.0.1 and `ray dashboard` to tunnel")
    if not any(dst.rstrip("/").endswith(".ray/auth_token") for dst in doc.get("file_mounts", {})):
        problems.append("file_mounts: no auth token distributed to the nodes (mount ~/.ray/auth_token)")
    if f"--num-cpus={types[head]['resources'].get('CPU')}" not in " ".join(doc.get("head_start_ray_commands", [])):
        problems.append(f"head_start_ray_commands: --num-cpus must match available_node_types.{head}.resources.CPU")
    # The job configs this cluster is sized for (metadata.workloads).
    mounts = [opt.split()[1].split(":")[1] for opt in doc.get("docker", {}).get("run_options", []) if opt.startswith("-v ")]
    for i, w in enumerate(doc.get("metadata", {}).get("workloads", [])):
        where = f"metadata.workloads[{i}]"
        problems += check_workload(w, where, groups, lambda cfg, where=where: _on_mount(cfg.output_dir, mounts, where))
    return problems


def _on_mount(output_dir: str, mounts: list[str], where: str) -> list[str]:
    if "://" in output_dir or not any(output_dir.startswith(m.rstrip("/") + "/") for m in mounts):
        return [f"{where}: output_dir {output_dir} is not on a shared mount of the nodes' containers "
                f"(docker run_options -v: {mounts or 'none'})"]
    return []


# --------------------------------------------------------------------------- files


def check_file(path: str | Path) -> list[str]:
    """Every problem of one cluster config, each as '<file>: <where>: <what>'."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: cannot read: {e}"]
    problems = []
    for doc in docs:
        if doc.get("apiVersion", "").startswith("ray.io/"):
            problems += check_kuberay(path, doc)
        elif "available_node_types" in doc or "provider" in doc:
            problems += check_launcher(path, doc)
        elif doc.get("kind") in ("PersistentVolumeClaim",):
            continue
        else:
            problems.append(f"kind {doc.get('kind')!r}: not a RayCluster/RayJob/RayService or a cluster launcher config")
    return [f"{path}: {p}" for p in problems]


def cluster_files() -> list[Path]:
    here = REPO / "cluster"
    return sorted([*here.glob("*.yaml"), *(here / "kuberay").glob("*.yaml")])


def main(argv: list[str] | None = None) -> int:
    paths = (argv if argv is not None else sys.argv[1:]) or cluster_files()
    if not (crd_dir()).is_dir():
        print(f"note: {crd_dir()} not found: KubeRay manifests are checked without their CRD schemas", file=sys.stderr)
    problems = [p for path in paths for p in check_file(path)]
    for p in problems:
        print(p)
    print(f"{len(paths)} file(s), {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
