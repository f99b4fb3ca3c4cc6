"""Users as tasks: FSPO episodes (N few-shot preferences + one held-out pair) and their prompts.

Pure Python: no Ray, no torch. Episode sampling is deterministic per (seed, epoch, user), so
workers that each own a slice of the users build the same episodes a single process would.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from fspo_ray.errors import FspoError
from fspo_ray.sections import Section

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
    """One task instance for one user: a support set (N shots in the prompt) and a query set
    (held-out pairs of the same user, disjoint from the shots), each query scored against the
    same shots. The official recipe has one query; several share one encoded prefix."""

    user_id: str
    shots: tuple[Preference, ...]
    queries: tuple[Preference, ...]
    user_description: str | None = None
    domain: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.queries, Preference):  # Episode(u, shots, one_pair): the official episode
            object.__setattr__(self, "queries", (self.queries,))
        if not self.queries:
            raise EpisodeError(f"episode of user {self.user_id!r} has no held-out pair")

    @property
    def held_out(self) -> Preference:
        """The held-out pair of a single-query episode."""
        if len(self.queries) != 1:
            raise EpisodeError(f"episode of user {self.user_id!r} has {len(self.queries)} queries; use .queries")
        return self.queries[0]


@dataclass
class EpisodeStats:
    episodes: int = 0
    users: int = 0
    skipped_users: Counter = field(default_factory=Counter)


def stable_rng(seed: int, *keys: object) -> random.Random:
    """A random stream of (seed, keys): the same on every process and Python run (unlike hash()).
    Episodes and evaluation's draws use it; generation's per-row streams are rows.rng_for."""
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
    queries_per_episode: int = 1,
    descriptions: Mapping[str, str] | None = None,
    domains: Mapping[str, str] | None = None,
) -> tuple[list[Episode], EpisodeStats]:
    """Every pair of every user is a query exactly `repeats` times per epoch, each time with
    shots sampled (without replacement) from that user's other pairs.

    With one query per episode (the official recipe) a user with P pairs gives P episodes per
    repeat; unlike the official code's N+2 window, no pair is wasted. With Q > 1 the user's
    pairs are shuffled and cut into as few query sets of at most Q as possible, of near-equal
    sizes, each with its own N shots from the pairs outside it; a user with too few pairs for Q queries plus N shots gets smaller query
    sets, never a duplicated query. Users with fewer than N+1 pairs use P-1 shots, down to
    `min_shots`; users below that are skipped and counted. Deterministic per (seed, epoch, user).
    """
    if queries_per_episode < 1:
        raise EpisodeError(f"queries_per_episode must be >= 1, got {queries_per_episode}")
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
        rng = stable_rng(seed, epoch, user_id)
        extra = {"user_description": (descriptions or {}).get(user_id), "domain": (domains or {}).get(user_id)}
        for _ in range(repeats):
            if queries_per_episode == 1:
                groups = [[i] for i in range(len(prefs))]
            else:
                order = list(range(len(prefs)))
                rng.shuffle(order)
                size = max(1, min(queries_per_episode, len(prefs) - k))  # shots stay disjoint from queries
                # As few query sets as `size` allows, of near-equal sizes (24 pairs at Q = 16: 12 + 12,
                # not 16 + 8), so the rows of a batch are of similar length.
                n_sets = -(-len(order) // size)
                bounds = [len(order) * j // n_sets for j in range(n_sets + 1)]
                groups = [order[bounds[j] : bounds[j + 1]] for j in range(n_sets)]
            for group in groups:
                members = set(group)
                others = [p for i, p in enumerate(prefs) if i not in members]
                shots = tuple(rng.sample(others, k))
                episodes.append(Episode(user_id, shots, tuple(prefs[i] for i in group), **extra))
    stable_rng(seed, epoch, "order").shuffle(episodes)
    stats.episodes = len(episodes)
    return episodes, stats


# --------------------------------------------------------------------------- rendering


def sign_words(text: str, sign: str) -> str:
    """Every whitespace-separated word of `text` with `sign` in front: "tone: formal" -> "+tone: +formal"."""
    return " ".join(sign + word for word in text.split())


def render_shot(index: int, shot: Preference, signed: bool = False) -> str:
    """One example block of the official FSPO template (1-based index).

    `signed` marks every word of the preferred response with '+' and of the dispreferred one
    with '-': sign tokens that tell a small model trained from scratch which side a word was on
    from the token itself, as a segment embedding would (docs/training.md). Off by default: the
    official template and pretrained models read the headers.
    """
    chosen, rejected = (sign_words(shot.chosen, "+"), sign_words(shot.rejected, "-")) if signed else (shot.chosen, shot.rejected)
    return (
        f"# Example {index}\n"
        f"## Question \n{shot.question}\n"
        f"## Preferred Response \n{chosen}\n"
        f"## Dispreferred Response \n{rejected}\n"
        "\n"
    )


def render_query(question: str) -> str:
    """The task block after the shots (and the RAT description): the question to answer."""
    return TASK_LINE + f"## Question \n{question}\n"


def render_prefix(shots: Sequence[Preference], user_description: str | None = None, signed: bool = False) -> str:
    """Everything before the question: N examples, then (RAT) the user description, so one
    encoded prefix serves every question of the user (multi-query episodes, serving)."""
    text = "".join(render_shot(i + 1, s, signed) for i, s in enumerate(shots))
    if user_description is not None:
        text += DESCRIPTION_HEADER + f"{user_description}\n"
    return text


def render_prompt(
    shots: Sequence[Preference], question: str, user_description: str | None = None, signed: bool = False
) -> str:
    """The official markdown prompt: N examples, (RAT: the user description,) the task and the question."""
    return render_prefix(shots, user_description, signed) + render_query(question)


def render_describe_prompt(shots: Sequence[Preference], signed: bool = False) -> str:
    """RAT stage 1: the shots, then a request to write the user description."""
    return render_prefix(shots, signed=signed) + DESCRIBE_TASK_LINE + DESCRIPTION_HEADER


def render_completion(response: str, eos_token: str) -> str:
    """Completion for chosen and rejected alike: header, response, EOS."""
    return f"{RESPONSE_HEADER}{response}\n{eos_token}"


def render_description_completion(description: str, eos_token: str) -> str:
    return f"{description}\n{eos_token}"


# Llama-3.x chat templates print "Today Date: {date_string}", today's date (strftime_now) when none is
# given: a prompt would change from day to day (train vs serve, a resumed run vs its first half).
# Every chat rendering passes this fixed date, Llama-3.1's own default.
CHAT_DATE = "26 Jul 2024"


def chat_prompt(apply_chat_template: Callable[..., str], messages: Sequence[Mapping[str, str]]) -> str:
    """Chat messages -> prompt text ready for the assistant turn; the one place a chat template is
    applied (extra keywords reach the Jinja template, so `date_string` pins the date)."""
    return apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True, date_string=CHAT_DATE)


def apply_chat(prompt: str, apply_chat_template: Callable[..., str]) -> str:
    """Chat-template option: the markdown prompt as one user turn, ready for the assistant turn.

    User-supplied text never enters the system role.
    """
    return chat_prompt(apply_chat_template, [{"role": "user", "content": prompt}])


# --------------------------------------------------------------------------- tokenization


@dataclass(frozen=True)
class EncodedQuery:
    question_ids: list[int]  # the task block (question) after the prefix; may be empty for one query
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass(frozen=True)
class EncodedEpisode:
    """Token ids of an episode: the prefix once, then each query's question and completions."""

    prefix_ids: list[int]
    queries: tuple[EncodedQuery, ...]
    num_shots: int  # shots kept after truncation

    @property
    def prompt_ids(self) -> list[int]:
        """The full prompt of a single-query episode (prefix + question), the plain layouts' input."""
        return self.prefix_ids + self.queries[0].question_ids

    @property
    def chosen_ids(self) -> list[int]:
        return self.queries[0].chosen_ids

    @property
    def rejected_ids(self) -> list[int]:
        return self.queries[0].rejected_ids

    def as_tree_example(self) -> dict:
        """The `collate_tree` example of this episode."""
        return {"prefix_ids": self.prefix_ids, "queries": [
            {"question_ids": q.question_ids, "chosen_ids": q.chosen_ids, "rejected_ids": q.rejected_ids}
            for q in self.queries]}


