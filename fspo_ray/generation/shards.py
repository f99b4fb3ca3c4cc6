"""Staging and atomic commit of shards under <output_dir>/prefs, so a rerun resumes.

A shard's rows are written to prefs/_staging/, renamed into prefs/split=<split>/<shard>.parquet
(one atomic rename on one filesystem), and then its manifest prefs/_manifest/<shard>.json
is written the same way: the manifest is the commit record. A rerun skips shards with a
manifest that matches the plan; a shard file without a manifest (a crash between the two
renames) is recomputed and replaced. Rows are a function of the seed and the shard, and
file names are the shard's, so a late duplicate of a task rewrites the same file with the
same rows: nothing is duplicated, nothing lost. Readers skip `_`-prefixed paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from fspo_ray.data import rows_to_table, validate_rows
from fspo_ray.errors import FspoError

MANIFEST_DIR = "_manifest"
STAGING_DIR = "_staging"
RUN_FILE = "_run.json"


def fingerprint(cfg) -> str:
    """Hash of every setting that decides the rows. User counts are left out on purpose:
    growing world.users_* keeps the committed shards (a changed last shard is redone)."""
    world = cfg.world.model_dump(mode="json")
    for k in ("users_train", "users_held_out", "users_interpolated"):
        world.pop(k, None)
    g = cfg.generate
    decided_by = {
        "seed": cfg.seed,
        "world": world,
        "provider": g.provider,
        "strategy": g.strategy,
        "views_per_question": g.views_per_question,
        "oversample": g.oversample,
        "users_per_shard": g.users_per_shard,
        "llm": _llm_fingerprint(g.llm, cfg.output_dir) if g.provider == "llm" else None,
    }
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]


# Where a model runs, not what it writes: changing these keeps the committed shards.
_RESOURCE_FIELDS = ("concurrency", "num_cpus", "num_gpus", "accelerator_type", "gpu_memory_utilization", "device",
                    "torch_threads")


def _llm_fingerprint(llm, output_dir: str) -> dict:
    d = llm.model_dump(mode="json")
    for m in [*d["generators"], d["judge"]]:
        for k in _RESOURCE_FIELDS:
            m.pop(k, None)
        # Paths are absolute once loaded: a model inside the run stays '{output_dir}/...', so the
        # same run read from another mount point resumes.
        if m["model"].startswith(output_dir.rstrip("/") + "/"):
            m["model"] = "{output_dir}" + m["model"][len(output_dir.rstrip("/")):]
    return d


class ShardStore:
    """The committed shards of one prefs/ directory."""

    def __init__(self, prefs_dir: str | Path):
        self.root = Path(prefs_dir)
        self.manifests = self.root / MANIFEST_DIR
        self.staging = self.root / STAGING_DIR

    def prepare(self, fp: str, *, overwrite: bool) -> None:
        """Create the layout; refuse prefs/ made by another config unless overwrite."""
        if overwrite and self.root.exists():
            shutil.rmtree(self.root)
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        run_file = self.root / RUN_FILE
        if run_file.exists():
            old = json.loads(run_file.read_text()).get("fingerprint")
            if old != fp:
                raise FspoError(
                    f"{self.root} holds preferences from a different generation config (fingerprint "
                    f"{old}, this config {fp}); use another output_dir or set generate.overwrite=true"
                )
        else:
            _atomic_write_text(run_file, json.dumps({"fingerprint": fp}))
        for stale in self.staging.iterdir():  # leftovers of a crashed run
            if stale.is_file():
                stale.unlink()
            else:
                shutil.rmtree(stale)

    def committed(self) -> dict[str, dict]:
        """shard_id -> manifest of every committed shard whose file exists."""
        out = {}
        if not self.manifests.exists():
            return out
        for f in sorted(self.manifests.glob("*.json")):
            try:
                m = json.loads(f.read_text())
            except (json.JSONDecodeError, OSError):
                continue  # a torn manifest cannot exist (atomic rename); be safe anyway
            if (self.root / m["file"]).exists():
                out[m["shard_id"]] = m
        return out

    def committed_one(self, shard_id: str) -> dict | None:
        """The manifest of one committed shard whose file exists, or None."""
        try:
            m = json.loads((self.manifests / f"{shard_id}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return m if (self.root / m["file"]).exists() else None

    def forget(self, shard_id: str) -> None:
        """Remove a shard that is no longer in the plan (its file, then its manifest)."""
        m_path = self.manifests / f"{shard_id}.json"
        if m_path.exists():
            m = json.loads(m_path.read_text())
            (self.root / m["file"]).unlink(missing_ok=True)
            m_path.unlink()

    def commit(self, shard: dict, rows: list[dict], stats: dict) -> dict:
        """Validate and write one shard's rows, then its manifest; returns the manifest."""
        kept, report = validate_rows(rows)
        split = shard["split"]
        rel = f"split={split}/{shard['shard_id']}.parquet"
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        tmp = self.staging / f"{shard['shard_id']}.{uuid.uuid4().hex}.parquet"
        pq.write_table(rows_to_table(kept), tmp)
        _fsync(tmp)
        os.replace(tmp, final)
        drops = dict(stats.get("drops", {}))
        for reason, n in report.rejected.items():
            drops[f"invalid_row: {reason}"] = n
        manifest = {
            **stats,
            "drops": drops,
            "rows": len(kept),
            "shard_id": shard["shard_id"],
            "split": split,
            "start": shard["start"],
            "count": shard["count"],
            "file": rel,
            "committed_at": time.time(),
        }
        _atomic_write_text(self.manifests / f"{shard['shard_id']}.json", json.dumps(manifest, sort_keys=True))
        return manifest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)
