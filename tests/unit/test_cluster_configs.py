"""The cluster configs in cluster/: schemas (Ray's launcher schema, the KubeRay CRDs), token
authentication everywhere, what they name exists and validates, GPU shapes fit the job
configs, and a broken copy fails with a message that names the file and the fault.

The checker is cluster/check.py (also an operator's CLI: `python cluster/check.py`).
KubeRay CRDs come from ../shared/kuberay-crds or $FSPO_KUBERAY_CRDS; tests that need them
skip with a reason where they are absent.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fspo_cluster_check", REPO / "cluster" / "check.py")
check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = check  # dataclasses look their module up by name
_spec.loader.exec_module(check)

KUBERAY = sorted((REPO / "cluster" / "kuberay").glob("ray*.yaml"))
LAUNCHER = REPO / "cluster" / "aws.yaml"
RUN_DIR = "/mnt/shared/fspo/runs/llama3b"
needs_crds = pytest.mark.skipif(
    not check.crd_dir().is_dir(),
    reason=f"KubeRay CRD schemas not found at {check.crd_dir()} (set FSPO_KUBERAY_CRDS to their folder)",
)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


def containers(doc: dict) -> list[dict]:
    c = cluster_spec(doc)
    return [c["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in c.get("workerGroupSpecs", [])]


def jobs_of(doc: dict) -> tuple[str, str, list[str]]:
    return check.parse_entrypoint(doc["spec"]["entrypoint"])


# --------------------------------------------------------------------------- schemas


def test_the_shipped_files_are_the_expected_set():
    names = sorted(p.name for p in KUBERAY)
    assert names == ["raycluster.yaml", "rayjob-evaluate.yaml", "rayjob-generate.yaml", "rayjob-train.yaml", "rayservice.yaml"]
    assert {load(p)["kind"] for p in KUBERAY} == {"RayCluster", "RayJob", "RayService"}


def test_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(LAUNCHER)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)  # the file as written
    full = prepare_config(copy.deepcopy(raw))  # as `ray up` fills in the AWS defaults
    validate_config(full)
    # Our commands replace the defaults' (which would pip-install a nightly Ray wheel).
    assert not any("ray-wheels" in c or "pip install -U" in c for c in full["setup_commands"] + full["head_setup_commands"])
    types = full["available_node_types"]
    assert full["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert full["idle_timeout_minutes"] == 10
    for name in ("gpu_generate", "gpu_train"):
        t = types[name]
        assert t["resources"] == {"CPU": 192, "GPU": 8, "accelerator_type:H100": 1, f"group_{name}": 1}
        assert t["node_config"]["InstanceType"] == "p5.48xlarge" and t["min_workers"] == 0
    assert (types["gpu_generate"]["max_workers"], types["gpu_train"]["max_workers"]) == (4, 1)
    assert types["gpu_generate"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"  # resumable work
    assert "InstanceMarketOptions" not in types["gpu_train"]["node_config"]


@needs_crds
@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_validates_against_the_crd(path):
    doc = load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert check.schema_problems(doc, doc["kind"]) == []


@needs_crds
def test_the_strict_crd_schema_rejects_what_kubernetes_would_silently_prune():
    doc = load(REPO / "cluster" / "kuberay" / "rayjob-train.yaml")
    doc["spec"]["shutdownAfterJobFinish"] = True  # a typo: the apiserver would drop it and keep the cluster
    assert check.schema_problems(doc, "RayJob") == [
        "spec: Additional properties are not allowed ('shutdownAfterJobFinish' was unexpected)"]


@pytest.mark.parametrize("path", [LAUNCHER, *KUBERAY, REPO / "cluster" / "kuberay" / "shared-storage.yaml"],
                         ids=lambda p: p.name)
def test_every_shipped_config_passes_the_checker(path):
    assert check.check_file(path) == []


def test_raycluster_is_what_the_ray_autoscaler_reads():
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = load(REPO / "cluster" / "kuberay" / "raycluster.yaml")
    assert cr["spec"]["enableInTreeAutoscaling"] is True
    cr["metadata"]["namespace"] = "default"
    auto = _derive_autoscaling_config_from_ray_cr(cr)  # Ray's own translation, validated against its schema
    types = auto["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    for group in ("gpu-generate", "gpu-train"):
        assert types[group]["resources"]["GPU"] == 8
        assert types[group]["resources"]["accelerator_type:H100"] == 1  # scale from zero for H100 demands
        assert types[group]["min_workers"] == 0
    for group in ("cpu", "gpu-generate", "gpu-train"):  # what work and the autoscaler target a group by
        assert types[group]["resources"]["group_" + group.replace("-", "_")] == 1
    assert (types["gpu-generate"]["max_workers"], types["gpu-train"]["max_workers"], types["cpu"]["max_workers"]) == (4, 1, 6)
    assert auto["idle_timeout_minutes"] == 10
    assert auto["upscaling_speed"] == load(LAUNCHER)["upscaling_speed"] == 1  # the launcher's rate limit too


# --------------------------------------------------------------------------- token auth, secrets


def test_token_authentication_on_every_cluster_config():
    raw = load(LAUNCHER)
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in raw[key] if "ray start" in c]
    assert len(starts) == 2 and all("export RAY_AUTH_MODE=token;" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in raw["head_start_ray_commands"][-1]  # the Jobs API is not on the network
    assert raw["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    assert "chmod 600 ~/.ray/auth_token" in raw["setup_commands"]
    for path in KUBERAY:
        doc = load(path)
        assert cluster_spec(doc)["authOptions"] == {"mode": "token", "secretName": "fspo-ray-auth"}, path.name
        assert cluster_spec(doc)["rayVersion"] == "2.60.0"


def test_no_literal_secrets_and_the_serve_api_key_comes_from_a_secret():
    for path in KUBERAY:
        for c in containers(load(path)):
            for env in c.get("env", []):
                if check.looks_secret(env["name"]):
                    assert "secretKeyRef" in env["valueFrom"], (path.name, env)
    svc = load(REPO / "cluster" / "kuberay" / "rayservice.yaml")
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["auth"] == {"api_key_env": "FSPO_API_KEY"}
    for c in containers(svc):
        env = {e["name"]: e for e in c["env"]}
        assert env["FSPO_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "fspo-serve-api-key", "key": "api_key"}


# --------------------------------------------------------------------------- what the manifests name


def test_job_manifests_name_existing_modules_and_configs_and_share_one_run_directory():
    from fspo_ray.config import load_config

    image_dir = re.search(r"COPY --chown=\S+ \. (\S+)", (REPO / "cluster" / "Dockerfile").read_text()).group(1)
    assert image_dir == check.IMAGE_REPO_DIR
    stages, output_dirs = {}, set()
    for path in KUBERAY:
        doc = load(path)
        if doc["kind"] != "RayJob":
            continue
        module, config, overrides = jobs_of(doc)
        stage = module.removeprefix("jobs.")
        assert (REPO / "jobs" / f"{stage}.py").is_file() and (REPO / config).is_file()
        cfg = load_config(REPO / config, overrides)
        stages[stage] = config
        output_dirs.add(cfg.output_dir)
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
        assert env["working_dir"] == image_dir and env["env_vars"]["HF_HOME"].startswith("/mnt/shared/")
        assert {img for c in containers(doc) for img in [c["image"]]} == {"ghcr.io/your-org/fspo-ray:0.1.0-gpu"}
    assert stages == {"generate": "jobs/configs/gpu_generate_70b.yaml", "train": "jobs/configs/gpu_llama3b.yaml",
                      "evaluate": "jobs/configs/gpu_llama3b.yaml"}
    assert output_dirs == {RUN_DIR}  # train reads the prefs generate wrote; evaluate reads train's models


def test_every_pod_mounts_the_shared_claim():
    pvc = load(REPO / "cluster" / "kuberay" / "shared-storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for path in KUBERAY:
        c = cluster_spec(load(path))
        for pod in [c["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in c["workerGroupSpecs"]]:
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
            assert claims == {pvc["metadata"]["name"]}, path.name
            assert {"name": "shared", "mountPath": "/mnt/shared"} in pod["containers"][0]["volumeMounts"], path.name


def test_every_job_config_in_the_repo_validates():
    from fspo_ray.config import load_config

    configs = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"world.yaml", "gpu_generate_70b.yaml", "gpu_llama3b.yaml"}
    for p in configs:
        load_config(p)
    llama = load_config(REPO / "jobs" / "configs" / "gpu_llama3b.yaml")
    assert llama.model.name_or_path == "meta-llama/Llama-3.2-3B-Instruct" and llama.model.dtype == "auto"
    assert llama.train.use_gpu and llama.train.zero_stage == 3 and llama.train.num_workers == 8
    assert (llama.loss.loss_type, llama.loss.beta) == ("ipo", 0.01)
    fspo = next(s for s in llama.train.stages if s.name == "fspo")
    assert (fspo.lr, fspo.optimizer, fspo.warmup_steps, fspo.grad_clip, fspo.init_from) == (1e-6, "rmsprop", 150, 10.0, "sft")
    assert llama.generate.provider == "world"  # training reads prefs; only gpu_generate_70b.yaml generates with LLMs
    assert load_config(REPO / "jobs" / "configs" / "gpu_generate_70b.yaml").generate.provider == "llm"


def test_rayservice_serves_the_builder_with_serve_gpu_args_and_the_trained_models():
    from ray.serve.schema import ServeDeploySchema

    from fspo_ray.config import load_config
    from fspo_ray.serving.config import load_serve_config

    svc = load(REPO / "cluster" / "kuberay" / "rayservice.yaml")
    served = yaml.safe_load(svc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    (app,) = served["applications"]
    (ref,) = load(REPO / "serve" / "gpu.yaml")["applications"]
    assert app["import_path"] == ref["import_path"] == "fspo_ray.serving.app:build_app"
    assert check.check_import_path(app["import_path"]) is None
    # serve/gpu.yaml's args, but for the shared run directory and a single-writer profile store.
    expected = copy.deepcopy(ref["args"])
    expected["output_dir"] = RUN_DIR
    expected["deployments"]["ingress"]["autoscaling"]["max_replicas"] = 1
    assert app["args"] == expected
    cfg = load_serve_config(app["args"])
    train = load_config(REPO / "jobs" / "configs" / "gpu_llama3b.yaml", [f"output_dir={RUN_DIR}"])
    stages = {s.name for s in train.train.stages}
    for engine in (cfg.personalize.persona, cfg.personalize.answer):
        assert Path(engine.model).parent == Path(RUN_DIR) / "models" and Path(engine.model).name in stages
    # served with the prompt format it was trained on: left unset, it comes with each model (fspo_prompt.json)
    assert cfg.personalize.template is None and cfg.personalize.num_shots is None
    assert svc["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_docs_commands_name_existing_modules_and_valid_configs():
    from fspo_ray.config import load_config

    text = (REPO / "docs" / "operators.md").read_text() + (REPO / "README.md").read_text()
    commands = [line.split(" -- ", 1)[1] for line in text.splitlines() if "ray job submit" in line and " -- python -m jobs." in line]
    assert len(commands) >= 8
    seen = set()
    for cmd in commands:
        module, config, overrides = check.parse_entrypoint(cmd.split("#")[0].strip().rstrip("\\").strip())
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), cmd
        load_config(REPO / config, [o for o in overrides if "$" not in o])
        seen.add(module)
    assert seen >= {"jobs.generate", "jobs.build_model", "jobs.train", "jobs.evaluate"}
    assert "export RAY_AUTH_MODE=token" in text


# --------------------------------------------------------------------------- resource shapes


def test_gpu_pools_of_the_shipped_configs_fit_their_node_groups():
    from fspo_ray.config import load_config

    gen = load_config(REPO / "jobs" / "configs" / "gpu_generate_70b.yaml")
    pools = {p.where: (p.gpus, p.replicas, p.accelerator) for p in check.gpu_pools("generate", gen)}
    assert pools == {
        "generate.llm.generators[llama-3.3-70b]": (4, 4, "H100"),   # 16 GPUs: two 8-GPU nodes
        "generate.llm.generators[gemma-2-27b]": (2, 4, "H100"),
        "generate.llm.judge": (4, 4, "H100"),                       # 2 replicas, twice (judging + refinement)
        "embedder": (1, 1, None),
    }
    train = load_config(REPO / "jobs" / "configs" / "gpu_llama3b.yaml")
    assert [(p.where, p.gpus, p.replicas) for p in check.gpu_pools("train", train)] == [
        ("train.num_workers", 1, 8)]
    h100 = frozenset({"H100"})
    node = check.Group("gpu", gpus=8, max_nodes=2, accelerators=h100)
    assert check.check_fit(check.gpu_pools("generate", gen), [node]) == []
    assert check.check_fit(check.gpu_pools("train", train), [check.Group("t", 8, 1, h100)]) == []
    assert check.check_fit(check.gpu_pools("evaluate", train), [node]) == []


def test_check_fit_names_each_impossible_shape():
    pools = [check.Pool("tp", gpus=3, replicas=1), check.Pool("big", gpus=16, replicas=1),
             check.Pool("ranks", gpus=1, replicas=12, workers=True), check.Pool("a100", 1, 1, accelerator="A100")]
    problems = check.check_fit(pools, [check.Group("g", gpus=8, max_nodes=2, accelerators=frozenset({"H100"}))])
    assert problems == [
        "tp: 3 GPUs per replica do not divide the 8 GPUs of a g node (2 would sit idle)",
        "big: 16 GPUs per replica (tensor_parallel_size) must fit on one node, but the largest GPU group (g) has 8 GPUs per node",
        "ranks: 12 GPU workers must fill whole g nodes of 8 GPUs (<= 8 or a multiple of it)",
        "a100: asks for accelerator_type A100, but no GPU node group provides it",
    ]


# --------------------------------------------------------------------------- bad input: broken copies


def _mutate_job(name, fn):
    def make(tmp):
        doc = load(REPO / "cluster" / "kuberay" / name)
        fn(doc)
        return doc
    return make


def _set_entrypoint(doc, **repl):
    module, config, overrides = jobs_of(doc)
    module, config = repl.get("module", module), repl.get("config", config)
    overrides = overrides + repl.get("extra", [])
    doc["spec"]["entrypoint"] = shlex.join(["python", "-m", module, "--config", config, *overrides])


def _gpus(doc, n):
    for g in cluster_spec(doc)["workerGroupSpecs"]:
        for k in ("requests", "limits"):
            g["template"]["spec"]["containers"][0]["resources"][k]["nvidia.com/gpu"] = str(n)


def _serve_args(doc, fn):
    served = yaml.safe_load(doc["spec"]["serveConfigV2"])
    fn(served["applications"][0])
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(served)


def _launcher(fn):
    def make(tmp):
        doc = load(LAUNCHER)
        fn(doc)
        return doc
    return make


BROKEN = {
    "missing entrypoint module": (
        _mutate_job("rayjob-train.yaml", lambda d: _set_entrypoint(d, module="jobs.trian")),
        r"spec\.entrypoint: entrypoint module jobs\.trian does not exist \(no jobs/trian\.py\)"),
    "missing config file": (
        _mutate_job("rayjob-evaluate.yaml", lambda d: _set_entrypoint(d, config="jobs/configs/gpu_llama8b.yaml")),
        r"spec\.entrypoint: --config jobs/configs/gpu_llama8b\.yaml: no such file in the repository"),
    "invalid override": (
        _mutate_job("rayjob-generate.yaml", lambda d: _set_entrypoint(d, extra=["generate.llm.judge.tensor_parallel_size=0"])),
        r"spec\.entrypoint: --config jobs/configs/gpu_generate_70b\.yaml .*generate\.llm\.judge\.tensor_parallel_size: "
        r"Input should be greater than or equal to 1"),
    "not a python -m entrypoint": (
        _mutate_job("rayjob-train.yaml", lambda d: d["spec"].update(entrypoint="bash run.sh")),
        r"spec\.entrypoint: 'bash run\.sh' is not `python -m jobs\.<stage> --config <file>"),
    "TP larger than a node": (
        _mutate_job("rayjob-generate.yaml", lambda d: _gpus(d, 2)),
        r"generate\.llm\.generators\[llama-3\.3-70b\]: 4 GPUs per replica \(tensor_parallel_size\) must fit on one node, "
        r"but the largest GPU group \(gpu-generate\) has 2 GPUs per node"),
    "too few GPUs for the train ranks": (
        _mutate_job("rayjob-train.yaml", lambda d: _gpus(d, 4)),
        r"spec\.entrypoint \(train\): train\.num_workers: 8 replica\(s\) x 1 GPU = 8 GPUs, but the GPU groups \(gpu-train\) "
        r"hold at most 4"),
    "no H100 group": (
        _mutate_job("rayjob-generate.yaml", lambda d: cluster_spec(d)["workerGroupSpecs"][0].update(rayStartParams={})),
        r"generate\.llm\.judge: asks for accelerator_type H100, but no GPU node group provides it"),
    "output_dir off the shared volume": (
        _mutate_job("rayjob-train.yaml", lambda d: _set_entrypoint(d, extra=["output_dir=/tmp/run"])),
        r"spec\.entrypoint: output_dir /tmp/run is not on a volume mounted by group head"),
    "output_dir as an object-store URI": (
        _mutate_job("rayjob-generate.yaml", lambda d: _set_entrypoint(d, extra=["output_dir=s3://bucket/runs/x"])),
        r"spec\.entrypoint: output_dir s3://bucket/runs/x is a URI; fspo-ray writes through a file system path"),
    "output_dir on a node-local volume": (
        _mutate_job("rayjob-train.yaml", lambda d: [
            g["template"]["spec"]["volumes"].__setitem__(0, {"name": "shared", "emptyDir": {}})
            for g in cluster_spec(d)["workerGroupSpecs"]]),
        r"output_dir /mnt/shared/fspo/runs/llama3b is on volume shared of group gpu-train, a emptyDir: node-local"),
    "job cluster kept": (
        _mutate_job("rayjob-generate.yaml", lambda d: d["spec"].update(shutdownAfterJobFinishes=False)),
        r"spec\.shutdownAfterJobFinishes: must be true"),
    "token auth off": (
        _mutate_job("rayjob-evaluate.yaml", lambda d: cluster_spec(d).pop("authOptions")),
        r"spec\.rayClusterSpec\.authOptions\.mode: token authentication is off"),
    "head service exposed": (
        _mutate_job("raycluster.yaml", lambda d: d["spec"]["headGroupSpec"].update(serviceType="LoadBalancer")),
        r"spec\.headGroupSpec: the head service \(dashboard, Jobs API, GCS\) is exposed outside the cluster"),
    "secret in the runtime env": (
        _mutate_job("rayjob-train.yaml", lambda d: d["spec"].update(
            runtimeEnvYAML=d["spec"]["runtimeEnvYAML"] + "  HF_TOKEN: hf_abc\n")),
        r"spec\.runtimeEnvYAML: env_vars\.HF_TOKEN looks like a secret"),
    "wrong Ray version": (
        _mutate_job("raycluster.yaml", lambda d: d["spec"].update(rayVersion="2.9.0")),
        r"spec\.rayVersion: '2\.9\.0' but the project pins Ray 2\.60\.0"),
    "RayCluster workload with a missing config": (
        _mutate_job("raycluster.yaml", lambda d: d["metadata"]["annotations"].update(
            {"fspo-ray/workloads": "- {stage: train, config: jobs/configs/nope.yaml, group: gpu-train}"})),
        r"metadata\.annotations\[fspo-ray/workloads\]\[0\]: --config jobs/configs/nope\.yaml: no such file"),
    "missing Serve import path": (
        _mutate_job("rayservice.yaml", lambda d: _serve_args(d, lambda a: a.update(import_path="fspo_ray.serving.ap:build_app"))),
        r"applications\[fspo\]: import_path 'fspo_ray\.serving\.ap:build_app': module fspo_ray\.serving\.ap has no file"),
    "Serve builder renamed": (
        _mutate_job("rayservice.yaml", lambda d: _serve_args(d, lambda a: a.update(import_path="fspo_ray.serving.app:make_app"))),
        r"fspo_ray/serving/app\.py defines no make_app"),
    "Serve API key in the manifest": (
        _mutate_job("rayservice.yaml", lambda d: _serve_args(d, lambda a: a["args"].update(auth={"api_key": "abc"}))),
        r"args\.auth\.api_key: a literal key in the manifest"),
    "Serve replicas beyond the GPU group": (
        _mutate_job("rayservice.yaml", lambda d: _serve_args(
            d, lambda a: a["args"]["deployments"]["answer"]["autoscaling"].update(max_replicas=16))),
        r"deployments \(persona \+ answer at max_replicas\): 20 replica\(s\) x 1 GPU = 20 GPUs, but the GPU groups "
        r"\(gpu-serve\) hold at most 12"),
    "literal secret in a pod": (
        _mutate_job("rayservice.yaml", lambda d: cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]
                    ["env"].__setitem__(0, {"name": "FSPO_API_KEY", "value": "abc"})),
        r"group head: container ray-head: env FSPO_API_KEY is a literal value; use valueFrom\.secretKeyRef"),
    "launcher: wrong GPU count": (
        _launcher(lambda d: d["available_node_types"]["gpu_train"]["resources"].update(GPU=4)),
        r"available_node_types\.gpu_train\.resources\.GPU: 4, but p5\.48xlarge has 8 GPUs"),
    "launcher: ray start without token auth": (
        _launcher(lambda d: d.update(worker_start_ray_commands=["ray stop", "ray start --address=$RAY_HEAD_IP:6379"])),
        r"worker_start_ray_commands: `ray start` without RAY_AUTH_MODE=token"),
    "launcher: no token on the nodes": (
        _launcher(lambda d: d.update(file_mounts={})),
        r"file_mounts: no auth token distributed to the nodes"),
    "launcher: dashboard on every interface": (
        _launcher(lambda d: d["head_start_ray_commands"].__setitem__(
            -1, d["head_start_ray_commands"][-1].replace("127.0.0.1", "0.0.0.0"))),
        r"head_start_ray_commands: the dashboard \(Jobs API\) listens on every interface"),
    "launcher: group without its resource": (
        _launcher(lambda d: d["available_node_types"]["gpu_generate"]["resources"].pop("group_gpu_generate")),
        r"available_node_types\.gpu_generate: resources lack group_gpu_generate: 1"),
    "group without its resource": (
        _mutate_job("raycluster.yaml", lambda d: d["spec"]["workerGroupSpecs"][0].update(rayStartParams={})),
        r"spec\.workerGroupSpecs\[cpu\]\.rayStartParams: resources lack group_cpu: 1"),
    "launcher: no idle timeout": (
        _launcher(lambda d: d.pop("idle_timeout_minutes")),
        r"idle_timeout_minutes: not set"),
    "launcher: unknown key": (
        _launcher(lambda d: d.update(idle_timeout_minute=5)),
        r"<root>: Additional properties are not allowed \('idle_timeout_minute' was unexpected\)"),
    "launcher: workload on a missing node type": (
        _launcher(lambda d: d["metadata"]["workloads"][1].update(group="gpu_trian")),
        r"metadata\.workloads\[1\]: group 'gpu_trian' is not a worker group"),
    "launcher: output_dir not on the shared mount": (
        _launcher(lambda d: d["metadata"]["workloads"][1].update(overrides=["output_dir=/home/ray/runs/x"])),
        r"metadata\.workloads\[1\]: output_dir /home/ray/runs/x is not on a shared mount of the nodes' containers"),
    "launcher: missing entrypoint module": (
        _launcher(lambda d: d["metadata"]["workloads"][0].update(stage="generation")),
        r"metadata\.workloads\[0\]: entrypoint module jobs\.generation does not exist"),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=lambda c: c.replace(" ", "-"))
def test_a_broken_copy_fails_with_a_message_naming_it(case, tmp_path):
    make, pattern = BROKEN[case]
    if "launcher" not in case and not check.crd_dir().is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {check.crd_dir()}")
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(make(tmp_path), sort_keys=False))
    problems = check.check_file(path)
    assert problems, case
    assert all(p.startswith(f"{path}: ") for p in problems)  # every message names the file
    assert any(re.search(pattern, p) for p in problems), "\n".join(problems)


def test_the_cli_exits_1_and_prints_each_problem(tmp_path, capsys):
    doc = load(LAUNCHER)
    doc["available_node_types"]["gpu_generate"]["resources"]["GPU"] = 2
    bad = tmp_path / "aws.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert check.main([str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{bad}: available_node_types.gpu_generate.resources.GPU: 2, but p5.48xlarge has 8 GPUs" in out
    assert check.main([str(LAUNCHER)]) == 0


# --------------------------------------------------------------------------- the docs cite real tests


@pytest.mark.parametrize("doc", ["SECURITY.md", "docs/operators.md"])
def test_tests_cited_in_the_docs_exist(doc):
    """Every `tests/...py::name` a protection or a resilience row cites is a test in that file,
    and every `[case-id]` of the checker is one of BROKEN's cases."""
    text = (REPO / doc).read_text()
    cited = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
    assert cited, doc
    for path, name in cited:
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"{doc} cites {path}::{name}"
    # bare `test_name` references after a cited file refer to the same file
    cases = {c.replace(" ", "-") for c in BROKEN}
    for case in re.findall(r"`\[([\w:.\-]+)\]`", text):
        assert case in cases, f"{doc} cites checker case [{case}]"
