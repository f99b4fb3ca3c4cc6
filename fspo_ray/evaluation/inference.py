"""Batch inference for evaluation on Ray Data: one actor pool per model.

Prompts come from the two-stage Personalizer (fspo_ray.personalize), the same code that
serving uses: `describe_prompt(shots)` and `answer_prompt(shots, description, question)`,
built on the renderers of fspo_ray.episodes. Decoding is greedy.

- hf: a pool of `AnswerActor`s per model, each holding an HFEngine (CPU or GPU); or, with
  `inference.pool: shared`, one pool whose actors hold every model (fewer processes to start
  when the models are small and the CPUs few).
- vllm: a pool of `PromptActor`s (tokenizer only) builds the prompts, then a ray.data.llm
  vLLM processor generates; ray.data.llm is imported only here, only when configured.
"""

from __future__ import annotations

import json
import logging

from fspo_ray.episodes import Preference
from fspo_ray.evaluation.config import InferenceConfig

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("request_id", "text", "shots_used", "prompt_tokens", "finish_reason", "error")


def personalize_config(model_path: str, inf: InferenceConfig, max_shots: int):
    """The Personalizer config of one evaluated model; template and sign tokens come from what the
    model was trained with (its fspo_prompt.json, read by the Personalizer)."""
    from fspo_ray.personalize import EngineConfig, PersonalizeConfig

    common = dict(model=model_path, kind=inf.engine, dtype=inf.dtype, batch_size=inf.batch_size, temperature=0.0)
    return PersonalizeConfig(
        persona=EngineConfig(max_new_tokens=inf.describe_max_new_tokens, **common),
        answer=EngineConfig(max_new_tokens=inf.max_new_tokens, **common),
        num_shots=max(1, max_shots),
        max_prompt_tokens=inf.max_prompt_tokens,
    )


def _rows(batch: dict) -> list[dict]:
    n = len(batch["request_id"])
    return [{k: batch[k][i] for k in batch} for i in range(n)]


def _shots(row: dict) -> list[Preference]:
    return [Preference(s["question"], s["chosen"], s["rejected"]) for s in json.loads(row["shots_json"])]


def build_prompt(personalizer, row: dict) -> tuple[str, int, int]:
    """(prompt, prompt tokens, shots kept) of one request, by the Personalizer's builders."""
    if row["kind"] == "describe":
        return personalizer.describe_prompt(_shots(row))
    description = row["description"] if row["use_description"] else None
    return personalizer.answer_prompt(_shots(row), description, row["question"])


class AnswerActor:
    """A Ray Data actor holding models (HFEngine each, loaded on first use): fills `text` for the
    describe and answer rows of a batch, grouped by the row's `model`."""

    def __init__(self, models: dict[str, str], inference: dict, max_shots: int):
        self.models, self.max_shots = models, max_shots
        self.cfg = InferenceConfig(**inference)
        self._loaded: dict[str, tuple] = {}
        if len(models) == 1:  # a pool per model: load at actor start
            self._personalizer(next(iter(models)))

    def _personalizer(self, ref: str):
        if ref not in self._loaded:
            from fspo_ray.engines import HFEngine
            from fspo_ray.personalize import Personalizer

            path = self.models[ref]
            engine = HFEngine(path, dtype=self.cfg.dtype, batch_size=self.cfg.batch_size)
            pcfg = personalize_config(path, self.cfg, self.max_shots)
            self._loaded[ref] = (Personalizer(engine, engine, pcfg), pcfg)
        return self._loaded[ref]

    def __call__(self, batch: dict) -> dict:
        from fspo_ray.errors import FspoError

        rows = _rows(batch)
        results: dict[int, tuple] = {}
        for ref in dict.fromkeys(r["model"] for r in rows):
            personalizer, pcfg = self._personalizer(ref)
            for kind, stage, sampling in (("describe", "persona", pcfg.persona.sampling()),
                                          ("answer", "answer", pcfg.answer.sampling())):
                idx, prompts = [], []
                for i, row in enumerate(rows):
                    if row["model"] != ref or row["kind"] != kind:
                        continue
                    try:
                        prompts.append(build_prompt(personalizer, row))
                        idx.append(i)
                    except FspoError as e:  # e.g. a question longer than the context: counted, not fatal
                        results[i] = ("", 0, 0, "error", str(e))
                if prompts:
                    gens = personalizer.generate_from_prompts(stage, prompts, sampling)
                    for i, g in zip(idx, gens, strict=True):
                        results[i] = (g.text, g.shots_used, g.prompt_tokens, g.finish_reason, "")
        out = {c: [] for c in OUTPUT_COLUMNS}
        for i, row in enumerate(rows):
            for c, v in zip(OUTPUT_COLUMNS, (row["request_id"], *results[i]), strict=True):
                out[c].append(v)
        return out


# --------------------------------------------------------------------------- vLLM


class _TokenizerOnly:
    """Enough of an engine for the Personalizer's prompt builders: the tokenizer, no weights."""

    def __init__(self, model_path: str):
        from fspo_ray.modeling import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)
        self.name = f"tokenizer:{model_path}"

    def generate(self, prompts, sampling):
        raise RuntimeError("_TokenizerOnly builds prompts; generation runs in the vLLM processor")


