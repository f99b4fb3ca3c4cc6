"""The evaluate job's driver: plan, generate (Ray Data), judge, report.

1. check_inputs (no Ray): prefs, methods and their checkpoints, N and each method's context against
   how its model was trained (fspo_prompt.json), users per split, the judge.
2. describe: RAT describers write user descriptions from the shots (one Ray Data pass).
3. answer: every method answers every held-out question (one Ray Data pass, a pool per model).
4. judge each method's answer against the baseline's in both orders; win rates per cell.
5. RAT description quality; report.json, report.md, plots.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fspo_ray.engines.embedder import embedder_problem as why_no_embedder
from fspo_ray.evaluation.config import EvaluateConfig
from fspo_ray.evaluation.plan import (
    EvaluationError,
    EvalUser,
    MethodPlan,
    answer_id,
    answer_request,
    cells,
    checkpoint_problem,
    describe_id,
    describe_request,
    plan_methods,
    plan_prompts,
    select_users,
    shots_for,
)

if TYPE_CHECKING:  # the run config composes this package's section: a type, not an import at run time
    from fspo_ray.config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class EvalPlan:
    evaluate: EvaluateConfig  # the config's evaluate section with num_shots decided
    users: dict[str, list[EvalUser]]
    methods: MethodPlan
    judge_kind: str  # "world" or "llm"
    seed: int
    embedder_problem: str | None  # why description similarity cannot be measured, or None


def check_inputs(cfg: RunConfig) -> EvalPlan:
    """Everything that can fail before a Ray worker starts, with a message naming the fix."""
    from fspo_ray.data import read_preferences

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EvaluationError("the evaluation plots need matplotlib: pip install 'fspo-ray[report]'") from None
    methods = plan_methods(cfg.evaluate, cfg.layout)
    ev = plan_prompts(cfg.evaluate, methods, cfg.episodes.num_shots)
    prefs = cfg.layout.prefs
    table = read_preferences(prefs, splits=ev.splits)
    seed = cfg.seed if ev.seed is None else ev.seed
    users = select_users(table.to_pylist(), ev, seed, str(prefs))
    judge_kind = _judge_kind(cfg, users)
    lacking = [u.user_id for us in users.values() for u in us if not u.description]
    needs = [f"method {n!r} (true_description)" for n, m in methods.methods.items() if m.context == "true_description"]
    needs += ["the LLM judge"] if judge_kind == "llm" else []
    if lacking and needs:
        raise EvaluationError(f"{' and '.join(needs)} need each user's true user_description; {len(lacking)} "
                              f"evaluated users lack it, e.g. {lacking[0]}")
    embedder_problem = why_no_embedder(cfg.embedder) if methods.describers else None
    return EvalPlan(ev, users, methods, judge_kind, seed, embedder_problem)


def _judge_kind(cfg: RunConfig, users: dict[str, list[EvalUser]]) -> str:
    from fspo_ray.evaluation.judging import world_judge_problem

    kind = cfg.evaluate.judge.kind
    if kind in ("auto", "world"):
        from fspo_ray.world import world_from_config

        problem = world_judge_problem(users, world_from_config(cfg.world))
        if problem is None:
            return "world"
        if kind == "world":
            raise EvaluationError(f"evaluate.judge.kind=world cannot judge this data: {problem}; use kind=llm")
    problem = checkpoint_problem(cfg.evaluate.judge.llm.model)
    if problem is not None:
        raise EvaluationError(f"evaluate.judge.llm.model: checkpoint {problem}")
    return "llm"


def run_evaluation(cfg: RunConfig, plan: EvalPlan | None = None) -> dict:
    """Run the evaluation and write <output_dir>/report.json, report.md and plots/."""
    from fspo_ray.evaluation import inference
    from fspo_ray.evaluation.goals import evaluate_goals
    from fspo_ray.evaluation.report import build_report, write_report
    from fspo_ray.evaluation.stats import win_rate

    t0 = time.perf_counter()
    plan = plan or check_inputs(cfg)
    cfg = cfg.model_copy(update={"evaluate": plan.evaluate})  # num_shots as planned
    ev, mp, users = cfg.evaluate, plan.methods, plan.users
    methods, baseline = mp.methods, mp.methods[ev.baseline]
    todo = cells(ev, methods)

    # 2. describe: RAT cells' descriptions, plus the quality report's at num_shots
    describe: dict[str, dict] = {}
    for c in todo:
        m = methods[c.method]
        if m.context == "generated_description":
            for u in users[c.split]:
                r = describe_request(m.describer, u, c.n)
                describe[r["request_id"]] = r
    for ref in mp.describers.values():
        for us in users.values():
            for u in us:
                r = describe_request(ref, u, ev.num_shots)
                describe[r["request_id"]] = r
    logger.info("evaluate: %d describe requests", len(describe))
    described = inference.generate(list(describe.values()), mp.models, ev.inference, ev.max_shots)
    phases = {"describe": time.perf_counter() - t0}

    # 3. answer
    answers: dict[str, dict] = {}
    for c in todo:
        m = methods[c.method]
        for u in users[c.split]:
            description = None
            if m.context == "true_description":
                description = u.description
            elif m.context == "generated_description":
                description = described[describe_id(m.describer, c.n, u.user_id)]["text"]
            for qi in range(len(u.questions)):
                for name, mc, d in ((c.method, m, description), (ev.baseline, baseline, None)):
                    r = answer_request(name, mc, u, qi, c.n, d)
                    answers[r["request_id"]] = r
    logger.info("evaluate: %d answer requests over %d cells", len(answers), len(todo))
    # The description-quality embeddings need only phase 1's output: they run (on their own Ray
    # Data actor) in a thread while the answers are generated.
    with ThreadPoolExecutor(max_workers=1) as pool:
        quality = pool.submit(_timed, _description_quality, cfg, plan, described)
        answered = inference.generate(list(answers.values()), mp.models, ev.inference, ev.max_shots)
        phases["answer"] = time.perf_counter() - t0 - sum(phases.values())
        description_quality, phases["description_quality (during answer)"] = quality.result()

    # 4. judge
    t_judge = time.perf_counter()
    comparisons, judge = _comparisons(cfg, plan, todo, answered), {"kind": plan.judge_kind}
    if plan.judge_kind == "world":
        from fspo_ray.evaluation.judging import world_votes
        from fspo_ray.world import world_from_config

        world = world_from_config(cfg.world)
        bias = cfg.world.judge_position_bias if ev.judge.position_bias is None else ev.judge.position_bias
        noise = cfg.world.judge_noise if ev.judge.noise is None else ev.judge.noise
        votes = world_votes(comparisons, world, position_bias=bias, noise=noise, seed=plan.seed)
        judge.update(position_bias=bias, noise=noise)
    else:
        from fspo_ray.evaluation.judging import llm_votes

        votes, dropped = llm_votes(comparisons, ev.judge)
        judge.update(model=ev.judge.llm.model, dropped=dropped,
                     comparisons_without_vote=sum(not v for v in votes))
    by_cell = defaultdict(list)
    scores: dict = defaultdict(dict)  # cell -> comparison key -> pair score, for paired differences
    for c, v in zip(comparisons, votes, strict=True):
        if v:  # a comparison whose judgments were all dropped has no vote
            by_cell[c.cell].append(v)
            scores[c.cell][(c.user.user_id, c.question_index)] = sum(v) / len(v)
    results = {cell: win_rate(v) for cell, v in by_cell.items()}
    goal_split = "held_out" if "held_out" in ev.splits else ev.splits[0]
    from fspo_ray.evaluation.report import method_differences, training_summary

    differences = method_differences(
        {cell.method: by_key for cell, by_key in scores.items() if cell.split == goal_split and cell.n == ev.num_shots},
        goal_split)
    goals = evaluate_goals(dict(scores),
                           split=goal_split, num_shots=ev.num_shots, shots=list(ev.shots_sweep),
                           sweep_split=ev.sweep_split, methods=list(methods))
    phases["judge"] = time.perf_counter() - t_judge

    # 5. report
    world_score = _world_scores(cfg, plan, answered) if plan.judge_kind == "world" else None
    outputs = list(described.values()) + list(answered.values())
    report = build_report(
        ev=ev, methods=list(methods), results=results, skipped=mp.skipped,
        users={s: len(us) for s, us in users.items()}, judge=judge,
        description_quality=description_quality, world_score=world_score, goals=goals,
        generation={"requests": len(outputs), "errors": sum(bool(o["error"]) for o in outputs),
                    "truncated": sum(o["finish_reason"] == "length" for o in outputs),
                    "seconds": {k: round(v, 1) for k, v in phases.items()}},
        seconds=time.perf_counter() - t0, differences=differences, training=training_summary(cfg.output_dir),
    )
    paths = write_report(cfg.output_dir, report)
    logger.info("evaluate: wrote %s", ", ".join(str(p) for p in paths.values()))
    return report


def _timed(fn, *args):
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _comparisons(cfg: RunConfig, plan: EvalPlan, todo, answered: dict[str, dict]):
    from fspo_ray.evaluation.judging import Comparison

    ev, methods = cfg.evaluate, plan.methods.methods
    out = []
    for c in todo:
        k, kb = shots_for(methods[c.method], c.n), shots_for(methods[ev.baseline], c.n)
        for u in plan.users[c.split]:
            for qi in range(len(u.questions)):
                out.append(Comparison(
                    cell=c, user=u, question_index=qi,
                    method_text=answered[answer_id(c.method, k, u.user_id, qi)]["text"],
                    baseline_text=answered[answer_id(ev.baseline, kb, u.user_id, qi)]["text"],
                ))
    return out


def _world_scores(cfg: RunConfig, plan: EvalPlan, answered: dict[str, dict]) -> dict:
    """Mean world score per method and split at num_shots."""
    from fspo_ray.evaluation.judging import world_scores
    from fspo_ray.world import world_from_config

    ev, world = cfg.evaluate, world_from_config(cfg.world)
    out: dict = {}
    for name, m in plan.methods.methods.items():
        k = shots_for(m, ev.num_shots)
        for split, us in plan.users.items():
            items = [(u, qi, answered[answer_id(name, k, u.user_id, qi)]["text"])
                     for u in us for qi in range(len(u.questions))]
            out.setdefault(name, {})[split] = statistics.fmean(world_scores(items, world))
    return out


def _description_quality(cfg: RunConfig, plan: EvalPlan, described: dict[str, dict]) -> dict | None:
    from fspo_ray.evaluation.descriptions import axes_recovered, embed_similarities, summarize

    mp, ev = plan.methods, cfg.evaluate
    if not mp.describers and not mp.describers_skipped:
        return None
    dq: dict = {"num_shots": ev.num_shots, "embedder": cfg.embedder.name,
                "skipped": dict(mp.describers_skipped)}
    items = [(when, ref, u) for when, ref in mp.describers.items() for us in plan.users.values() for u in us
             if u.description]
    texts = [described[describe_id(ref, ev.num_shots, u.user_id)]["text"] for _, ref, u in items]
    if plan.embedder_problem is None:
        sims = embed_similarities([(t, u.description) for t, (_, _, u) in zip(texts, items, strict=True)], cfg)
    else:
        sims = [None] * len(items)
        dq["similarity_skipped"] = plan.embedder_problem
    for when, ref in mp.describers.items():
        rows = []
        for (w, _, u), text, sim in zip(items, texts, sims, strict=True):
            if w != when:
                continue
            correct, total = axes_recovered(text, u.profile) if u.profile else (0, 0)
            rows.append({"split": u.split, "similarity": sim, "correct": correct, "total": total})
        dq[when] = {"stage": ref, **summarize(list(ev.splits), rows)}
        dq[when]["examples"] = [{"user_id": u.user_id, "generated": t, "gold": u.description}
                                for (w, _, u), t in zip(items, texts, strict=True) if w == when][:3]
    return dq
