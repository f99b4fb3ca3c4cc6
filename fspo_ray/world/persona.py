"""Personas: a user's true preferences on a subset of axes, and the description of them.

A persona sets values on some axes and leaves the rest open (under-determined). Iterative
refinement fixes an open axis on first use (`Persona.extend`) and appends a sentence to the
description, so every later label on that axis is consistent with the first one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fspo_ray.world.axes import ALSO_PHRASES, AXES, AXIS_NAMES, DESCRIPTION_SENTENCES

_AXIS_RANK = {axis: i for i, axis in enumerate(AXIS_NAMES)}


@dataclass(frozen=True)
class Persona:
    """A user of the world. `values` holds (axis, value) in axis order; `refined` lists the
    axes added by iterative refinement, in the order they were added."""

    user_id: str
    split: str
    domain: str
    values: tuple[tuple[str, str], ...]
    description: str
    refined: tuple[str, ...] = ()

    @property
    def profile(self) -> dict[str, str]:
        """{axis: value} for the determined axes."""
        return dict(self.values)

    def value(self, axis: str) -> str | None:
        """The persona's value on `axis`, or None where the axis is open."""
        for a, v in self.values:
            if a == axis:
                return v
        return None

    def open_axes(self) -> tuple[str, ...]:
        determined = {a for a, _ in self.values}
        return tuple(a for a in AXIS_NAMES if a not in determined)

    def extend(self, axis: str, value: str) -> Persona:
        """A new persona that also prefers `value` on the open `axis`; the description gets
        "They also prefer ..." appended."""
        if value not in AXES.get(axis, ()):
            raise ValueError(f"unknown value {value!r} for axis {axis!r}")
        if self.value(axis) is not None:
            raise ValueError(f"axis {axis!r} is already set to {self.value(axis)!r}")
        values = tuple(sorted(self.values + ((axis, value),), key=lambda av: _AXIS_RANK[av[0]]))
        sentence = f"They also prefer {ALSO_PHRASES[(axis, value)]}."
        return Persona(
            user_id=self.user_id,
            split=self.split,
            domain=self.domain,
            values=values,
            description=f"{self.description} {sentence}",
            refined=self.refined + (axis,),
        )


def render_description(values: tuple[tuple[str, str], ...], rng: random.Random) -> str:
    """One sentence per determined value, template and order drawn from `rng`."""
    sentences = [rng.choice(DESCRIPTION_SENTENCES[av]) for av in values]
    rng.shuffle(sentences)
    return " ".join(sentences)


def make_persona(
    user_id: str, split: str, domain: str, profile: dict[str, str], rng: random.Random
) -> Persona:
    """A persona with the given {axis: value} profile and a description drawn from `rng`."""
    values = tuple(sorted(profile.items(), key=lambda av: _AXIS_RANK[av[0]]))
    return Persona(
        user_id=user_id,
        split=split,
        domain=domain,
        values=values,
        description=render_description(values, rng),
    )
