"""Engine ops of the LLM provider on Ray Data: Hugging Face actors or ray.data.llm vLLM
processors, both reading `messages_json` and filling `generated_text` / `engine_error`.

vLLM and ray.data.llm are imported only inside the functions that use them.
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


def render(tokenizer, messages: list[dict]) -> str:
    """Chat messages -> prompt text with the model's chat template (plain text without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def to_sampling(sampling: dict):
    from fspo_ray.engines import Sampling

    return Sampling(
        max_new_tokens=sampling["max_tokens"],
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        seed=sampling.get("seed"),
    )


def _tokenizer_of(engine):
    tok = getattr(engine, "tokenizer", None)
    if tok is None and hasattr(engine, "llm"):
        tok = engine.llm.get_tokenizer()
    return tok


def render_and_generate(engine, messages: list[list[dict]], sampling: dict) -> list[str | None]:
    """Generate for each chat; a batch that fails is retried row by row, and a row that
    still fails yields None (counted as an inference_error drop by the caller)."""
    tok = _tokenizer_of(engine)
    prompts = [render(tok, m) for m in messages]
    s = to_sampling(sampling)
    try:
        return list(engine.generate(prompts, s))
    except Exception as e:  # noqa: BLE001 - one bad row must not fail the batch
        logger.warning("engine batch of %d failed (%s); retrying row by row", len(prompts), e)
    out: list[str | None] = []
    for p in prompts:
        try:
            out.append(engine.generate([p], s)[0])
        except Exception as e:  # noqa: BLE001
            logger.warning("engine row failed: %s", e)
            out.append(None)
    return out


def make_local_engine(model_cfg, output_dir: str):
    """The engine a Ray actor holds: HFEngine, or vLLM with its own process group."""
    from fspo_ray.generation.config import resolve_model_path

    path = resolve_model_path(model_cfg.model, output_dir)
    if model_cfg.engine == "hf":
        from fspo_ray.engines import HFEngine

        return HFEngine(path, dtype=model_cfg.dtype, batch_size=model_cfg.batch_size)
    return VLLMInActor(path, model_cfg)


class VLLMInActor:
    """vLLM inside one Ray actor that holds all `tensor_parallel_size` GPUs: the
    multiprocessing executor keeps vLLM from asking Ray for a second placement group."""

    def __init__(self, path: str, model_cfg):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("engine 'vllm' needs the gpu extra: pip install 'fspo-ray[gpu]' on a CUDA machine") from e
        self.llm = LLM(
            model=path,
            dtype=model_cfg.dtype,
            tensor_parallel_size=model_cfg.tensor_parallel_size,
            max_model_len=model_cfg.max_model_len,
            gpu_memory_utilization=model_cfg.gpu_memory_utilization,
            enable_prefix_caching=model_cfg.enable_prefix_caching,
            distributed_executor_backend="mp",
        )
        self.name = f"vllm:{path}"

    def generate(self, prompts, sampling) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        return [o.outputs[0].text for o in self.llm.generate(list(prompts), params, use_tqdm=False)]


class HFGenerateActor:
    """A Ray Data actor holding one Hugging Face model. Rows addressed to it (`engine` =
    its label) get the reply merged into their payload; other rows pass through, so the
    ensemble's pools sit one after another in one streaming graph."""

    def __init__(self, model_cfg: dict, sampling: dict, output_dir: str):
        from fspo_ray.generation.config import LLMModelConfig

        cfg = LLMModelConfig(**model_cfg)
        self.label = cfg.label()
        self.sampling = sampling
        self.engine = make_local_engine(cfg, output_dir)

    def __call__(self, table):
        import pyarrow as pa

        from fspo_ray.generation.pipeline import merge_reply

        mine = [i for i, e in enumerate(table.column("engine").to_pylist()) if e == self.label]
        if not mine:
            return table
        sub = table.take(mine)
        messages = [json.loads(m) for m in sub.column("messages_json").to_pylist()]
        texts = render_and_generate(self.engine, messages, self.sampling)
        tok = self.engine.tokenizer
        ntok = [len(tok(t, add_special_tokens=False)["input_ids"]) if t else 0 for t in texts]
        sub = sub.append_column("generated_text", pa.array([t or "" for t in texts], pa.string()))
        sub = sub.append_column("num_generated_tokens", pa.array(ntok, pa.int64()))
        sub = sub.append_column("engine_error", pa.array([t is None for t in texts], pa.bool_()))
        done = merge_reply(sub)
        others = [i for i in range(table.num_rows) if i not in set(mine)]
        return pa.concat_tables([done, table.take(others)]) if others else done


def vllm_processor_config(model_cfg, output_dir: str):
    """The ray.data.llm config of one model (buildable without vLLM installed)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from fspo_ray.generation.config import resolve_model_path

    engine_kwargs = {
        "tensor_parallel_size": model_cfg.tensor_parallel_size,
        "gpu_memory_utilization": model_cfg.gpu_memory_utilization,
        "enable_prefix_caching": model_cfg.enable_prefix_caching,
        "dtype": model_cfg.dtype,
    }
    if model_cfg.max_model_len is not None:
        engine_kwargs["max_model_len"] = model_cfg.max_model_len
    return vLLMEngineProcessorConfig(
        model_source=resolve_model_path(model_cfg.model, output_dir),
        engine_kwargs=engine_kwargs,
        batch_size=model_cfg.batch_size,
        concurrency=model_cfg.concurrency,
        accelerator_type=model_cfg.accelerator_type,
        should_continue_on_error=model_cfg.should_continue_on_error,
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=True,
    )


PASS_COLUMNS = ("shard_id", "key", "payload", "engine", "messages_json")


def vllm_preprocess(sampling: dict):
    def preprocess(row: dict) -> dict:
        return {**row, "messages": json.loads(row["messages_json"]), "sampling_params": dict(sampling)}

    return preprocess


def vllm_postprocess(row: dict) -> dict:
    # Error rows (__inference_error__ set) bypass this; `normalize_engine_output` maps them.
    out = {c: row[c] for c in PASS_COLUMNS}
    out["generated_text"] = row.get("generated_text", "")
    out["num_generated_tokens"] = int(row.get("num_generated_tokens", 0))
    out["engine_error"] = False
    return out


def build_vllm_stage(model_cfg, sampling: dict, output_dir: str):
    """ds -> ds through a ray.data.llm processor (one pool of `concurrency` vLLM replicas)."""
    from ray.data.llm import build_processor

    return build_processor(
        vllm_processor_config(model_cfg, output_dir),
        preprocess=vllm_preprocess(sampling),
        postprocess=vllm_postprocess,
    )
