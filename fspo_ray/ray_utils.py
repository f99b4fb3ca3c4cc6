"""Starting or joining Ray: the one place entrypoints touch `ray.init`."""

from __future__ import annotations

import logging
import os

from fspo_ray.config import RayConfig

logger = logging.getLogger(__name__)


def init_ray(cfg: RayConfig, *, runtime_env: dict | None = None) -> dict:
    """Join the cluster named by config or RAY_ADDRESS (as under `ray job submit`), else start a
    local one. Returns the cluster's resources."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": cfg.log_to_driver, "runtime_env": runtime_env}
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs.update(num_cpus=cfg.num_cpus)
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
        ray.init(**kwargs)
    resources = ray.cluster_resources()
    logger.info("ray: %s, resources %s", "joined " + address if address else "started locally", resources)
    return resources
