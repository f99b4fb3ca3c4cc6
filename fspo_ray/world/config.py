"""The `world:` section of the run config: the simulated user world (the embedded default).

Kept apart from world.py, which reads it by attribute, so the world itself needs no pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fspo_ray.sections import Section


class WorldConfig(Section):
    """The simulated user world: the embedded default environment (see DESIGN.md)."""

    seed: int = Field(0, description="World seed: personas, questions and splits all derive from it.")
    users_train: int = Field(400, ge=0, description="Number of trained users.")
    users_held_out: int = Field(100, ge=0, description="Number of held-out users (same distribution as train).")
    users_interpolated: int = Field(
        100, ge=0, description="Number of interpolated users (axis-value combinations never seen in training)."
    )
    prefs_per_user: int = Field(24, ge=2, description="Preference pairs generated per user.")
    min_axes_per_persona: int = Field(4, ge=1, description="Fewest axes a persona sets.")
    max_axes_per_persona: int = Field(6, ge=1, description="Most axes a persona sets.")
    questions_per_domain: int = Field(120, ge=1, description="Distinct questions per domain.")
    domains: list[Literal["roleplay", "elix", "reviews"]] = Field(
        default_factory=lambda: ["roleplay", "elix", "reviews"], description="Domains to generate."
    )
    judge_position_bias: float = Field(
        0.1, ge=0.0, le=1.0, description="Probability the world judge answers 'A' regardless of content."
    )
    judge_noise: float = Field(0.05, ge=0.0, le=1.0, description="Probability the world judge answers at random.")
    low_spread: float = Field(
        0.3,
        ge=0.0,
        description="Sampling spread of views around a question's mode for plain_low_temp and persona "
        "steering (the world's analogue of a low temperature; 0 = always the mode).",
    )
    high_spread: float = Field(
        3.0, ge=0.0, description="Sampling spread of views for plain_high_temp (a high temperature)."
    )
    rendering: Literal["text", "compact"] = Field(
        "text",
        description="How rows render the world: 'text' (sentences with phrase fragments; what LLMs and the "
        "real-model path see) or 'compact' (axis-then-value words, e.g. 'length: concise, tone: formal'; what a "
        "tiny model trained from scratch learns FSPO's skill from in minutes). Same users, pairs and labels.",
    )

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        if self.min_axes_per_persona > self.max_axes_per_persona:
            raise ValueError(
                f"min_axes_per_persona ({self.min_axes_per_persona}) must be <= "
                f"max_axes_per_persona ({self.max_axes_per_persona})"
            )
        if not self.domains:
            raise ValueError("domains must name at least one of roleplay, elix, reviews")
        if self.low_spread > self.high_spread:
            raise ValueError(f"low_spread ({self.low_spread}) must be <= high_spread ({self.high_spread})")
        return self