class PromptActor:
    """Ray Data actor for the vllm path: rows -> prompt text and token ids (no special tokens
    added, as HFEngine and training tokenize), plus the sampling of the row's kind."""

    def __init__(self, model_path: str, inference: dict, max_shots: int):
        from transformers import AutoConfig

        from fspo_ray.personalize import Personalizer

        inf = InferenceConfig(**inference)
        engine = _TokenizerOnly(model_path)
        pcfg = personalize_config(model_path, inf, max_shots)
        if pcfg.max_prompt_tokens is None:
            limit = inf.max_model_len or AutoConfig.from_pretrained(model_path).max_position_embeddings
            pcfg = pcfg.model_copy(update={"max_prompt_tokens": limit})
        self.personalizer = Personalizer(engine, engine, pcfg)
        self.tokenizer = engine.tokenizer
        self.cfg = inf

    def __call__(self, batch: dict) -> dict:
        from fspo_ray.personalize import SECTION_STOPS

        out = {"request_id": [], "prompt": [], "tokenized_prompt": [], "max_tokens": [], "stop_json": []}
        for row in _rows(batch):
            prompt, _, _ = build_prompt(self.personalizer, row)
            out["request_id"].append(row["request_id"])
            out["prompt"].append(prompt)
            out["tokenized_prompt"].append(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            describe = row["kind"] == "describe"
            out["max_tokens"].append(self.cfg.describe_max_new_tokens if describe else self.cfg.max_new_tokens)
            out["stop_json"].append(json.dumps(list(SECTION_STOPS)))
        return out


def _vllm_preprocess(row: dict) -> dict:
    return {
        "request_id": row["request_id"],
        "prompt": row["prompt"],
        "tokenized_prompt": list(row["tokenized_prompt"]),
        "sampling_params": {"temperature": 0.0, "max_tokens": int(row["max_tokens"]),
                            "stop": json.loads(row["stop_json"])},
    }


def _vllm_postprocess(row: dict) -> dict:
    text = (row.get("generated_text") or "").strip()
    return {"request_id": row["request_id"], "text": text, "shots_used": -1,
            "prompt_tokens": int(row.get("num_input_tokens") or 0), "finish_reason": "stop", "error": ""}


def vllm_branch(ds, model_path: str, inf: InferenceConfig, max_shots: int):
    """ds of requests -> ds of outputs through a ray.data.llm vLLM processor."""
    import ray.data
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    ds = ds.map_batches(
        PromptActor,
        fn_constructor_kwargs={"model_path": model_path, "inference": inf.model_dump(), "max_shots": max_shots},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=inf.batch_size,
        num_cpus=inf.num_cpus,
    )
    engine_kwargs = {"tensor_parallel_size": inf.tensor_parallel_size, "dtype": inf.dtype,
                     "gpu_memory_utilization": inf.gpu_memory_utilization, "enable_prefix_caching": True}
    if inf.max_model_len is not None:
        engine_kwargs["max_model_len"] = inf.max_model_len
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=model_path,
            engine_kwargs=engine_kwargs,
            batch_size=inf.batch_size,
            concurrency=inf.concurrency,
            accelerator_type=inf.accelerator_type,
            should_continue_on_error=True,
            chat_template_stage=False,  # the FSPO markdown prompt is the whole prompt
            tokenize_stage=False,  # PromptActor tokenized it without special tokens
            detokenize_stage=True,
        ),
        preprocess=_vllm_preprocess,
        postprocess=_vllm_postprocess,
    )
    return processor(ds)


# --------------------------------------------------------------------------- driver


def _hf_branch(requests: list[dict], models: dict[str, str], inf: InferenceConfig, max_shots: int):
    import ray.data

    reqs = sorted(requests, key=lambda r: (r["model"], len(r["shots_json"]), r["request_id"]))
    return ray.data.from_items(reqs).map_batches(
        AnswerActor,
        fn_constructor_kwargs={"models": models, "inference": inf.model_dump(), "max_shots": max_shots},
        compute=ray.data.ActorPoolStrategy(size=inf.concurrency),
        batch_size=inf.batch_size,
        num_cpus=inf.num_cpus,
        num_gpus=inf.num_gpus or None,
    )


def generate(requests: list[dict], models: dict[str, str], inf: InferenceConfig, max_shots: int) -> dict[str, dict]:
    """Run every request on its model, in one Ray Data execution: a pool per model (its branches
    joined by `union`), or one pool whose actors hold every model (`inference.pool: shared`).

    `models` maps a request's `model` ref to its directory. Returns request_id -> output row.
    """
    used = {r["model"] for r in requests}
    models = {ref: path for ref, path in models.items() if ref in used}
    if not models:
        return {}
    if inf.pool == "shared":
        ds = _hf_branch(requests, models, inf, max_shots)
    else:
        import ray.data

        branches = []
        for ref, path in models.items():
            mine = [r for r in requests if r["model"] == ref]
            if inf.engine == "hf":
                branches.append(_hf_branch(mine, {ref: path}, inf, max_shots))
            else:
                branches.append(vllm_branch(ray.data.from_items(mine), path, inf, max_shots))
        ds = branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]
    out: dict[str, dict] = {}
    for row in ds.iter_rows():
        row = dict(row)
        if "text" not in row:  # a vLLM row that failed (should_continue_on_error) skips postprocess
            row = {"request_id": row["request_id"], "text": "", "shots_used": -1, "prompt_tokens": 0,
                   "finish_reason": "error", "error": str(row.get("__inference_error__", "inference error"))}
        out[row["request_id"]] = row
    missing = [r["request_id"] for r in requests if r["request_id"] not in out]
    if missing:
        raise RuntimeError(f"{len(missing)} generation requests returned no row, e.g. {missing[:3]}")
    return out
