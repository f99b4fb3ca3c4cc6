"""The data report's diversity ablation: for each sampling strategy, responses to the same
questions, embedded, and their mean pairwise cosine similarity (figures in `report`).

The responses come from the same views/responses stages as the rows: in process for the world,
through the per-stage graph for language models. Embeddings: the engines layer's embedder.
"""

from __future__ import annotations

from fspo_ray.engines.embedder import embed_rows
from fspo_ray.generation.config import STRATEGY_NAMES
from fspo_ray.generation.graph import Graph
from fspo_ray.generation.report import cosine_stats
from fspo_ray.generation.rows import from_table, rng_for
from fspo_ray.generation.stages import response_requests, run_ops


def probe_slots(cfg, provider, strategy: str) -> list[dict]:
    """The ablation's question slots: the same questions for every strategy."""
    rng = rng_for("similarity", provider.seed)
    domains = list(cfg.world.domains)
    out = []
    for i in range(cfg.generate.report.similarity_questions):
        domain = domains[i % len(domains)]
        qid, text = rng.choice(provider.questions_of_domain(domain))
        out.append(
            {
                "shard_id": f"probe-{strategy}",
                "key": f"probe:{strategy}:{i:04d}",
                "user_id": "probe",
                "split": "train",
                "domain": domain,
                "slot": i,
                "strategy": strategy,
                "n_views": cfg.generate.report.similarity_samples,
                "question_id": qid,
                "question": text,
                "description": "",
                "profile": None,
            }
        )
    return out


def probe_texts_in_process(cfg, provider, strategy: str) -> list[dict]:
    """World: the ablation's responses, by the same views/responses stages as the rows."""
    slots = run_ops(provider.views_ops(strategy), probe_slots(cfg, provider, strategy))
    reqs = run_ops(provider.responses_ops(strategy), response_requests(slots))
    return [{"group": r["key"], "text": r["response"]} for r in reqs if not r.get("drop")]


def similarity_ablation(cfg, provider) -> dict:
    """{strategy: {mean, median, pairs}} over the five strategies, embeddings on Ray."""
    import ray
    import ray.data

    texts: list[dict] = []
    if provider.kind == "world":
        run = ray.remote(num_cpus=cfg.generate.tasks.num_cpus)(probe_texts_in_process)
        per = ray.get([run.remote(cfg, provider, s) for s in STRATEGY_NAMES])
        texts = [t for part in per for t in part]
    else:
        graph = Graph(cfg, provider)
        for s in STRATEGY_NAMES:
            ds = ray.data.from_items(probe_slots(cfg, provider, s))
            ds = graph.task(ds, lambda rows: rows)  # rows -> the pipeline's Arrow layout
            ds = graph.ops(ds, provider.views_ops(s))
            ds = graph.task(ds, response_requests)
            ds = graph.ops(ds, provider.responses_ops(s))
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                texts += [{"group": r["key"], "text": r["response"]} for r in from_table(batch) if not r.get("drop")]
    if not texts:
        return {s: {"mean": None, "median": None, "pairs": 0} for s in STRATEGY_NAMES}
    by_strategy: dict[str, dict[str, list]] = {s: {} for s in STRATEGY_NAMES}
    for row in embed_rows(texts, cfg.embedder).iter_rows():
        strategy = row["group"].split(":")[1]
        by_strategy[strategy].setdefault(row["group"], []).append(list(row["embedding"]))
    return {s: cosine_stats(by_strategy[s]) for s in STRATEGY_NAMES}
