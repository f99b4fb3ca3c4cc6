"""What an evaluation will do, decided before any Ray worker starts.

- users: per split, the first `users_per_split` users (by id) with enough preferences; for
  each, `questions_per_user` held-out questions and a fixed shot pool from the user's other
  pairs (never on a held-out question). The N shots are the first N of the pool, so the
  shots of a smaller N are a subset of a larger N's, and the shots sweep varies one thing.
- methods: each method's model (and RAT describer) resolved to a directory; a missing one
  is skipped with its reason, or fails, by `evaluate.on_missing`.
- prompts: the main table's N from how the models were trained (their fspo_prompt.json), and
  each method's context checked against it (fspo_ray/prompting.py's rule).
- requests: one row per generation (describe or answer), keyed by a stable request id.

Pure Python: no Ray, no torch.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fspo_ray.episodes import Preference, stable_rng
from fspo_ray.errors import FspoError
from fspo_ray.evaluation.config import EvaluateConfig, MethodConfig
from fspo_ray.layout import RunLayout, looks_local
from fspo_ray.modeling import PROMPT_CONTRACT, TOKENIZER_FILES, WEIGHT_FILES
from fspo_ray.prompting import contract_of, setting


class EvaluationError(FspoError):
    """The evaluation cannot run as configured; the message says why and what to change."""


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    question_id: str | None


@dataclass(frozen=True)
class EvalUser:
    user_id: str
    split: str
    domain: str
    description: str | None  # the gold (refined) description
    profile: dict[str, str] | None  # the gold persona {axis: value}, where known (the world)
    shot_pool: tuple[Preference, ...]  # the N shots are shot_pool[:N]
    questions: tuple[EvalQuestion, ...]

    def shots(self, n: int) -> tuple[Preference, ...]:
        return self.shot_pool[:n]


def user_from_rows(user_id: str, rows: list[dict], *, max_shots: int, questions: int, seed: int) -> EvalUser | None:
    """The user's held-out questions and shot pool, or None when the user has too few pairs.

    Held-out questions are taken in a per-user random order, passing over a question whose pairs
    would leave fewer than `max_shots` pairs on other questions (a user whose pairs cover few
    distinct questions keeps enough shots; where no question needs passing over, the pick is the
    plain random one)."""
    order = list(range(len(rows)))
    stable_rng(seed, "eval", user_id).shuffle(order)
    per_question = Counter(r["question"] for r in rows)
    held, held_texts, left = [], set(), len(rows)
    for i in order:
        if len(held) == questions:
            break
        q = rows[i]["question"]
        if q not in held_texts and left - per_question[q] >= max_shots:
            held.append(i)
            held_texts.add(q)
            left -= per_question[q]
    pool = [i for i in order if i not in held and rows[i]["question"] not in held_texts]
    if len(held) < questions or len(pool) < max_shots:
        return None
    first = rows[0]
    profile = json.loads(first["user_profile"]) if first.get("user_profile") else None
    return EvalUser(
        user_id=user_id,
        split=first["split"],
        domain=first["domain"],
        description=first.get("user_description") or None,
        profile=profile,
        shot_pool=tuple(Preference(rows[i]["question"], rows[i]["chosen"], rows[i]["rejected"]) for i in pool[:max_shots]),
        questions=tuple(EvalQuestion(rows[i]["question"], rows[i].get("question_id")) for i in held),
    )


def select_users(rows: list[dict], ev: EvaluateConfig, seed: int, source: str) -> dict[str, list[EvalUser]]:
    """Per split, the evaluated users; a split with no (usable) users is an error naming the fix."""
    by_split: dict[str, dict[str, list[dict]]] = {s: {} for s in ev.splits}
    for r in rows:
        if r["split"] in by_split:
            by_split[r["split"]].setdefault(r["user_id"], []).append(r)
    out: dict[str, list[EvalUser]] = {}
    for split in ev.splits:
        users = by_split[split]
        if not users:
            raise EvaluationError(
                f"split {split!r} has no users in {source}: drop it from evaluate.splits "
                f"(e.g. evaluate.splits=[{', '.join(s for s in ev.splits if s != split)}]) or generate "
                f"users for it (world.users_{split} > 0)"
            )
        picked: list[EvalUser] = []
        too_few = 0
        for uid in sorted(users):
            u = user_from_rows(uid, users[uid], max_shots=ev.max_shots, questions=ev.questions_per_user, seed=seed)
            if u is None:
                too_few += 1
                continue
            picked.append(u)
            if len(picked) == ev.users_per_split:
                break
        if not picked:
            need = ev.max_shots + ev.questions_per_user
            largest = max(len(v) for v in users.values())
            raise EvaluationError(
                f"split {split!r}: no user has enough preferences: each needs evaluate.questions_per_user="
                f"{ev.questions_per_user} held-out questions plus max(evaluate.num_shots, evaluate.shots_sweep)="
                f"{ev.max_shots} shots on other questions ({need} pairs), the largest user has {largest}"
            )
        out[split] = picked
    return out


# --------------------------------------------------------------------------- models


def resolve_ref(ref: str, layout: RunLayout) -> tuple[str, bool]:
    """(path or hub id, is_stage): a name without '/' is a training stage under <output_dir>/models;
    anything else was resolved when the config was loaded (fspo_ray/layout.py)."""
    if "/" not in ref and "\\" not in ref:
        return str(layout.model(ref)), True
    return ref, False


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a loadable model directory, or None. A hub id ('org/name', not a local
    path) is accepted unchecked: it can only be checked by downloading it."""
    if not looks_local(path):
        return None
    p = Path(path)
    if not p.is_dir():
        return f"{path} does not exist"
    if not any((p / f).exists() for f in WEIGHT_FILES):
        return f"{path} has no weights ({' or '.join(WEIGHT_FILES[:3])})"
    if not any((p / f).exists() for f in TOKENIZER_FILES):
        return f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])})"
    return None


