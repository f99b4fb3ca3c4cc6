"""One Ray Data stage builder for every model call of a batch job: generation's model stages, the
LLM judge and evaluation's inference.

The contract is plain columns. A request row carries
    engine         the label of the model that answers it (rows for other labels pass through),
    prompt         the whole prompt text, or, when empty or absent,
    messages_json  chat messages as JSON, rendered with the model's chat template,
    max_tokens     (optional) this row's generation budget; absent or 0: the stage's sampling;
and the stage adds
    generated_text, num_generated_tokens, engine_error ('' when the row was answered).
Every other column passes through unchanged. A row addressed to another label keeps the reply
columns it has (empty if it has none), so stages for several models can follow each other.

hf: an actor pool whose actors hold the stage's models (one each, or several sharing a pool).
vllm: per model, a CPU actor renders and tokenizes the prompts, then a ray.data.llm processor
generates. Both engines see the prompt as the same token ids (modeling.encode_prompt: no added
special tokens but the model's BOS, once).
vLLM and ray.data.llm are imported only when a vllm stage is built.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from fspo_ray.engines.config import EngineConfig, Sampling

REPLY_COLUMNS = ("generated_text", "num_generated_tokens", "engine_error")
ENGINE_ERROR = "engine error"  # a row the hf engine could not answer, even alone


def prompt_of(tokenizer, row: dict) -> str:
    """A request row's prompt text: `prompt`, else its chat messages rendered for this model."""
    from fspo_ray.engines.local import render_chat

    return row.get("prompt") or render_chat(tokenizer, json.loads(row["messages_json"]))


def with_replies(table, replies: dict[int, tuple[str, int, str]]):
    """`table` with the reply columns: `replies` (row index -> reply) written, other rows keeping theirs."""
    import pyarrow as pa

    n = table.num_rows
    names = table.column_names
    old = {c: table.column(c).to_pylist() if c in names else None for c in REPLY_COLUMNS}
    defaults = ("", 0, "")
    cols = []
    for j, c in enumerate(REPLY_COLUMNS):
        values = old[c] if old[c] is not None else [defaults[j]] * n
        cols.append([replies[i][j] if i in replies else values[i] for i in range(n)])
    table = table.drop_columns([c for c in REPLY_COLUMNS if c in names])
    types = (pa.string(), pa.int64(), pa.string())
    for c, values, t in zip(REPLY_COLUMNS, cols, types, strict=True):
        table = table.append_column(c, pa.array(values, t))
    return table


class GenerateActor:
    """A Ray Data actor holding Hugging Face engines by label; answers the rows addressed to them.

    One engine is loaded when the actor starts; with several (a pool shared by small models), each
    is loaded on first use. Within a batch, rows go to their engine in groups of one budget, in the
    order they come."""

    def __init__(self, engines: dict[str, dict], sampling: dict):
        self.cfgs = {label: EngineConfig(**cfg) for label, cfg in engines.items()}
        self.sampling = Sampling(**{**sampling, "stop": tuple(sampling.get("stop", ()))})
        self._engines: dict = {}
        if len(self.cfgs) == 1:
            self._engine(next(iter(self.cfgs)))

    def _engine(self, label: str):
        if label not in self._engines:
            from fspo_ray.engines.local import build_engine

            self._engines[label] = build_engine(self.cfgs[label])
        return self._engines[label]

    def __call__(self, table):
        from fspo_ray.engines.local import generate_or_none

        labels = table.column("engine").to_pylist()
        mine = [i for i, label in enumerate(labels) if label in self.cfgs]
        if not mine:
            return with_replies(table, {})
        rows = table.take(mine).to_pylist()
        groups: dict[tuple[str, int], list[int]] = {}
        for k, row in enumerate(rows):
            budget = int(row.get("max_tokens") or self.sampling.max_new_tokens)
            groups.setdefault((row["engine"], budget), []).append(k)
        replies: dict[int, tuple[str, int, str]] = {}
        for (label, budget), ks in groups.items():
            engine = self._engine(label)
            tok = engine.tokenizer
            texts = generate_or_none(engine, [prompt_of(tok, rows[k]) for k in ks],
                                     replace(self.sampling, max_new_tokens=budget))
            for k, text in zip(ks, texts, strict=True):
                n = len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0
                replies[mine[k]] = (text or "", n, ENGINE_ERROR if text is None else "")
        return with_replies(table, replies)


class PromptTokenizer:
    """vllm's CPU half: rows -> `tokenized_prompt`, tokenized as HFEngine tokenizes (modeling.encode_prompt)."""

    def __init__(self, model: str):
        from fspo_ray.modeling import bos_prefix_ids, load_tokenizer

        self.tokenizer = load_tokenizer(model)
        self.bos_ids = bos_prefix_ids(self.tokenizer)

    def __call__(self, row: dict) -> dict:
        from fspo_ray.modeling import encode_prompt

        return {**row, "tokenized_prompt": encode_prompt(self.tokenizer, prompt_of(self.tokenizer, row), self.bos_ids)}


