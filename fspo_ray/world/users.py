"""Users of the world: train, held-out and interpolated splits.

A user id "<split>-<seed>-<index>" determines the user: its domain is
DOMAINS[index % len(domains)] and its persona is drawn from a random stream seeded by
(seed, split, index), so any worker rebuilds any persona in microseconds.

Personas set values on 4-6 axes of their domain's axis pool (the axes its questions can
make relevant), always including the domain's required axes (ELIX: expertise; Reviews:
sentiment and length). The rest of the pool stays open for refinement. Per seed a few
forbidden pairs (axis a = x with axis b = y) are chosen: train and held-out personas never
hold one, every interpolated persona holds at least one, while each single value still
occurs in training (a pair forbids a combination, not a value).
"""

from __future__ import annotations

import random
from functools import lru_cache

from fspo_ray.splits import SPLITS
from fspo_ray.world.axes import AXES
from fspo_ray.world.persona import Persona, make_persona
from fspo_ray.world.questions import AXIS_POOL, REQUIRED_AXES

ForbiddenPair = tuple[tuple[str, str], tuple[str, str]]


def persona_pool(domain: str) -> tuple[str, ...]:
    """Axes a persona of `domain` may set: required axes first, then the question pool."""
    return REQUIRED_AXES[domain] + tuple(
        a for a in AXIS_POOL[domain] if a not in REQUIRED_AXES[domain]
    )


def make_user_id(split: str, seed: int, index: int) -> str:
    return f"{split}-{seed}-{index:06d}"


def parse_user_id(uid: str) -> tuple[str, int, int]:
    """Split a user id: "held_out-3-000042" -> ("held_out", 3, 42)."""
    try:
        split, seed, index = uid.rsplit("-", 2)
        parsed = split, int(seed), int(index)
    except ValueError:
        raise ValueError(f"bad user id {uid!r}; expected '<split>-<seed>-<index>'") from None
    if split not in SPLITS:
        raise ValueError(f"bad user id {uid!r}: unknown split {split!r}; expected one of {SPLITS}")
    return parsed


@lru_cache(maxsize=256)
def forbidden_pairs(
    seed: int, domains: tuple[str, ...], per_domain: int
) -> tuple[ForbiddenPair, ...]:
    """The seed's forbidden value pairs: `per_domain` for each domain, from its persona pool."""
    rng = random.Random(f"forbidden-{seed}")
    pairs: list[ForbiddenPair] = []
    used: set[tuple[str, str]] = set()
    for domain in domains:
        for _ in range(per_domain):
            # No (axis, value) in two pairs, so every single value stays allowed in training
            # together with the other values of the partner axis.
            for _attempt in range(100):
                a, b = sorted(rng.sample(persona_pool(domain), 2), key=list(AXES).index)
                pair = ((a, rng.choice(AXES[a])), (b, rng.choice(AXES[b])))
                if not used & set(pair):
                    used.update(pair)
                    pairs.append(pair)
                    break
    return tuple(pairs)


def holds_pair(profile: dict[str, str], pair: ForbiddenPair) -> bool:
    (a, x), (b, y) = pair
    return profile.get(a) == x and profile.get(b) == y


def holds_forbidden(profile: dict[str, str], pairs: tuple[ForbiddenPair, ...]) -> bool:
    return any(holds_pair(profile, p) for p in pairs)


def sample_persona(
    uid: str,
    domains: tuple[str, ...],
    axes_min: int,
    axes_max: int,
    pairs: tuple[ForbiddenPair, ...],
) -> Persona:
    """The persona of user `uid` (see the module docstring for the rules)."""
    split, seed, index = parse_user_id(uid)
    domain = domains[index % len(domains)]
    pool = persona_pool(domain)
    required = REQUIRED_AXES[domain]
    rng = random.Random(f"persona-{seed}-{split}-{index}")
    k = min(rng.randint(axes_min, axes_max), len(pool))
    usable = [p for p in pairs if p[0][0] in pool and p[1][0] in pool]
    for _ in range(1000):
        profile: dict[str, str] = {}
        if split == "interpolated":
            if not usable:
                raise ValueError(f"no forbidden pair fits domain {domain!r}; cannot interpolate")
            for axis, value in rng.choice(usable):
                profile[axis] = value
        for axis in required:
            profile.setdefault(axis, rng.choice(AXES[axis]))
        rest = [a for a in pool if a not in profile]
        for axis in rng.sample(rest, max(0, k - len(profile))):
            profile[axis] = rng.choice(AXES[axis])
        if split == "interpolated" or not holds_forbidden(profile, pairs):
            return make_persona(uid, split, domain, profile, rng)
    raise RuntimeError(f"could not draw a persona for {uid!r} without a forbidden pair")