@dataclass
class MethodPlan:
    """The methods that will run, the models they need, and those skipped with why."""

    methods: dict[str, MethodConfig]  # in report order, baseline included
    models: dict[str, str]  # model ref (stage name or path) -> path
    skipped: dict[str, str] = field(default_factory=dict)
    describers: dict[str, str] = field(default_factory=dict)  # 'before'/'after' -> model ref
    describers_skipped: dict[str, str] = field(default_factory=dict)


def plan_methods(ev: EvaluateConfig, layout: RunLayout) -> MethodPlan:
    """Resolve every method's models; apply on_missing. Fails early, naming the field."""
    wanted = [m for m in ev.methods if m == ev.baseline or ev.only is None or m in ev.only]
    plan = MethodPlan(methods={}, models={})

    def problems(refs: list[tuple[str, str]], owner: str, always_fail: bool) -> str | None:
        for field_name, ref in refs:
            path, is_stage = resolve_ref(ref, layout)
            problem = checkpoint_problem(path)
            if problem is None:
                continue
            if not is_stage:
                raise EvaluationError(f"evaluate.{owner}.{field_name}: checkpoint {problem}")
            msg = f"{field_name} stage {ref!r}: {problem}"
            if always_fail or ev.on_missing == "fail":
                hint = "" if always_fail else " (evaluate.on_missing=skip skips such methods)"
                raise EvaluationError(f"evaluate.{owner}: {msg}; train that stage first{hint}")
            return msg
        return None

    for name in wanted:
        m = ev.methods[name]
        refs = [("model", m.model)] + ([("describer", m.describer)] if m.describer else [])
        reason = problems(refs, f"methods.{name}", always_fail=name == ev.baseline)
        if reason is not None:
            plan.skipped[name] = reason
            continue
        plan.methods[name] = m
        for _, ref in refs:
            plan.models[ref] = resolve_ref(ref, layout)[0]
    if len(plan.methods) == 1 and len(wanted) > 1:
        reasons = "; ".join(f"{k}: {v}" for k, v in plan.skipped.items())
        raise EvaluationError(f"nothing to evaluate: every method but the baseline was skipped ({reasons})")
    for when in ("before", "after"):
        ref = getattr(ev, f"describe_{when}")
        if ref is None:
            continue
        reason = problems([(f"describe_{when}", ref)], "describers", always_fail=False)
        if reason is not None:
            plan.describers_skipped[when] = reason
        else:
            plan.describers[when] = ref
            plan.models[ref] = resolve_ref(ref, layout)[0]
    return plan