def with_bos(ids: Sequence[int], bos_ids: Sequence[int]) -> list[int]:
    """Prompt ids that start with `bos_ids` once: prepended unless already there (a chat template writes it)."""
    ids, bos_ids = list(ids), list(bos_ids)
    return ids if ids[: len(bos_ids)] == bos_ids else bos_ids + ids


def _split_chat(prefix: str, query: str, apply_chat_template: Callable[..., str]) -> tuple[str, str]:
    """The chat-wrapped prompt cut where the query starts: (chat head + prefix, query + chat tail)."""
    wrapped = apply_chat(prefix + query, apply_chat_template)
    cut = wrapped.rindex(query)
    return wrapped[:cut], wrapped[cut:]


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
    signed: bool = False,
    bos_ids: Sequence[int] = (),
) -> EncodedEpisode | None:
    """Tokenize an episode so every query fits `max_length` (prefix + question + its longer
    completion: the sequence the model sees when that query is scored alone).

    Whole oldest shots are dropped first; a question and its completions are never cut, and no
    query is dropped. Returns None when even `min_shots` shots do not fit (the caller counts
    it). Prefix, question and completions are tokenized separately, as TRL tokenizes prompt
    and completion, so a query's tokens are identical whatever else shares the row. `bos_ids`
    (the model's BOS, for a tokenizer that adds one) starts the prefix once.
    """
    if template not in TEMPLATES:
        raise EpisodeError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    if task not in TASKS:
        raise EpisodeError(f"unknown task {task!r}; expected one of {TASKS}")
    if template == "chat" and apply_chat_template is None:
        raise EpisodeError("template 'chat' needs a tokenizer with a chat template")
    description = episode.user_description if rat else None
    if task == "describe":
        # RAT's describe task: the query holds two descriptions (or the gold one twice, for SFT).
        queries = [(DESCRIBE_TASK_LINE + DESCRIPTION_HEADER, render_description_completion(q.chosen, eos_token),
                    render_description_completion(q.rejected, eos_token)) for q in episode.queries]
    else:
        queries = [(render_query(q.question), render_completion(q.chosen, eos_token),
                    render_completion(q.rejected, eos_token)) for q in episode.queries]
    completions = [(encode(c), encode(r)) for _, c, r in queries]
    shots = list(episode.shots)
    while True:
        prefix = render_prefix(shots, description, signed)
        encoded = []
        for (query, _, _), (c, r) in zip(queries, completions, strict=True):
            if template == "chat":
                head, query = _split_chat(prefix, query, apply_chat_template)
            else:
                head = prefix
            encoded.append((head, encode(query), c, r))
        prefix_ids = with_bos(encode(encoded[0][0]) if encoded[0][0] else [], bos_ids)
        fits = all(len(prefix_ids) + len(q) + max(len(c), len(r)) <= max_length for _, q, c, r in encoded)
        if fits:
            if not prefix_ids:  # no shots and no chat head: the question itself starts the sequence
                q0 = encoded[0][1]
                if len(encoded) > 1:
                    raise EpisodeError("an episode without shots holds a single query")
                return EncodedEpisode(q0, (EncodedQuery([], encoded[0][2], encoded[0][3]),), len(shots))
            return EncodedEpisode(prefix_ids, tuple(EncodedQuery(q, c, r) for _, q, c, r in encoded), len(shots))
        if len(shots) <= min_shots:
            return None
        shots = shots[1:]  # drop the oldest whole shot


