"""The `generate:` section of the run config: providers, stage resources, resume, report.

The generation package owns its schema; fspo_ray/config.py composes it into the run config.
Its models are engine configs (fspo_ray/engines/config.py) with a generator's defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fspo_ray.engines.config import EngineConfig
from fspo_ray.sections import Section

STRATEGY_NAMES = (
    "plain_low_temp",
    "plain_high_temp",
    "persona_steering",
    "view_conditioning",
    "ensemble_view_conditioning",
)
VIEW_STRATEGIES = ("view_conditioning", "ensemble_view_conditioning")  # a model lists the views first
Strategy = Literal[
    "plain_low_temp",
    "plain_high_temp",
    "persona_steering",
    "view_conditioning",
    "ensemble_view_conditioning",
]


class TaskStageConfig(Section):
    """Resources of the CPU stages that hold no model (Ray Data tasks)."""

    num_cpus: float = Field(
        0.5, gt=0.0, description="CPUs each task asks for; fractions let tasks share a small box."
    )
    concurrency: int | None = Field(
        None, ge=1, description="Most tasks of a stage running at once (unset: as many as fit)."
    )
    batch_size: int | None = Field(
        None, ge=1, description="Rows per batch in the unfused graph (unset: whole blocks)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each task asks for, e.g. {group_cpu: 0.01} to keep the CPU "
        "stages on the node group that advertises it (cluster/ gives every group one).",
    )


class GeneratorConfig(EngineConfig):
    """One language model of the LLM provider (a generator or the judge) and its actor pool:
    an engine config with a sampling generator's defaults."""

    model: str = Field(
        "{output_dir}/models/tiny",
        description="Hugging Face id or local directory; '{output_dir}' is replaced by the run's output_dir.",
    )
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(256, ge=1, description="Longest generation.")


class JudgeModelConfig(GeneratorConfig):
    """The judge: greedy, short answers by default (so `judge.x=...` overrides keep these)."""

    name: str | None = Field("tiny-judge", description="Short name stored as provenance.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy verdicts).")
    max_new_tokens: int = Field(8, ge=1, description="Longest verdict (refinement sentences: llm.refine_max_new_tokens).")


class LLMProviderConfig(Section):
    """Inputs and models of the LLM provider (generate.provider = 'llm')."""

    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [GeneratorConfig(name="tiny-a"), GeneratorConfig(name="tiny-b", temperature=1.0)],
        description="The generator ensemble; responses to the views of a question take turns over it.",
    )
    judge: JudgeModelConfig = Field(
        default_factory=JudgeModelConfig, description="The pairwise judge (also writes refinement sentences)."
    )
    persona_file: str | None = Field(
        None,
        description="JSONL of users {user_id, description, split[, domain]}; unset: the world's personas "
        "(sizes from world.users_*).",
    )
    questions_file: str | None = Field(
        None, description="JSONL of questions {domain, question[, question_id]}; unset: the world's questions."
    )
    low_temperature: float = Field(0.3, ge=0.0, description="Generator temperature of plain_low_temp.")
    high_temperature: float = Field(1.2, ge=0.0, description="Generator temperature of plain_high_temp.")
    view_max_new_tokens: int = Field(128, ge=8, description="Token budget of the view-listing prompt.")
    refine_max_new_tokens: int = Field(48, ge=8, description="Token budget of a refinement sentence.")


class ReportConfig(Section):
    """The data report's diversity ablation (embedded by the `embedder:` section's model) and label entropy."""

    similarity_questions: int = Field(
        12, ge=0, description="Questions per strategy in the similarity ablation (0 skips it)."
    )
    similarity_samples: int = Field(5, ge=2, description="Responses per question and strategy.")
    entropy_repeats: int = Field(
        1,
        ge=1,
        description="LLM judge: judgments per order when measuring label entropy (more only helps "
        "a sampling judge). The world judge's label distribution is computed exactly.",
    )


class GenerateConfig(Section):
    """Synthetic preference generation (jobs.generate) on Ray Data."""

    provider: Literal["world", "llm"] = Field(
        "world", description="'world': the simulated world, CPU only; 'llm': language models via engines."
    )
    strategy: Strategy = Field(
        "ensemble_view_conditioning", description="How the responses to a question are diversified."
    )
    views_per_question: int = Field(
        2, ge=2, description="Views (and responses) drawn per question slot; pairing picks two."
    )
    oversample: float = Field(
        2.5,
        ge=1.0,
        description="Candidate slots per user = ceil(world.prefs_per_user x oversample); the slack "
        "covers pairs dropped as position-inconsistent, unparseable or without a preference.",
    )
    users_per_shard: int = Field(
        50, ge=1, description="Users per shard: the unit of work, of commit and of resume."
    )
    fused: bool = Field(
        True,
        description="World provider: run every stage of a shard in one Ray task (no model stage holds "
        "a model). False runs the per-stage Ray Data graph of the LLM provider, same rows.",
    )
    shards_per_wave: int = Field(
        0,
        ge=0,
        description="Per-stage graph: shards per Ray Data execution (its group-bys are barriers, so a "
        "wave is the resume granularity); 0 = all pending shards in one wave.",
    )
    tasks: TaskStageConfig = Field(default_factory=TaskStageConfig, description="CPU stage resources.")
    resume: bool = Field(True, description="Skip shards already committed under <output_dir>/prefs.")
    overwrite: bool = Field(
        False,
        description="Delete existing prefs/ first (wins over resume); else prefs/ made by a different "
        "generation config is an error.",
    )
    check_resources: bool = Field(
        True, description="Fail before running when a pool asks for more than the cluster has."
    )
    llm: LLMProviderConfig = Field(default_factory=LLMProviderConfig, description="LLM provider.")
    report: ReportConfig = Field(default_factory=ReportConfig, description="Data report.")

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if self.provider == "llm":
            n = len(self.llm.generators)
            if n == 0:
                raise ValueError(
                    "llm.generators is empty: the generator ensemble needs at least one model "
                    "(two or more for strategy ensemble_view_conditioning)"
                )
            if self.strategy == "ensemble_view_conditioning" and n < 2:
                raise ValueError(
                    f"llm.generators has {n} model; strategy ensemble_view_conditioning needs at least 2"
                )
            names = [g.label() for g in self.llm.generators]
            if len(set(names)) != len(names):
                raise ValueError(f"llm.generators names must be unique, got {names} (set name: ...)")
        return self
