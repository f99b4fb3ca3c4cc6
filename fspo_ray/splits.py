"""The user splits every stage speaks of: trained users, held-out users drawn from the same
distribution, and interpolated users (axis-value combinations never seen together in training)."""

from typing import Literal, get_args

Split = Literal["train", "held_out", "interpolated"]
SPLITS: tuple[str, ...] = get_args(Split)
