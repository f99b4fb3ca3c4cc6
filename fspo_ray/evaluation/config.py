"""The `evaluate:` section of the run config: methods, users, shots sweep, engines, judge.

The evaluation package owns its schema; fspo_ray/config.py composes it into the run config.
Its models run as engine configs (fspo_ray/engines/config.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fspo_ray.engines.config import EngineConfig
from fspo_ray.sections import Section
from fspo_ray.splits import SPLITS, Split

CONTEXTS = ("none", "shots", "generated_description", "true_description")
Context = Literal["none", "shots", "generated_description", "true_description"]


class MethodConfig(Section):
    """One evaluated method: a model and what user context its prompt carries."""

    model: str = Field(
        ...,
        min_length=1,
        description="Training stage name (its model is <output_dir>/models/<name>), or a model directory "
        "or hub id (anything with a '/').",
    )
    context: Context = Field(
        ...,
        description="'none': the question only; 'shots': the user's N preferences, then the question; "
        "'generated_description': shots + a description written by `describer` (RAT); "
        "'true_description': shots + the user's gold description (the oracle).",
    )
    describer: str | None = Field(
        None,
        description="generated_description only: stage name or directory of the model that writes the "
        "user description from the shots.",
    )

    @model_validator(mode="after")
    def _check(self) -> MethodConfig:
        if self.context == "generated_description" and not self.describer:
            raise ValueError("context 'generated_description' needs describer (the RAT describe stage)")
        if self.context != "generated_description" and self.describer is not None:
            raise ValueError(f"describer applies to context 'generated_description' only, not {self.context!r}")
        return self


def default_methods() -> dict[str, MethodConfig]:
    """The paper's baselines and methods, mapped to the train job's stage names."""
    return {
        "base": MethodConfig(model="base_sft", context="none"),
        "few_shot": MethodConfig(model="base_sft", context="shots"),
        "pref_ft": MethodConfig(model="sft", context="shots"),
        "ipo": MethodConfig(model="ipo_no_context", context="none"),
        "fspo": MethodConfig(model="fspo", context="shots"),
        "fspo_rat": MethodConfig(model="fspo_rat", context="generated_description", describer="rat_describe"),
        "oracle": MethodConfig(model="fspo_rat", context="true_description"),
    }


class InferenceConfig(EngineConfig):
    """Batch inference on Ray Data: how every evaluated model runs (each method names its model).
    hf: an actor pool per model, or one shared by all; vllm: a ray.data.llm processor per model."""

    num_cpus: float = Field(
        0.25, gt=0.0, description="CPUs each hf actor asks for; fractions let one pool per model share a small box."
    )
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vllm only: GPU memory share.")
    max_new_tokens: int = Field(48, ge=1, description="Longest answer (greedy decoding).")
    pool: Literal["per_model", "shared"] = Field(
        "per_model",
        description="'per_model': an actor pool per model (each model on its own devices); 'shared' (hf "
        "only): one pool whose actors hold every model, for small models on few CPUs (fewer processes).",
    )
    describe_max_new_tokens: int = Field(96, ge=1, description="Longest RAT user description (greedy decoding).")
    max_prompt_tokens: int | None = Field(
        None, ge=16, description="Prompt + generation token budget; whole oldest shots are dropped to fit "
        "(unset: the model's context length)."
    )

    @model_validator(mode="after")
    def _check_inference(self) -> InferenceConfig:
        if self.model is not None:
            raise ValueError("model: each method names its model (evaluate.methods.<name>.model); leave it unset")
        if self.pool == "shared" and self.kind != "hf":
            raise ValueError("pool 'shared' applies to kind 'hf' only (vllm runs a processor per model)")
        return self


class LLMJudgeConfig(EngineConfig):
    """The LLM judge's model: greedy, short verdicts by default (kept under `judge.llm.x=...` overrides)."""

    name: str | None = Field("eval-judge", description="Short name stored as provenance.")
    model: str = Field(
        "{output_dir}/models/tiny", description="Hugging Face id or local directory; '{output_dir}' is replaced."
    )
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    max_new_tokens: int = Field(8, ge=1, description="Longest verdict.")


class JudgeConfig(Section):
    """Who decides which of two answers a user prefers."""

    kind: Literal["auto", "world", "llm"] = Field(
        "auto",
        description="'world': the simulated world's judge with the user's gold persona; 'llm': a language "
        "model conditioned on the user's true description; 'auto': world when every evaluated row carries "
        "a gold profile and a question id of this world, else llm.",
    )
    position_bias: float | None = Field(
        None, ge=0.0, le=1.0, description="World judge: chance of answering 'A' whatever the texts (unset: world.judge_position_bias)."
    )
    noise: float | None = Field(
        None, ge=0.0, le=1.0, description="World judge: chance of a random answer (unset: world.judge_noise)."
    )
    llm: LLMJudgeConfig = Field(
        default_factory=LLMJudgeConfig,
        description="LLM judge: model and pool (the judge prompt and label parser of the data labels, fspo_ray/llm_judge.py).",
    )


