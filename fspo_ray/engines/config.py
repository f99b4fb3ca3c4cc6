"""The one engine config: a language model and how it runs, for every model the project calls.

Generation's generators and judge, evaluation's models and LLM judge, and serving's two stages
all use `EngineConfig` (a role may change its defaults, e.g. a greedy judge). `Sampling` is what
one generate call asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from fspo_ray.sections import Section

ENGINE_KINDS = ("hf", "vllm")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class EngineConfig(Section):
    """A language model and how it runs: engine, weights, batching, Ray resources, sampling defaults."""

    kind: Literal["hf", "vllm"] = Field(
        "hf", description="'hf': Hugging Face transformers (CPU or GPU); 'vllm': vLLM (GPU; the gpu extra). "
        "On Ray Data, hf runs in an actor pool and vllm in a ray.data.llm processor."
    )
    model: str | None = Field(
        None, description="Hugging Face directory or hub id; '{output_dir}' is replaced and a local path made "
        "absolute when the config is loaded. Unset only in evaluate.inference, where each method names its model."
    )
    name: str | None = Field(None, description="Short name stored as provenance (unset: the model path's last part).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: 'auto' is bfloat16 on GPU and float32 on CPU (vllm: vLLM's choice)."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "sdpa", description="hf only: attention kernel passed to transformers."
    )
    device: str | None = Field(None, description="hf only: 'cpu', 'cuda', ... (unset: cuda when available; inside a "
                                     "Ray actor, only when it was given a GPU: num_gpus > 0).")
    torch_threads: int | None = Field(
        None, ge=1, description="hf only: torch intra-op threads in this process (unset: torch's default, which "
        "Ray sets from the CPUs an actor or replica asks for)."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per batch sent to one engine.")
    concurrency: int = Field(1, ge=1, description="Engine replicas (Ray Data actors) in the pool.")
    num_cpus: float = Field(0.5, gt=0.0, description="CPUs each hf actor asks for (fractions share a core).")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs each hf actor asks for (vllm asks for tensor_parallel_size).")
    accelerator_type: str | None = Field(
        None, description="vllm only: Ray accelerator type the replicas need, e.g. 'H100' (unset: any)."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vllm only: GPUs per replica (tensor parallel degree).")
    max_model_len: int | None = Field(None, ge=16, description="vllm only: context length (unset: the model's).")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm only: share of GPU memory vLLM may use.")
    enable_prefix_caching: bool = Field(True, description="vllm only: prefix caching (prompts share the shots).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed through as they are: vllm, extra engine arguments (vllm.LLM and "
        "ray.data.llm engine_kwargs, e.g. {quantization: fp8}); hf, extra from_pretrained arguments."
    )
    should_continue_on_error: bool = Field(
        True, description="On Ray Data: a failed request becomes a counted drop instead of failing the job."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Default sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Default nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, description="Default longest generation, in tokens.")

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.kind == "vllm" and self.device not in (None, "cuda"):
            raise ValueError(f"device={self.device!r} applies to kind 'hf' only; vllm runs on cuda")
        return self

    def label(self) -> str:
        """The name rows and provenance use for this model."""
        return self.name or (self.model or "").rstrip("/").split("/")[-1]

    def sampling(self, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: tuple[str, ...] = ()) -> Sampling:
        """This model's sampling defaults, each overridable per call."""
        return Sampling(
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p if top_p is None else top_p,
            seed=seed,
            stop=stop,
        )

    def resources(self) -> dict[str, float]:
        """What one replica asks of the cluster: a vLLM replica holds tensor_parallel_size GPUs."""
        if self.kind == "vllm":
            return {"CPU": 1.0, "GPU": float(self.tensor_parallel_size)}
        return {"CPU": self.num_cpus, "GPU": self.num_gpus}
