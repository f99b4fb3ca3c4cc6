"""Starting or joining Ray: the one place entrypoints touch `ray.init`."""

from __future__ import annotations

import logging
import os

from pydantic import Field

from fspo_ray.sections import Section

logger = logging.getLogger(__name__)


class RayConfig(Section):
    """The `ray:` section: which cluster to join, or how to start a local one."""

    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001', ...). Unset: join the cluster "
        "named by RAY_ADDRESS (as under `ray job submit`), else start a local one.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started Ray (unset: all cores).")
    object_store_memory_mb: int | None = Field(
        None, ge=64, description="Object store size for a locally started Ray, in MB (unset: Ray's default)."
    )
    log_to_driver: bool = Field(True, description="Stream worker logs to the driver (and so to `ray job logs`).")


# Every job's workers get these: fast Ray Train reports (the controller polls every 2 s by
# default), one copy of each worker print, no tokenizer thread pools fighting Ray's workers.
JOB_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(cfg: RayConfig, *, runtime_env: dict | None = None) -> dict:
    """Join the cluster named by config or RAY_ADDRESS (as under `ray job submit`), else start a
    local one. Returns the cluster's resources."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    for k, v in JOB_ENV.items():
        os.environ.setdefault(k, v)  # a locally started cluster inherits the driver's environment
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {**JOB_ENV, **runtime_env.get("env_vars", {})}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": cfg.log_to_driver, "runtime_env": runtime_env}
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs.update(num_cpus=cfg.num_cpus)
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
        for attempt in range(3):  # on a saturated machine the raylet's agents can miss their start deadline
            try:
                ray.init(**kwargs)
                break
            except Exception as e:
                if "timed out during startup" not in str(e) or attempt == 2:
                    raise
                logger.warning("local Ray did not start in time (attempt %d of 3); retrying", attempt + 1)
                ray.shutdown()
    resources = ray.cluster_resources()
    logger.info("ray: %s, resources %s", "joined " + address if address else "started locally", resources)
    return resources
