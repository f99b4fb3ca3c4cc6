"""Judging a method's answer against the baseline's, in both orders.

Order 1 shows the method's answer as A, order 2 as B, so a judge that favours a position
helps and hurts the method equally. Two judges:

- world: the simulated world's judge with the user's gold persona (the refined profile
  stored with the user's rows), with the configured position bias and noise;
- llm: a language model conditioned on the user's true description, on the engines layer's Ray
  Data stage. Its prompt and label parser are the data labels' (fspo_ray/llm_judge.py): one
  prompt for generation and evaluation. An unparseable reply or an engine error is a dropped
  judgment (not a tie), counted with its reason in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fspo_ray.episodes import stable_rng
from fspo_ray.evaluation.plan import Cell, EvaluationError, EvalUser
from fspo_ray.evaluation.stats import vote

ORDERS = ("A", "B")  # the method's side in order 1 and order 2


@dataclass(frozen=True)
class Comparison:
    """One pair to judge: the method's and the baseline's answer for one user and question."""

    cell: Cell
    user: EvalUser
    question_index: int
    method_text: str
    baseline_text: str

    @property
    def key(self) -> str:
        c = self.cell
        return f"{c.method}|{c.split}|{c.n}|{self.user.user_id}|{self.question_index}"

    def texts(self, method_side: str) -> tuple[str, str]:
        """(text A, text B) with the method's answer on `method_side`."""
        if method_side == "A":
            return self.method_text, self.baseline_text
        return self.baseline_text, self.method_text


# --------------------------------------------------------------------------- world judge


def gold_persona(user: EvalUser, world):
    """The persona the user's labels came from: the stored (refined) profile, else the world's."""
    from fspo_ray.world import AXIS_NAMES, Persona

    if user.profile is None:
        return world.user(user.user_id)
    rank = {a: i for i, a in enumerate(AXIS_NAMES)}
    unknown = [a for a in user.profile if a not in rank]
    if unknown:
        raise EvaluationError(f"user {user.user_id}: user_profile names unknown axes {unknown}")
    values = tuple(sorted(user.profile.items(), key=lambda av: rank[av[0]]))
    return Persona(user.user_id, user.split, user.domain, values, user.description or "")


def world_judge_problem(users: dict[str, list[EvalUser]], world) -> str | None:
    """Why the world judge cannot judge these users (no gold profile, a question not of this
    world), or None."""
    for split_users in users.values():
        for u in split_users:
            if u.profile is None:
                try:
                    world.user(u.user_id)
                except ValueError as e:
                    return f"user {u.user_id} has no user_profile and is not a user of this world ({e})"
            for q in u.questions:
                if not q.question_id:
                    return f"user {u.user_id}: a question has no question_id"
                try:
                    world.question(q.question_id)
                except ValueError as e:
                    return str(e)
    return None


def world_votes(comparisons: list[Comparison], world, *, position_bias: float, noise: float,
                seed: int) -> list[tuple[float, float]]:
    """Per comparison, the method's vote in order 1 and order 2 (1 win, 0.5 tie, 0 loss)."""
    out = []
    for c in comparisons:
        persona = gold_persona(c.user, world)
        question = world.question(c.user.questions[c.question_index].question_id)
        rng = stable_rng(seed, "judge", c.key)
        votes = []
        for side in ORDERS:
            a, b = c.texts(side)
            label = world.judge(persona, question, a, b, rng, position_bias=position_bias, noise=noise)
            votes.append(vote(label, side))
        out.append((votes[0], votes[1]))
    return out


def world_scores(texts: list[tuple[EvalUser, int, str]], world) -> list[float]:
    """The world's score of each answer for its user (matches minus contradictions on the
    user's relevant axes): an absolute measure next to the pairwise win rate."""
    out = []
    for user, qi, text in texts:
        question = world.question(user.questions[qi].question_id)
        out.append(world.score(gold_persona(user, world), question, text))
    return out


# --------------------------------------------------------------------------- LLM judge


def llm_judge_rows(comparisons: list[Comparison], label: str) -> list[dict]:
    """Both orders of every comparison as request rows of the engines layer's stage."""
    from fspo_ray.llm_judge import judge_prompt

    rows = []
    for i, c in enumerate(comparisons):
        if not c.user.description:
            raise EvaluationError(f"user {c.user.user_id}: the LLM judge needs a user_description")
        question = c.user.questions[c.question_index].question
        for side in ORDERS:
            a, b = c.texts(side)
            rows.append({"key": f"{i}|{side}", "engine": label,
                         "messages_json": json.dumps(judge_prompt(c.user.description, question, a, b))})
    return rows


def votes_from_replies(n: int, replies: dict[str, str | None],
                       errors: dict[str, str] | None = None) -> tuple[list[tuple[float, ...]], dict[str, int]]:
    """Judge replies keyed '<index>|<side>' -> the votes of each comparison, and the dropped
    judgments by reason. A reply the label parser cannot read, or an engine error, is a dropped
    judgment (not a tie): the comparison keeps the vote of its other order, or none."""
    from fspo_ray.llm_judge import Drop, parse_label

    out, dropped = [], {}
    for i in range(n):
        votes = []
        for side in ORDERS:
            key = f"{i}|{side}"
            if (errors or {}).get(key):
                dropped["engine_error"] = dropped.get("engine_error", 0) + 1
                continue
            label = parse_label(replies.get(key))
            if isinstance(label, Drop):
                dropped[label.reason] = dropped.get(label.reason, 0) + 1
                continue
            votes.append(vote(label, side))
        out.append(tuple(votes))
    return out, dropped


def llm_votes(comparisons: list[Comparison], judge_cfg) -> tuple[list[tuple[float, ...]], dict[str, int]]:
    """The LLM judge on Ray Data, through the engines layer's stage (an hf actor pool or vLLM)."""
    import ray.data

    from fspo_ray.engines.ray_data import generate_stage

    llm = judge_cfg.llm
    rows = llm_judge_rows(comparisons, llm.label())
    ds = generate_stage(ray.data.from_items(rows), {llm.label(): llm}, llm.sampling(seed=0))
    replies: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for r in ds.iter_rows():
        replies[r["key"]] = r["generated_text"]
        if r["engine_error"]:
            errors[r["key"]] = r["engine_error"]
    return votes_from_replies(len(comparisons), replies, errors)