# --------------------------------------------------------------------------- config


class EpisodeConfig(Section):
    """How a user becomes a task: N few-shot preferences in the prompt plus one held-out pair."""

    num_shots: int = Field(8, ge=0, description="Few-shot preferences in the prompt (N). 0 = no user context.")
    min_shots: int = Field(
        2, ge=0, description="Users with fewer than N+1 preferences use what they have, down to this many shots."
    )
    repeats_per_epoch: int = Field(
        1, ge=1, description="Episodes per held-out pair per epoch, each with freshly sampled shots."
    )
    max_length: int = Field(
        1024, ge=16, description="Token budget per sequence; whole oldest shots are dropped first to fit."
    )
    template: Literal["markdown", "chat"] = Field(
        "markdown", description="'markdown': the official FSPO template; 'chat': the tokenizer's chat template."
    )
    signed_shots: bool = Field(
        False, description="Mark every word of a shot's preferred response with '+' and of its dispreferred one with "
        "'-' (sign tokens): how a small model trained from scratch tells the sides apart from the tokens themselves. "
        "Off in the official template; the compact world turns it on."
    )
    queries_per_episode: int = Field(
        8, ge=1, description="Held-out pairs scored against one encoded support set (the N shots): 1 is the official "
        "episode; Q > 1 encodes the shots once for Q pairs of the same user (same objective, fewer prompt tokens). "
        "Default 8: 5.6x TRL's pairs/s on ~900-token prompts vs 2.1x at Q = 1 (bench.train_throughput), and reward "
        "accuracy within 0.02 of Q = 1 at equal pairs per step (docs/training.md)."
    )

    @model_validator(mode="after")
    def _check(self) -> EpisodeConfig:
        if self.min_shots > self.num_shots:
            raise ValueError(f"min_shots ({self.min_shots}) must be <= num_shots ({self.num_shots})")
        return self
