"""The simulated user world: the embedded default environment of fspo-ray.

Users have true preferences on a few of 12 axes (length, tone, format, ...); questions of
three domains (roleplay, elix, reviews) make 2-3 axes relevant; generators write responses
whose phrase fragments reveal a view (values on those axes); a reader maps any text back to
axis values; and a judge with the user's persona prefers the text that matches it. It is a
test bed where personalization can succeed or fail, not a mock. Pure Python, no Ray/torch.

    world = World(WorldParams(seed=0))
    persona = world.make_users("train", 1)[0]
    rows = world.user_preferences(persona.user_id, n_pairs=16)
"""

from fspo_ray.splits import SPLITS
from fspo_ray.world.axes import AXES, AXIS_NAMES, FRAGMENTS
from fspo_ray.world.judge import LABELS, decides, judge, refinable_axes, refine, score
from fspo_ray.world.persona import Persona
from fspo_ray.world.questions import DOMAINS, Question, make_question_id, parse_question_id
from fspo_ray.world.reader import (
    normalize,
    profile_similarity,
    read,
    read_description,
    read_evidence,
)
from fspo_ray.world.responses import (
    DEFAULT_GENERATOR,
    GENERATOR_IDS,
    STRATEGIES,
    View,
    all_views,
    respond,
    sample_views,
)
from fspo_ray.world.users import make_user_id, parse_user_id
from fspo_ray.world.world import World, WorldParams, corpus, get_world, world_from_config

__all__ = [
    "AXES",
    "AXIS_NAMES",
    "DEFAULT_GENERATOR",
    "DOMAINS",
    "FRAGMENTS",
    "GENERATOR_IDS",
    "LABELS",
    "SPLITS",
    "STRATEGIES",
    "Persona",
    "Question",
    "View",
    "World",
    "WorldParams",
    "all_views",
    "corpus",
    "decides",
    "get_world",
    "judge",
    "make_question_id",
    "make_user_id",
    "normalize",
    "parse_question_id",
    "parse_user_id",
    "profile_similarity",
    "read",
    "read_description",
    "read_evidence",
    "refinable_axes",
    "refine",
    "respond",
    "sample_views",
    "score",
    "world_from_config",
]
