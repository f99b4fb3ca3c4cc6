"""Serve metrics (ray.serve.metrics, exported to Prometheus as ray_fspo_*), plus a local
snapshot of the same numbers per replica for tests and debugging.

Only counts, codes, stages and durations are recorded: never user text.
"""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class ServeMetrics:
    def __init__(self):
        from ray.serve import metrics

        self._requests = metrics.Counter("fspo_requests", "Requests received, by endpoint.", tag_keys=("endpoint",))
        self._errors = metrics.Counter("fspo_errors", "Error responses, by endpoint and HTTP status code.",
                                       tag_keys=("endpoint", "code"))
        self._latency = metrics.Histogram("fspo_stage_latency_s", "Latency by stage (persona, answer, total).",
                                          boundaries=LATENCY_BOUNDARIES_S, tag_keys=("stage",))
        self._cache = metrics.Counter("fspo_persona_cache_lookups", "Persona cache lookups, by result.",
                                      tag_keys=("result",))
        self._hit_ratio = metrics.Gauge("fspo_persona_cache_hit_ratio", "Persona cache hits / lookups on this replica.")
        self._tokens = metrics.Counter("fspo_generated_tokens", "Tokens generated, by stage (persona, answer).",
                                       tag_keys=("stage",))
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.latency_sum: Counter = Counter()

    def request(self, endpoint: str) -> None:
        self._requests.inc(tags={"endpoint": endpoint})
        with self._lock:
            self.counts[f"requests:{endpoint}"] += 1

    def error(self, endpoint: str, code: int) -> None:
        self._errors.inc(tags={"endpoint": endpoint, "code": str(code)})
        with self._lock:
            self.counts[f"errors:{endpoint}:{code}"] += 1

    def latency(self, stage: str, seconds: float) -> None:
        self._latency.observe(seconds, tags={"stage": stage})
        with self._lock:
            self.counts[f"latency_n:{stage}"] += 1
            self.latency_sum[stage] += seconds

    def cache(self, hit: bool) -> None:
        self._cache.inc(tags={"result": "hit" if hit else "miss"})
        with self._lock:
            self.counts["cache:hit" if hit else "cache:miss"] += 1
            hits, misses = self.counts["cache:hit"], self.counts["cache:miss"]
        self._hit_ratio.set(hits / (hits + misses))

    def tokens(self, stage: str, n: int) -> None:
        if n:
            self._tokens.inc(n, tags={"stage": stage})
            with self._lock:
                self.counts[f"tokens:{stage}"] += n

    def snapshot(self) -> dict:
        with self._lock:
            counts = dict(self.counts)
        hits, misses = counts.get("cache:hit", 0), counts.get("cache:miss", 0)
        counts["cache_hit_ratio"] = hits / (hits + misses) if hits + misses else 0.0
        return counts
