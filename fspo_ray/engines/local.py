"""The local engines: `generate(prompts, sampling) -> texts` in this process.

Two implementations: Hugging Face transformers (CPU or GPU) and vLLM (GPU, imported only when
one is built, so the package and its tests run without it). Both take a prompt as text and
tokenize it with `modeling.encode_prompt` (no added special tokens but the model's BOS, once),
so the same prompt is the same token ids on either engine and in training.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from fspo_ray.engines.config import ENGINE_KINDS, EngineConfig, Sampling
from fspo_ray.sections import ConfigError

logger = logging.getLogger(__name__)


class Engine(Protocol):
    name: str
    tokenizer: object

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[str]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def render_chat(tokenizer, messages: list[dict]) -> str:
    """Chat messages -> prompt text with the model's chat template (the contents joined without one)."""
    if getattr(tokenizer, "chat_template", None):
        from fspo_ray.episodes import chat_prompt

        return chat_prompt(tokenizer.apply_chat_template, messages)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


class HFEngine:
    """Batched `model.generate` with left padding; returns only the new text."""

    def __init__(self, model_path: str, *, dtype: str = "auto", attn_implementation: str = "sdpa",
                 device: str | None = None, batch_size: int = 16, model_kwargs: dict | None = None):
        from fspo_ray.modeling import (
            bos_prefix_ids,
            default_device,
            load_model_and_tokenizer,
            stop_token_ids,
        )

        device = device or default_device()
        self.model, self.tokenizer = load_model_and_tokenizer(
            model_path, dtype=dtype, attn_implementation=attn_implementation, device=device,
            model_kwargs=model_kwargs)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        self.bos_ids = bos_prefix_ids(self.tokenizer)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.device = device
        self.batch_size = batch_size
        self.name = f"hf:{model_path}"
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()  # one generate at a time per model (thread-safe under Serve)

    def _inputs(self, prompts: Sequence[str]):
        from fspo_ray.modeling import prompt_batch

        return prompt_batch(self.tokenizer, prompts, self.bos_ids).to(self.device)  # left-padded

    def _gen_kwargs(self, sampling: Sampling) -> dict:
        kw = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                  eos_token_id=self.stop_ids)
        if sampling.temperature > 0:
            # top_k=0: no top-k, as vLLM samples (transformers 5 would fill in top_k=50).
            kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kw.update(do_sample=False)
        return kw

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[str]:
        import torch

        out: list[str] = []
        with self._lock, torch.no_grad():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                enc = self._inputs(chunk)
                ids = self.model.generate(**enc, **self._gen_kwargs(sampling))
                new = ids[:, enc["input_ids"].shape[1] :]  # (B, new_tokens)
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                out.extend(cut_at_stop(t, sampling.stop) for t in texts)
        return out

    def stream(self, prompt: str, sampling: Sampling, cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated; setting `cancel` stops generation."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return bool(cancel is not None and cancel.is_set())

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        enc = self._inputs([prompt])

        def run():
            try:
                with self._lock, torch.no_grad():
                    self.model.generate(**enc, **self._gen_kwargs(sampling), streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([_Cancel()]))
            finally:
                streamer.end()  # a failed generate must not leave the consumer waiting forever

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        emitted = ""
        for piece in streamer:
            candidate = cut_at_stop(emitted + piece, sampling.stop)
            if len(candidate) < len(emitted + piece):
                if candidate[len(emitted):]:
                    yield candidate[len(emitted):]
                if cancel is not None:
                    cancel.set()
                break
            emitted += piece
            yield piece
        thread.join()


class VLLMEngine:
    """vLLM's offline engine (GPU). Needs the gpu extra; imported only when constructed.

    Inside a Ray actor that already holds the replica's GPUs, `executor="mp"` keeps vLLM from
    asking Ray for a placement group of its own."""

    def __init__(self, cfg: EngineConfig, *, executor: str | None = None):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("the vllm engine needs the gpu extra: pip install 'fspo-ray[gpu]' on a CUDA machine") from e
        from fspo_ray.modeling import bos_prefix_ids

        kwargs = vllm_engine_kwargs(cfg)
        if executor is not None:
            kwargs.setdefault("distributed_executor_backend", executor)
        self.llm = LLM(model=cfg.model, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.bos_ids = bos_prefix_ids(self.tokenizer)
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        self.name = f"vllm:{cfg.model}"

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, seed=sampling.seed, stop=list(sampling.stop) or None)
        # Token ids as HFEngine and training tokenize them (vLLM's own tokenizing would add a second BOS
        # to a chat-rendered prompt).
        from fspo_ray.modeling import encode_prompt

        ids = [{"prompt_token_ids": encode_prompt(self.tokenizer, p, self.bos_ids)} for p in prompts]
        return [o.outputs[0].text for o in self.llm.generate(ids, params, use_tqdm=False)]


def vllm_engine_kwargs(cfg: EngineConfig) -> dict:
    """vLLM engine arguments of a config (vllm.LLM and ray.data.llm take the same)."""
    kwargs = {"dtype": cfg.dtype, "tensor_parallel_size": cfg.tensor_parallel_size,
              "gpu_memory_utilization": cfg.gpu_memory_utilization, "enable_prefix_caching": cfg.enable_prefix_caching}
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    return kwargs | dict(cfg.engine_kwargs)


def build_engine(cfg: EngineConfig, *, executor: str | None = None) -> Engine:
    """The engine of one config; vLLM is imported only here, only when configured."""
    if not cfg.model:
        raise ConfigError("engine: model is unset; name a Hugging Face directory or hub id")
    if cfg.kind == "hf":
        if cfg.torch_threads is not None:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        return HFEngine(cfg.model, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation, device=cfg.device,
                        batch_size=cfg.batch_size, model_kwargs=cfg.engine_kwargs or None)
    elif cfg.kind == "vllm":
        return VLLMEngine(cfg, executor=executor)
    raise ValueError(f"unknown engine {cfg.kind!r}; expected one of {ENGINE_KINDS}")


class TokenizerOnly:
    """Enough of an engine for building prompts: the tokenizer and the context length, no weights."""

    def __init__(self, model_path: str, context_length: int | None = None):
        from transformers import AutoConfig

        from fspo_ray.modeling import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)
        self.context_length = context_length or getattr(
            AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
        self.name = f"tokenizer:{model_path}"

    def generate(self, prompts, sampling):
        raise RuntimeError("TokenizerOnly builds prompts; generation runs on an engine")


def generate_or_none(engine: Engine, prompts: list[str], sampling: Sampling) -> list[str | None]:
    """Generate for each prompt; a batch that fails is retried prompt by prompt, and a prompt that
    still fails yields None (the caller counts it as an engine error), never failing the batch."""
    try:
        return list(engine.generate(prompts, sampling))
    except Exception as e:  # noqa: BLE001 - one bad prompt must not fail the batch
        logger.warning("engine batch of %d failed (%s); retrying prompt by prompt", len(prompts), e)
    out: list[str | None] = []
    for p in prompts:
        try:
            out.append(engine.generate([p], sampling)[0])
        except Exception as e:  # noqa: BLE001
            logger.warning("engine prompt failed: %s", e)
            out.append(None)
    return out
