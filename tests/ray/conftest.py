"""The Ray layer: one small local cluster for the whole test session."""

import os

import pytest

# Worker prints once, fast Train reports; set before Ray starts so workers inherit them.
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RAY_TEST_CPUS = 4  # logical CPUs on a 2-core machine: room for fractional actors plus Train workers


def start_local_ray() -> None:
    """The session's local Ray (also restarted by tests/ray/test_multinode.py after its own clusters)."""
    import ray

    # A loaded machine can make the raylet's agents miss their start-up deadline: retry.
    for attempt in range(3):
        try:
            ray.init(num_cpus=RAY_TEST_CPUS, include_dashboard=True, log_to_driver=True,
                     runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                                               "TOKENIZERS_PARALLELISM": "false"}})
            return
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/ray/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.ray)
