"""Submit-time checks: bad inputs fail before any Ray worker starts, naming the field.

`check_inputs` reads the user-supplied files (before Ray starts); `check_cluster` compares
every pool's request with the cluster's resources right after `ray.init`, before the
pipeline runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from fspo_ray.engines.embedder import embedder_problem
from fspo_ray.sections import ConfigError
from fspo_ray.splits import SPLITS

PERSONA_FIELDS = ("user_id", "description", "split")
QUESTION_FIELDS = ("domain", "question")


def _read_records(path: str, field: str) -> list[tuple[int, dict]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{field}: file not found: {p}")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{field}: {p} line {i} is not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{field}: {p} line {i} must be a JSON object")
        out.append((i, rec))
    return out


def check_persona_file(path: str, domains: list[str]) -> int:
    """Every line {user_id, description, split[, domain]}; returns the number of users."""
    field = "generate.llm.persona_file"
    seen: set[str] = set()
    records = _read_records(path, field)
    if not records:
        raise ConfigError(f"{field}: {path} holds no personas")
    for i, rec in records:
        missing = [f for f in PERSONA_FIELDS if not isinstance(rec.get(f), str) or not rec[f].strip()]
        if missing:
            raise ConfigError(
                f"{field}: {path} line {i} lacks {missing} (each line needs {list(PERSONA_FIELDS)}, "
                "optional 'domain')"
            )
        if rec["split"] not in SPLITS:
            raise ConfigError(f"{field}: {path} line {i}: unknown split {rec['split']!r}; expected one of {SPLITS}")
        if "domain" in rec and rec["domain"] not in domains:
            raise ConfigError(f"{field}: {path} line {i}: domain {rec['domain']!r} is not in world.domains {domains}")
        if rec["user_id"] in seen:
            raise ConfigError(f"{field}: {path} line {i}: duplicate user_id {rec['user_id']!r}")
        seen.add(rec["user_id"])
    return len(records)


def check_questions_file(path: str, domains: list[str]) -> dict[str, int]:
    """Every line {domain, question}; every domain in use needs at least one question."""
    field = "generate.llm.questions_file"
    counts = {d: 0 for d in domains}
    for i, rec in _read_records(path, field):
        missing = [f for f in QUESTION_FIELDS if not isinstance(rec.get(f), str) or not rec[f].strip()]
        if missing:
            raise ConfigError(f"{field}: {path} line {i} lacks {missing} (each line needs {list(QUESTION_FIELDS)})")
        if rec["domain"] in counts:
            counts[rec["domain"]] += 1
    empty = [d for d, n in counts.items() if n == 0]
    if empty:
        raise ConfigError(
            f"{field}: the question set is empty for domain(s) {empty} (world.domains = {domains}); "
            "add questions or drop those domains"
        )
    return counts


def check_inputs(cfg) -> None:
    """Files and paths the run needs, checked before Ray starts."""
    g = cfg.generate
    if g.provider == "llm":
        if g.llm.persona_file is not None:
            check_persona_file(g.llm.persona_file, list(cfg.world.domains))
        if g.llm.questions_file is not None:
            check_questions_file(g.llm.questions_file, list(cfg.world.domains))
    if g.report.similarity_questions > 0:
        problem = embedder_problem(cfg.embedder)
        if problem is not None:
            raise ConfigError(f"{problem} (the data report's similarity ablation needs it; "
                              "generate.report.similarity_questions=0 skips it)")


def pools(cfg) -> list[tuple[str, int, dict]]:
    """(config field, actors or concurrent tasks, resources per worker) of every pool."""
    g = cfg.generate
    out = [("generate.tasks", g.tasks.concurrency or 1, {"CPU": g.tasks.num_cpus})]
    if g.report.similarity_questions > 0:
        e = cfg.embedder
        out.append(("embedder", 1, {"CPU": e.num_cpus, "GPU": e.num_gpus}))
    if g.provider == "llm":
        models = [(f"generate.llm.generators[{i}]", m) for i, m in enumerate(g.llm.generators)]
        models.append(("generate.llm.judge", g.llm.judge))
        for field, m in models:
            out.append((field, m.concurrency, m.resources()))
    return out


def autoscaling_ceiling() -> dict | None:
    """What an autoscaling cluster can grow to, for `check_cluster`: None without an autoscaler;
    the node groups' maximum resources where the autoscaler reports them to the GCS (autoscaler v2,
    KubeRay); {} where an autoscaler runs but its bounds are not visible from here (v1)."""
    import ray
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    most = ray._private.state.state.get_max_resources_from_cluster_config()
    if most:
        return {k: float(v) for k, v in most.items()}
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    return {} if autoscaler_running(status, format_readonly_node_type) else None


def autoscaler_running(status: bytes | None, readonly_type) -> bool:
    """Whether the head monitor's status (DEBUG_AUTOSCALING_STATUS) comes from a real autoscaler.
    The monitor writes it on every cluster, a plain `ray.init` one included: there it runs a
    read-only provider whose node types are the anonymous `readonly_type(node_id)`. A real
    autoscaler (cluster launcher v1, the fake multi-node provider) reports configured node types."""
    try:
        mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return any(kind != readonly_type(node) for node, kind in mapping.items())


def check_cluster(cfg, resources: dict, ceiling: dict | None = None) -> None:
    """Fail when a pool asks for more than the whole cluster has, or can grow to under its
    autoscaler (`ceiling`, see autoscaling_ceiling): such a pool would never schedule. A cluster
    whose worker groups start at zero nodes has no CPUs until a job asks for them."""
    if not cfg.generate.check_resources or ceiling == {}:
        return  # an autoscaler whose bounds we cannot see: it reports infeasible demands itself
    for field, n, per in pools(cfg):
        for kind, amount in per.items():
            if amount <= 0:
                continue
            have = max(float(resources.get(kind, 0.0)), float((ceiling or {}).get(kind, 0.0)))
            need = n * amount
            if need > have + 1e-9:
                what = "concurrency" if n > 1 or field != "generate.tasks" else "num_cpus"
                grow = " (with its autoscaler's largest node groups)" if ceiling else ""
                raise ConfigError(
                    f"{field}.{what}: {n} worker(s) x {amount:g} {kind} = {need:g} {kind}, but the "
                    f"cluster has {have:g} {kind}{grow}; lower {field}.concurrency or its resources"
                )