def plan_prompts(ev: EvaluateConfig, plan: MethodPlan, fallback_shots: int) -> EvaluateConfig:
    """`ev` with num_shots decided by how the models were trained, after checking each method against
    its model's prompt contract (fspo_prompt.json). Unset num_shots: the trained N of the models that
    read shots (they must agree), else `fallback_shots` (episodes.num_shots). A set N, or a context,
    that contradicts a model's training is an error unless evaluate.override_prompt_contract."""
    over = ev.override_prompt_contract
    readers: list[tuple[str, str]] = []  # (where, model ref) of every model shown shots
    for name, m in plan.methods.items():
        if m.context != "none":
            readers.append((f"method {name!r}", m.model))
        if m.describer:
            readers.append((f"method {name!r}'s describer", m.describer))
        contract = contract_of(plan.models[m.model])
        if contract.get("task", "answer") == "answer" and "rat" in contract and not over:
            wants = m.context in ("generated_description", "true_description")
            if wants != contract["rat"]:
                raise EvaluationError(
                    f"evaluate.methods.{name}: context {m.context!r} {'puts a' if wants else 'has no'} user description "
                    f"in the prompt, but {plan.models[m.model]} was trained with rat: {contract['rat']} (its "
                    f"{PROMPT_CONTRACT}); choose a context that matches, or set evaluate.override_prompt_contract=true"
                )
    readers += [(f"describe_{when}", ref) for when, ref in plan.describers.items()]
    trained = {}
    for where, ref in readers:
        n = contract_of(plan.models[ref]).get("num_shots")
        if n:  # a model trained without shots (N = 0) may be shown any N: the few-shot baseline
            trained.setdefault(n, []).append(where)
    num_shots = ev.num_shots
    if num_shots is None:
        if len(trained) > 1:
            found = "; ".join(f"N={n}: {', '.join(w)}" for n, w in sorted(trained.items()))
            raise EvaluationError(f"evaluate.num_shots is unset and the evaluated models were trained with different N "
                                  f"({found}); set evaluate.num_shots and evaluate.override_prompt_contract=true")
        num_shots = next(iter(trained), fallback_shots)
    else:
        for _, ref in readers:
            setting("evaluate", "num_shots", num_shots, plan.models[ref], contract_of(plan.models[ref]), override=over)
    return ev.model_copy(update={"num_shots": num_shots})


# --------------------------------------------------------------------------- requests


def shots_for(m: MethodConfig, n: int) -> int:
    """Shots a method's prompt carries at sweep point n (none for a context-free method)."""
    return 0 if m.context == "none" else n


def describe_id(model_ref: str, n: int, user_id: str) -> str:
    return f"describe|{model_ref}|{n}|{user_id}"


def answer_id(method: str, n: int, user_id: str, question_index: int) -> str:
    return f"answer|{method}|{n}|{user_id}|{question_index}"


def _shots_json(shots) -> str:
    return json.dumps([{"question": s.question, "chosen": s.chosen, "rejected": s.rejected} for s in shots])


def describe_request(model_ref: str, user: EvalUser, n: int) -> dict:
    return {
        "request_id": describe_id(model_ref, n, user.user_id),
        "model": model_ref,
        "kind": "describe",
        "shots_json": _shots_json(user.shots(n)),
        "question": "",
        "description": "",
        "use_description": False,
    }


def answer_request(method: str, m: MethodConfig, user: EvalUser, qi: int, n: int, description: str | None) -> dict:
    k = shots_for(m, n)
    return {
        "request_id": answer_id(method, k, user.user_id, qi),
        "model": m.model,
        "kind": "answer",
        "shots_json": _shots_json(user.shots(k)),
        "question": user.questions[qi].question,
        "description": description or "",
        "use_description": description is not None,
    }


@dataclass(frozen=True)
class Cell:
    """One win rate: a method on a split at N shots."""

    method: str
    split: str
    n: int


def cells(ev: EvaluateConfig, methods: dict[str, MethodConfig]) -> list[Cell]:
    """The main table (every method x split at num_shots) plus the sweep (methods with user
    context, on sweep_split, at each N of shots_sweep)."""
    out = [Cell(m, s, ev.num_shots) for m in methods for s in ev.splits]
    for n in ev.shots_sweep:
        for m, mc in methods.items():
            c = Cell(m, ev.sweep_split, n)
            if mc.context != "none" and c not in out:
                out.append(c)
    return out
