"""Episode shards for a training stage: sample, tokenize, score the reference once, write parquet.

The reference model's log-probs are computed once per episode in a Ray Data pass (an actor
pool holding the reference model) and stored with the episode, so training holds one model.
Shards are written per epoch (episodes are resampled every epoch) and reused on rerun.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fspo_ray.config import RunConfig, StageConfig
from fspo_ray.episodes import (
    Episode,
    EpisodeError,
    Preference,
    build_episodes,
    encode_episode,
)
from fspo_ray.errors import FspoError

logger = logging.getLogger(__name__)

EPISODE_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("user_id", pa.string()),
        ("split", pa.string()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("chosen_ids", pa.list_(pa.int32())),
        ("rejected_ids", pa.list_(pa.int32())),
        ("num_shots", pa.int32()),
        ("ref_chosen_logps", pa.float64()),
        ("ref_rejected_logps", pa.float64()),
    ]
)
DONE_MARKER = "_DONE.json"


@dataclass(frozen=True)
class UserData:
    """Preferences and gold descriptions per user, of one split."""

    prefs: dict[str, list[Preference]]
    descriptions: dict[str, str]


def load_users(pref_dir: str | Path, split: str, max_users: int | None = None) -> UserData:
    from fspo_ray.data import read_preferences

    table = read_preferences(pref_dir, splits=[split])
    prefs: dict[str, list[Preference]] = {}
    descriptions: dict[str, str] = {}
    for row in table.to_pylist():
        prefs.setdefault(row["user_id"], []).append(Preference(row["question"], row["chosen"], row["rejected"]))
        if row.get("user_description"):
            descriptions[row["user_id"]] = row["user_description"]
    if max_users is not None:
        keep = sorted(prefs)[:max_users]
        prefs = {u: prefs[u] for u in keep}
    return UserData(prefs, descriptions)


def stage_task(stage: StageConfig) -> str:
    return "describe" if stage.kind.startswith("describe") else "answer"


def stage_shots(cfg: RunConfig, stage: StageConfig) -> int:
    if stage.kind == "base_sft":
        return 0
    return cfg.episodes.num_shots if stage.num_shots is None else stage.num_shots


def sample_episodes(cfg: RunConfig, stage: StageConfig, users: UserData, epoch: int) -> list[Episode]:
    n = stage_shots(cfg, stage)
    episodes, stats = build_episodes(
        users.prefs,
        num_shots=n,
        min_shots=min(cfg.episodes.min_shots, n),
        seed=cfg.seed,
        epoch=epoch,
        repeats=1 if stage.kind == "base_sft" else cfg.episodes.repeats_per_epoch,
        descriptions=users.descriptions,
    )
    if stats.skipped_users:
        logger.warning("stage %s epoch %d: skipped users %s", stage.name, epoch, dict(stats.skipped_users))
    return episodes


def stage_episodes(cfg: RunConfig, stage: StageConfig, users: UserData, epoch: int) -> list[Episode]:
    """The episodes one epoch of `stage` trains on: all of them, or the first `max_episodes`
    of the epoch's shuffled order (a different subset every epoch)."""
    episodes = sample_episodes(cfg, stage, users, epoch)
    return episodes if stage.max_episodes is None else episodes[: stage.max_episodes]


def episode_records(episodes: list[Episode], split: str, task: str = "answer") -> list[dict]:
    """Episodes as plain records (Arrow-friendly) for a Ray Data pipeline.

    For RAT's describe task the completion is the gold description (chosen and rejected alike,
    for SFT); describe_preference replaces them with sampled descriptions.
    """
    records = []
    for i, e in enumerate(episodes):
        if task == "describe" and not e.user_description:
            raise FspoError(f"user {e.user_id} has no user_description; RAT describe stages need one per user")
        chosen, rejected = (e.user_description, e.user_description) if task == "describe" else (e.held_out.chosen, e.held_out.rejected)
        records.append({
            "index": i,
            "user_id": e.user_id,
            "split": split,
            "shots": [{"question": s.question, "chosen": s.chosen, "rejected": s.rejected} for s in e.shots],
            "question": e.held_out.question,
            "chosen": chosen,
            "rejected": rejected,
            "user_description": e.user_description or "",
        })
    return records


