"""The one engine interface every LM-calling stage uses: `generate(prompts, sampling) -> texts`.

Two real implementations: Hugging Face transformers (CPU or GPU) and vLLM (GPU, imported
lazily so the package and its tests run without it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

ENGINE_KINDS = ("hf", "vllm")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Engine(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[str]: ...


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


class HFEngine:
    """Batched `model.generate` with left padding; returns only the new text."""

    def __init__(self, model_path: str, *, dtype: str = "auto", attn_implementation: str = "sdpa",
                 device: str | None = None, batch_size: int = 16):
        import torch

        from fspo_ray.modeling import load_model_and_tokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_model_and_tokenizer(
            model_path, dtype=dtype, attn_implementation=attn_implementation, device=device)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        self.device = device
        self.batch_size = batch_size
        self.name = f"hf:{model_path}"
        self._lock = threading.Lock()  # one generate at a time per model (thread-safe under Serve)

    def _inputs(self, prompts: Sequence[str]):
        return self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def _gen_kwargs(self, sampling: Sampling) -> dict:
        kw = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                  eos_token_id=self.tokenizer.eos_token_id)
        if sampling.temperature > 0:
            kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
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
                out.extend(_cut_at_stop(t, sampling.stop) for t in texts)
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
            candidate = _cut_at_stop(emitted + piece, sampling.stop)
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
    """vLLM offline engine (GPU). Needs the `gpu` extra; imported only when constructed."""

    def __init__(self, model_path: str, *, dtype: str = "auto", tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("the vllm engine needs the gpu extra: pip install 'fspo-ray[gpu]' on a CUDA machine") from e
        self.llm = LLM(model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization)
        self.name = f"vllm:{model_path}"

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, seed=sampling.seed, stop=list(sampling.stop) or None)
        return [o.outputs[0].text for o in self.llm.generate(list(prompts), params, use_tqdm=False)]


def make_engine(kind: str, model_path: str, **kwargs) -> Engine:
    if kind == "hf":
        return HFEngine(model_path, **kwargs)
    elif kind == "vllm":
        return VLLMEngine(model_path, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; expected one of {ENGINE_KINDS}")
