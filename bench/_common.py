"""Helpers the CPU benchmarks share: fair subprocess settings, peak memory, the matmul rate.

Two sides of a comparison run in their own processes with the same threads and allocator
settings (docs/benchmarks.md, /work/shared/RUNTIME_NOTES.md "Threads and fair comparisons").
"""

from __future__ import annotations

import os
import resource
import time

# glibc malloc settings that cut page faults in CPU training (RUNTIME_NOTES); both sides get them.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def worker_env(threads: int, allocator: bool = True) -> dict[str, str]:
    """The environment of a benchmark subprocess: `threads` for OpenMP/MKL, the allocator settings."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    for var in ALLOCATOR_ENV:
        env.pop(var, None)
    if allocator:
        env.update(ALLOCATOR_ENV)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["TQDM_DISABLE"] = env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    return env


def recorded_env() -> dict[str, str | None]:
    """The settings that make a run comparable, as this process sees them."""
    return {var: os.environ.get(var) for var in (*THREAD_VARS, *ALLOCATOR_ENV)}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(size: int = 2048, reps: int = 8) -> float:
    """fp32 `torch.mm` rate of this process's threads, best of `reps` (the MFU denominator)."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (uptime's numbers)."""
    return [round(x, 2) for x in os.getloadavg()]


def significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")