class HumanEvalConfig(Section):
    """The human-evaluation kit (jobs.human_eval_export / jobs.human_eval_score)."""

    methods: list[str] = Field(
        default_factory=lambda: ["fspo_rat"], description="Methods whose answers are compared with the baseline."
    )
    template_pairs: int = Field(
        8, ge=1, description="Candidate preference pairs per participant in the template they fill (their shots)."
    )
    questions_per_participant: int = Field(4, ge=1, description="New questions answered per participant.")
    questions_file: str | None = Field(
        None, description="JSONL {question[, question_id]} of the questions to answer; unset: questions of the "
        "preference data that are not in the participant's template."
    )


class EvaluateConfig(Section):
    """Win rates of every method against the baseline, per user split (jobs.evaluate)."""

    methods: dict[str, MethodConfig] = Field(
        default_factory=default_methods,
        description="Method name -> model and prompt context; report rows follow this order. Entries merge "
        "onto the defaults (evaluate.methods.fspo.model=/ckpt changes one field), null removes a method.",
    )
    baseline: str = Field("base", description="The method every other method's answer is judged against.")
    only: list[str] | None = Field(
        None, description="Evaluate only these methods (the baseline is always generated)."
    )
    on_missing: Literal["skip", "fail"] = Field(
        "skip",
        description="A method whose stage model is missing: 'skip' it with a warning in the report, or "
        "'fail' before any work starts. A missing baseline, or a missing explicit directory, always fails.",
    )
    splits: list[Split] = Field(
        default_factory=lambda: list(SPLITS), description="User splits to evaluate (report columns)."
    )
    users_per_split: int = Field(16, ge=1, description="Users evaluated per split (the first by user id).")
    questions_per_user: int = Field(
        2, ge=1, description="Held-out questions per user: pairs of the user that are never among the shots."
    )
    num_shots: int | None = Field(
        None, ge=0, description="Shots N of the main table. Unset: the N the evaluated models that read shots were "
        "trained with (their fspo_prompt.json), else episodes.num_shots; 0 = no user context for any method. A "
        "value that contradicts a model's trained N is an error unless override_prompt_contract is true."
    )
    override_prompt_contract: bool = Field(
        False, description="Evaluate models as their fspo_prompt.json says they were not trained on purpose: "
        "num_shots other than a model's trained N, a description for a model trained without one or none for a "
        "RAT model (the paper evaluates N = 8 on a model trained at N = 4). The shots sweep always varies N."
    )
    shots_sweep: list[int] = Field(
        default_factory=lambda: [2, 4, 8], description="Shot counts of the win-rate-vs-shots sweep ([] skips it)."
    )
    sweep_split: Split = Field(
        "held_out", description="The split the shots sweep runs on."
    )
    seed: int | None = Field(None, description="Seed of the shot/question draw and the judge (unset: the run's seed).")
    describe_before: str | None = Field(
        "rat_describe_sft",
        description="RAT stage-1 describer for the description-quality report (unset: not measured).",
    )
    describe_after: str | None = Field(
        "rat_describe",
        description="RAT stage-2 describer for the description-quality report (unset: not measured).",
    )
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Batch inference.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The judge.")
    human: HumanEvalConfig = Field(default_factory=HumanEvalConfig, description="Human-evaluation kit.")

    @field_validator("methods", mode="before")
    @classmethod
    def _merge_onto_defaults(cls, value):
        if not isinstance(value, dict):
            return value
        merged = {k: m.model_dump(exclude_unset=True) for k, m in default_methods().items()}
        for name, m in value.items():
            if m is None:
                merged.pop(name, None)
            elif isinstance(m, dict) and name in merged:
                merged[name] = {**merged[name], **m}
            else:
                merged[name] = m
        return merged

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        names = list(self.methods)
        if self.baseline not in self.methods:
            raise ValueError(f"baseline {self.baseline!r} is not one of methods {names}")
        if self.methods[self.baseline].context not in ("none", "shots"):
            raise ValueError(
                f"baseline {self.baseline!r} has context {self.methods[self.baseline].context!r}; "
                "a baseline's context must be 'none' or 'shots'"
            )
        if self.only is not None:
            unknown = [m for m in self.only if m not in self.methods]
            if unknown:
                raise ValueError(f"only names unknown method(s) {unknown}; methods are {names}")
        unknown = [m for m in self.human.methods if m not in self.methods]
        if unknown:
            raise ValueError(f"human.methods names unknown method(s) {unknown}; methods are {names}")
        if not self.splits:
            raise ValueError(f"splits must name at least one of {list(SPLITS)}")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits has duplicates: {self.splits}")
        if any(n < 1 for n in self.shots_sweep):
            raise ValueError(f"shots_sweep values must be >= 1, got {self.shots_sweep}")
        if len(set(self.shots_sweep)) != len(self.shots_sweep):
            raise ValueError(f"shots_sweep has duplicates: {self.shots_sweep}")
        if self.shots_sweep and self.sweep_split not in self.splits:
            raise ValueError(f"sweep_split {self.sweep_split!r} must be one of splits {self.splits}")
        return self

    @property
    def max_shots(self) -> int:
        if self.num_shots is None:
            raise ValueError("evaluate.num_shots is unresolved: plan the evaluation first (evaluation/plan.py)")
        return max([self.num_shots, *self.shots_sweep])