def vllm_preprocess(sampling: dict):
    """The processor's input: token ids and sampling only; the request row travels as JSON, so no
    column of ours can collide with ray.data.llm's own keys (a `model` column would mean LoRA)."""

    def preprocess(row: dict) -> dict:
        tokens = list(row.pop("tokenized_prompt"))
        params = dict(sampling)
        if row.get("max_tokens"):
            params["max_tokens"] = int(row["max_tokens"])
        return {"fspo_row": json.dumps(row, default=_plain), "tokenized_prompt": tokens, "sampling_params": params}

    return preprocess


def _plain(value):
    """numpy scalars and arrays (how Ray Data hands some columns over) as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def vllm_postprocess(row: dict) -> dict:
    # Error rows (__inference_error__ set) bypass this and keep the whole row; restore_row maps both.
    return {"fspo_row": row["fspo_row"], "generated_text": row.get("generated_text") or "",
            "num_generated_tokens": int(row.get("num_generated_tokens") or 0)}


def restore_row(row: dict) -> dict:
    """The request row back, with its reply (or the processor's error)."""
    out = json.loads(row["fspo_row"])
    error = str(row.get("__inference_error__") or "")
    out.update(generated_text="" if error else str(row.get("generated_text") or ""),
               num_generated_tokens=0 if error else int(row.get("num_generated_tokens") or 0), engine_error=error)
    return out


def sampling_params(sampling: Sampling) -> dict:
    """A Sampling as vLLM's SamplingParams keywords (ray.data.llm's `sampling_params` column)."""
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens,
            "seed": sampling.seed, "stop": list(sampling.stop) or None}


def vllm_processor_config(cfg: EngineConfig):
    """The ray.data.llm config of one model: prompts arrive tokenized, replies leave as vLLM's text
    (buildable without vLLM installed)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from fspo_ray.engines.local import vllm_engine_kwargs

    return vLLMEngineProcessorConfig(
        model_source=cfg.model,
        engine_kwargs=vllm_engine_kwargs(cfg),
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        accelerator_type=cfg.accelerator_type,
        should_continue_on_error=cfg.should_continue_on_error,
        chat_template_stage=False,  # rendered by PromptTokenizer, as the hf engine renders it
        tokenize_stage=False,  # tokenized by PromptTokenizer, as the hf engine tokenizes
        detokenize_stage=False,  # vLLM's own text honours the stop strings
    )


def vllm_processor(cfg: EngineConfig, sampling: Sampling):
    """The ray.data.llm processor of one model (a pool of `concurrency` vLLM replicas)."""
    from ray.data.llm import build_processor

    return build_processor(vllm_processor_config(cfg), preprocess=vllm_preprocess(sampling_params(sampling)),
                           postprocess=vllm_postprocess)


def _without_reply(table):
    return with_replies(table, {})


def addressed(labels: set[str], keep: bool):
    def select(table):
        import pyarrow as pa

        return table.filter(pa.array([(e in labels) == keep for e in table.column("engine").to_pylist()]))

    return select


def generate_stage(ds, engines: dict[str, EngineConfig], sampling: Sampling, *, cpus: float = 0.5):
    """ds -> ds with the reply columns filled for the rows addressed to `engines` (label -> config).

    hf: one actor pool whose actors hold every engine of the call; its size, batch and resources are
    the first config's. vllm: a processor per engine. `cpus` is what the CPU-only halves ask for."""
    import ray.data

    kinds = {c.kind for c in engines.values()}
    if len(kinds) != 1:
        raise ValueError(f"one stage runs one engine kind; got {sorted(kinds)} for {sorted(engines)}")
    if kinds == {"hf"}:
        pool = next(iter(engines.values()))
        return ds.map_batches(
            GenerateActor,
            fn_constructor_kwargs={"engines": {k: c.model_dump() for k, c in engines.items()},
                                   "sampling": {**asdict(sampling), "stop": list(sampling.stop)}},
            compute=ray.data.ActorPoolStrategy(size=pool.concurrency),
            batch_size=pool.batch_size,
            batch_format="pyarrow",
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus or None,
        )
    # A processor answers every row it gets: split the rows (materialized, so both sides read the
    # input once), run each model's processor on its own rows, rejoin.
    ds = ds.materialize()
    out = ds.map_batches(addressed(set(engines), False), batch_format="pyarrow", num_cpus=cpus)
    out = out.map_batches(_without_reply, batch_format="pyarrow", num_cpus=cpus)
    for label, cfg in engines.items():
        mine = ds.map_batches(addressed({label}, True), batch_format="pyarrow", num_cpus=cpus)
        mine = mine.map(PromptTokenizer, fn_constructor_kwargs={"model": cfg.model},
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cpus)
        done = vllm_processor(cfg, sampling)(mine).map(restore_row, num_cpus=cpus)
        out = out.union(done)
    return out