class DescriptionSampler:
    """Ray Data actor for RAT stage 2: sample K descriptions on-policy per episode, rank them by
    MiniLM cosine similarity to the gold description; closest is chosen, farthest rejected."""

    def __init__(self, model_path: str, embedder_path: str, num_samples: int, temperature: float,
                 max_new_tokens: int, seed: int):
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer

        from fspo_ray.engines import HFEngine, Sampling

        self.engine = HFEngine(model_path, batch_size=64)
        self.embedder = SentenceTransformer(embedder_path, device="cpu")
        self.k = num_samples
        self.sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stop=("\n",))

    def __call__(self, batch: dict) -> dict:
        from fspo_ray.episodes import Preference, render_describe_prompt

        n = len(batch["index"])
        prompts = []
        for i in range(n):
            shots = [Preference(s["question"], s["chosen"], s["rejected"]) for s in batch["shots"][i]]
            prompts.extend([render_describe_prompt(shots)] * self.k)
        samples = [t.strip() for t in self.engine.generate(prompts, self.sampling)]
        gold = self.embedder.encode(list(batch["user_description"]), normalize_embeddings=True)  # (n, d)
        emb = self.embedder.encode([t or "-" for t in samples], normalize_embeddings=True)  # (n*K, d)
        out = {k: list(batch[k]) for k in batch}
        out["sim_mean"], out["sim_best"], out["sim_worst"] = [], [], []
        for i in range(n):
            group = samples[i * self.k : (i + 1) * self.k]
            sims = (emb[i * self.k : (i + 1) * self.k] @ gold[i]).tolist()  # (K,)
            best, worst = max(range(self.k), key=sims.__getitem__), min(range(self.k), key=sims.__getitem__)
            out["chosen"][i], out["rejected"][i] = group[best] or "-", group[worst] or "-"
            out["sim_mean"].append(sum(sims) / self.k)
            out["sim_best"].append(sims[best])
            out["sim_worst"].append(sims[worst])
        return out


