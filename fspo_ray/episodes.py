"""Users as tasks: FSPO episodes (N few-shot preferences + one held-out pair) and their prompts.

Pure Python: no Ray, no torch. Episode sampling is deterministic per (seed, epoch, user), so
workers that each own a slice of the users build the same episodes a single process would.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fspo_ray.errors import FspoError

TEMPLATES = ("markdown", "chat")
TASKS = ("answer", "describe")

TASK_LINE = "# Task\nGiven the examples above, generate a preferred response to the following question.\n"
DESCRIBE_TASK_LINE = "# Task\nGiven the examples above, describe the user's preferences.\n"
RESPONSE_HEADER = "## Preferred Response \n"
DESCRIPTION_HEADER = "## User Description\n"


class EpisodeError(FspoError):
    """Episodes cannot be built as configured; the message says why and what is allowed."""


@dataclass(frozen=True)
class Preference:
    question: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Episode:
    """One task instance for one user: shots in the prompt, a held-out pair to score."""

    user_id: str
    shots: tuple[Preference, ...]
    held_out: Preference
    user_description: str | None = None
    domain: str | None = None


@dataclass
class EpisodeStats:
    episodes: int = 0
    users: int = 0
    skipped_users: Counter = field(default_factory=Counter)


def _rng(seed: int, *keys: object) -> random.Random:
    # Stable across processes and Python runs (unlike hash()).
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def check_shot_counts(counts: Mapping[str, int], num_shots: int, min_shots: int) -> None:
    """Fail early when N cannot be served by any user (a config error, not a data problem)."""
    if not counts:
        raise EpisodeError("no users: the preference data is empty")
    largest = max(counts.values())
    if largest < min_shots + 1:
        raise EpisodeError(
            f"episodes.min_shots={min_shots} needs users with at least {min_shots + 1} preferences "
            f"(shots + one held-out), but the largest user has {largest}"
        )
    if largest < num_shots + 1:
        raise EpisodeError(
            f"episodes.num_shots={num_shots} is larger than any user can serve: the largest user has "
            f"{largest} preferences, so at most num_shots={largest - 1} (one pair is held out)"
        )


def build_episodes(
    users: Mapping[str, Sequence[Preference]],
    *,
    num_shots: int,
    min_shots: int,
    seed: int,
    epoch: int = 0,
    repeats: int = 1,
    descriptions: Mapping[str, str] | None = None,
    domains: Mapping[str, str] | None = None,
) -> tuple[list[Episode], EpisodeStats]:
    """Every pair of every user is held out `repeats` times per epoch, each time with shots
    sampled (without replacement) from that user's other pairs.

    Unlike the official code's N+2 window, no pair is wasted: a user with P pairs gives P
    episodes per repeat. Users with fewer than N+1 pairs use P-1 shots, down to `min_shots`;
    users below that are skipped and counted.
    """
    check_shot_counts({u: len(p) for u, p in users.items()}, num_shots, min_shots)
    stats = EpisodeStats()
    episodes: list[Episode] = []
    for user_id in sorted(users):
        prefs = list(users[user_id])
        k = min(num_shots, len(prefs) - 1)
        if k < min_shots:
            stats.skipped_users[f"fewer than min_shots+1={min_shots + 1} preferences"] += 1
            continue
        stats.users += 1
        rng = _rng(seed, epoch, user_id)
        for _ in range(repeats):
            for i, held_out in enumerate(prefs):
                others = prefs[:i] + prefs[i + 1 :]
                shots = tuple(rng.sample(others, k))
                episodes.append(
                    Episode(
                        user_id=user_id,
                        shots=shots,
                        held_out=held_out,
                        user_description=(descriptions or {}).get(user_id),
                        domain=(domains or {}).get(user_id),
                    )
                )
    _rng(seed, epoch, "order").shuffle(episodes)
    stats.episodes = len(episodes)
    return episodes, stats


# --------------------------------------------------------------------------- rendering


def render_shot(index: int, shot: Preference) -> str:
    """One example block of the official FSPO template (1-based index)."""
    return (
        f"# Example {index}\n"
        f"## Question \n{shot.question}\n"
        f"## Preferred Response \n{shot.chosen}\n"
        f"## Dispreferred Response \n{shot.rejected}\n"
        "\n"
    )


def render_query(question: str, user_description: str | None = None) -> str:
    """The task block after the shots; with RAT, the user description follows the question."""
    text = TASK_LINE + f"## Question \n{question}\n"
    if user_description is not None:
        text += DESCRIPTION_HEADER + f"{user_description}\n"
    return text


def render_prompt(
    shots: Sequence[Preference], question: str, user_description: str | None = None
) -> str:
    """The official markdown prompt: N examples, then the task and the question."""
    return "".join(render_shot(i + 1, s) for i, s in enumerate(shots)) + render_query(question, user_description)


def render_describe_prompt(shots: Sequence[Preference]) -> str:
    """RAT stage 1: the shots, then a request to write the user description."""
    return "".join(render_shot(i + 1, s) for i, s in enumerate(shots)) + DESCRIBE_TASK_LINE + DESCRIPTION_HEADER


def render_completion(response: str, eos_token: str) -> str:
    """Completion for chosen and rejected alike: header, response, EOS."""
    return f"{RESPONSE_HEADER}{response}\n{eos_token}"


def render_description_completion(description: str, eos_token: str) -> str:
    return f"{description}\n{eos_token}"


def apply_chat(prompt: str, apply_chat_template: Callable[..., str]) -> str:
    """Chat-template option: the markdown prompt as one user turn, ready for the assistant turn.

    User-supplied text never enters the system role.
    """
    return apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------- tokenization


@dataclass(frozen=True)
class EncodedEpisode:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    num_shots: int  # shots kept after truncation


def encode_episode(
    episode: Episode,
    encode: Callable[[str], list[int]],
    *,
    eos_token: str,
    max_length: int,
    min_shots: int,
    template: str = "markdown",
    rat: bool = False,
    apply_chat_template: Callable[..., str] | None = None,
    task: str = "answer",
) -> EncodedEpisode | None:
    """Tokenize an episode to fit `max_length` (prompt + the longer completion).

    Whole oldest shots are dropped first; the held-out question and both completions are
    never cut. Returns None when even `min_shots` shots do not fit (the caller counts it).
    Prompt and completions are tokenized separately, as TRL does, so the completion tokens
    are identical whatever the prompt.
    """
    if template not in TEMPLATES:
        raise EpisodeError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    if task not in TASKS:
        raise EpisodeError(f"unknown task {task!r}; expected one of {TASKS}")
    if template == "chat" and apply_chat_template is None:
        raise EpisodeError("template 'chat' needs a tokenizer with a chat template")
    description = episode.user_description if rat else None
    # RAT's describe task: the held-out pair holds two descriptions (or the gold one twice, for SFT).
    complete = render_description_completion if task == "describe" else render_completion
    chosen_ids = encode(complete(episode.held_out.chosen, eos_token))
    rejected_ids = encode(complete(episode.held_out.rejected, eos_token))
    budget = max_length - max(len(chosen_ids), len(rejected_ids))
    shots = list(episode.shots)
    while True:
        if task == "describe":
            prompt = render_describe_prompt(shots)
        else:
            prompt = render_prompt(shots, episode.held_out.question, description)
        if template == "chat":
            prompt = apply_chat(prompt, apply_chat_template)
        prompt_ids = encode(prompt)
        if len(prompt_ids) <= budget:
            return EncodedEpisode(prompt_ids, chosen_ids, rejected_ids, len(shots))
        if len(shots) <= min_shots:
            return None
        shots = shots[1:]  # drop the oldest whole shot


def preferences_from_rows(rows: Iterable[Mapping]) -> dict[str, list[Preference]]:
    """Parquet rows (the data contract) -> user_id -> that user's preferences, in order."""
    users: dict[str, list[Preference]] = {}
    for r in rows:
        users.setdefault(r["user_id"], []).append(Preference(r["question"], r["chosen"], r["rejected"]))
    return users