def sample_description_pairs(records: list[dict], cfg: RunConfig, stage: StageConfig, model_path: str) -> tuple[list[dict], dict]:
    """RAT stage 2's pairs: records whose chosen/rejected are the closest/farthest sampled descriptions."""
    import ray.data

    from fspo_ray.generation.checks import embedder_path

    t = cfg.train
    ds = ray.data.from_items(records, override_num_blocks=max(1, min(4 * t.ref_concurrency, len(records) // 16)))
    rows = ds.map_batches(
        DescriptionSampler,
        fn_constructor_kwargs=dict(model_path=model_path, embedder_path=embedder_path(cfg), num_samples=stage.num_samples,
                                   temperature=stage.sample_temperature, max_new_tokens=stage.max_description_tokens,
                                   seed=cfg.seed),
        batch_size=16,
        compute=ray.data.ActorPoolStrategy(size=t.ref_concurrency),
        num_cpus=t.ref_cpus,
        num_gpus=1 if t.use_gpu else 0,
    ).take_all()
    rows.sort(key=lambda r: r["index"])
    kept = [r for r in rows if r["chosen"] != r["rejected"]]
    quality = {
        "episodes": len(rows),
        "pairs_kept": len(kept),
        "mean_similarity_to_gold": sum(r["sim_mean"] for r in rows) / max(1, len(rows)),
        "mean_best_similarity": sum(r["sim_best"] for r in rows) / max(1, len(rows)),
        "mean_worst_similarity": sum(r["sim_worst"] for r in rows) / max(1, len(rows)),
    }
    for r in kept:
        for k in ("sim_mean", "sim_best", "sim_worst"):
            r.pop(k)
    return kept, quality


class EpisodeScorer:
    """Ray Data actor: episode records -> token ids that fit the budget, plus the summed
    completion log-probs of each pair under each given (frozen) model.

    Tokenizing and scoring in one actor keeps one model load and one pipeline stage per pass.
    Episodes over budget even with min_shots are dropped here; the caller counts them.
    """

    def __init__(self, tokenizer_path: str, max_length: int, min_shots: int, template: str, rat: bool,
                 models: dict[str, str], dtype: str, attn_implementation: str, forward: str, micro_batch: int,
                 task: str = "answer"):
        import torch

        from fspo_ray.modeling import load_model_and_tokenizer, load_tokenizer

        self.tok = load_tokenizer(tokenizer_path)
        self.kw = dict(eos_token=self.tok.eos_token, max_length=max_length, min_shots=min_shots,
                       template=template, rat=rat, task=task,
                       apply_chat_template=self.tok.apply_chat_template if template == "chat" else None)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.models = {}
        for prefix, path in models.items():
            model, _ = load_model_and_tokenizer(path, dtype=dtype, attn_implementation=attn_implementation, device=device)
            self.models[prefix] = model.eval()
        self.forward = forward
        self.micro_batch = micro_batch

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _tokenize(self, batch: dict) -> dict:
        out = {k: [] for k in ("index", "user_id", "split", "prompt_ids", "chosen_ids", "rejected_ids", "num_shots")}
        for i in range(len(batch["index"])):
            shots = tuple(Preference(s["question"], s["chosen"], s["rejected"]) for s in batch["shots"][i])
            ep = Episode(batch["user_id"][i], shots,
                         Preference(batch["question"][i], batch["chosen"][i], batch["rejected"][i]),
                         user_description=batch["user_description"][i] or None)
            enc = encode_episode(ep, self.encode, **self.kw)
            if enc is None:
                continue
            out["index"].append(int(batch["index"][i]))
            out["user_id"].append(batch["user_id"][i])
            out["split"].append(batch["split"][i])
            out["prompt_ids"].append(enc.prompt_ids)
            out["chosen_ids"].append(enc.chosen_ids)
            out["rejected_ids"].append(enc.rejected_ids)
            out["num_shots"].append(enc.num_shots)
        return out

    def _score(self, model, out: dict) -> tuple[list[float], list[float]]:
        import torch

        from fspo_ray.collate import collator_for
        from fspo_ray.forward import forward_for

        collate, fwd = collator_for(self.forward), forward_for(self.forward)
        device = next(model.parameters()).device
        chosen, rejected = [], []
        n = len(out["index"])
        with torch.no_grad():
            for start in range(0, n, self.micro_batch):
                ex = [{k: out[k][i] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                      for i in range(start, min(n, start + self.micro_batch))]
                b = {k: v.to(device) for k, v in collate(ex, self.tok.pad_token_id).items()}
                res = fwd(model, b)
                chosen.extend(res.chosen_logps.double().cpu().tolist())
                rejected.extend(res.rejected_logps.double().cpu().tolist())
        return chosen, rejected

    def __call__(self, batch: dict) -> dict:
        out = self._tokenize(batch)
        for prefix, model in self.models.items():
            out[f"{prefix}chosen_logps"], out[f"{prefix}rejected_logps"] = self._score(model, out)
        return out


def scored_dataset(records: list[dict], cfg: RunConfig, stage: StageConfig, tokenizer_path: str,
                   models: dict[str, str]):
    """A Ray dataset of tokenized episodes with `<prefix>chosen_logps`/`<prefix>rejected_logps` per model."""
    import ray.data

    t = cfg.train
    n = stage_shots(cfg, stage)
    blocks = max(1, min(4 * t.ref_concurrency, len(records) // max(1, t.ref_batch_size)))
    ds = ray.data.from_items(records, override_num_blocks=blocks)
    return ds.map_batches(
        EpisodeScorer,
        fn_constructor_kwargs=dict(
            tokenizer_path=tokenizer_path, max_length=cfg.episodes.max_length,
            min_shots=min(cfg.episodes.min_shots, n), template=cfg.episodes.template, rat=stage.rat,
            models=models, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
            forward=t.forward, micro_batch=t.micro_batch_size, task=stage_task(stage)),
        batch_size=t.ref_batch_size,
        compute=ray.data.ActorPoolStrategy(size=t.ref_concurrency),
        num_cpus=t.ref_cpus,
        num_gpus=1 if t.use_gpu else 0,
    )


def write_episode_shard(ds, out_dir: Path, expected: int, with_ref: bool) -> dict:
    """Materialize, sort by index (deterministic order for resume), write one parquet, mark done."""
    rows = sorted(ds.take_all(), key=lambda r: r["index"])
    dropped = expected - len(rows)
    cols = {name: [r.get(name) if with_ref or not name.startswith("ref_") else None for r in rows]
            for name in EPISODE_SCHEMA.names}
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=EPISODE_SCHEMA), out_dir / "episodes.parquet")
    info = {"episodes": len(rows), "dropped_over_budget": dropped}
    (out_dir / DONE_MARKER).write_text(json.dumps(info))
    if dropped:
        logger.warning("%s: %d of %d episodes did not fit max_length even with min_shots; dropped", out_dir, dropped, expected)
    return info


def prepare_stage_epochs(cfg: RunConfig, stage: StageConfig, pref_dir: str | Path, tokenizer_path: str,
                         reference_path: str | None, stage_dir: Path) -> list[Path]:
    """Write one episode shard per epoch under stage_dir/episodes/epoch=E, reusing finished ones."""
    try:
        users = load_users(pref_dir, "train")
    except EpisodeError:
        raise
    if not users.prefs:
        raise FspoError(f"no training users in {pref_dir} (split=train)")
    paths = []
    for epoch in range(stage.epochs):
        out = stage_dir / "episodes" / f"epoch={epoch}"
        paths.append(out)
        if (out / DONE_MARKER).exists():
            continue
        episodes = stage_episodes(cfg, stage, users, epoch)
        records = episode_records(episodes, "train", stage_task(stage))
        if stage.kind == "describe_preference":
            records, quality = sample_description_pairs(records, cfg, stage, tokenizer_path)
            for i, r in enumerate(records):
                r["index"] = i
            (stage_dir / f"description_quality.epoch{epoch}.json").write_text(json.dumps(quality, indent=2))
            logger.info("stage %s epoch %d: sampled descriptions %s", stage.name, epoch, quality)
        models = {"ref_": reference_path} if reference_path is not None else {}
        ds = scored_dataset(records, cfg, stage, tokenizer_path, models)
        info = write_episode_shard(ds, out, len(records), with_ref=reference_path is not None)
        logger.info("stage %s epoch %d: %s", stage.name, epoch, info)
    return paths


def read_rank_batches(shard: Path, *, rank: int, world_size: int, micro_batch: int, accum: int) -> list[list[list[dict]]]:
    """This rank's micro-batches, grouped per optimizer step: steps[s][a] is a list of examples.

    Global step s covers rows [s*G, (s+1)*G) with G = micro_batch * accum * world_size; within
    it, micro-batch a of rank r is the slice at (a * world_size + r) * micro_batch. Every rank
    gets the same number of steps; the remainder under one global batch is left out.
    """
    table = pq.read_table(shard / "episodes.parquet")
    if table.column("ref_chosen_logps").null_count == table.num_rows:  # SFT shards carry no reference
        table = table.drop_columns(["ref_chosen_logps", "ref_rejected_logps"])
    rows = table.to_pylist()
    G = micro_batch * accum * world_size
    steps = []
    for s in range(len(rows) // G):
        micro = []
        for a in range(accum):
            start = s * G + (a * world_size + rank) * micro_batch
            micro.append(rows[start : start + micro_batch])
        steps.append(micro)
    return steps
