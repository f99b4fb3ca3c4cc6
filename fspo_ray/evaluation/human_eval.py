"""Human-evaluation kit: blind pairwise comparisons for real users, as in the paper's study.

1. template: each participant gets candidate preference pairs (question, response A,
   response B) and marks the response they prefer. Their marks become their shots.
2. comparisons: for new questions, each method's answer (conditioned on the participant's
   own shots) and the baseline's answer, in a random order per item; a hidden key says
   which side is which. Written as CSV and JSONL (same items), the key as JSONL.
3. score: the filled comparisons and the key -> win rate per method (a tie counts half)
   with the 95% Wilson interval and the one-sided binomial p-value (fspo_ray.evaluation.stats).

Everything here is pure Python except `export_comparisons`, which generates on Ray Data.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path

from fspo_ray.episodes import Preference, stable_rng
from fspo_ray.evaluation.plan import EvalQuestion, EvaluationError, EvalUser
from fspo_ray.evaluation.stats import WinRate, win_rate

TEMPLATE_COLUMNS = ("participant_id", "item", "question", "response_a", "response_b", "preferred")
COMPARISON_COLUMNS = ("item_id", "participant_id", "question", "response_1", "response_2", "preferred")
KEY_COLUMNS = ("item_id", "participant_id", "method", "baseline", "method_position")
TEMPLATE_NAME = "preferences_template.csv"
INSTRUCTIONS = {
    "template": "For each row, read the question and the two responses, and write A or B in the "
    "'preferred' column: the response you would rather receive. Leave a row blank to skip it. You "
    "may add rows of your own (same participant_id, a new item number) with your own question and "
    "two responses.",
    "comparisons": "For each row, read the question and the two responses, and write 1 or 2 in the "
    "'preferred' column for the response you would rather receive, or tie if you have no preference. "
    "Judge only how well the response suits you.",
}


# --------------------------------------------------------------------------- files


def _read_table(path: str | Path) -> list[dict]:
    """Rows of a CSV or JSONL file (by extension), each with a 1-based 'line' for messages."""
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"{p} does not exist")
    if p.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(p.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append({**json.loads(line), "line": i})
                except json.JSONDecodeError as e:
                    raise EvaluationError(f"{p}:{i}: not valid JSON ({e})") from None
        return rows
    with p.open(newline="") as f:
        return [{**row, "line": i} for i, row in enumerate(csv.DictReader(f), start=2)]


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def _write_jsonl(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({c: r.get(c, "") for c in columns}) + "\n" for r in rows))


def _require(rows: list[dict], columns: Sequence[str], path) -> None:
    if rows:
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise EvaluationError(f"{path}: missing column(s) {missing}; expected {list(columns)}")


# --------------------------------------------------------------------------- 1. template


def write_template(pairs: Sequence[Preference], participants: Sequence[str], per_participant: int,
                   out_dir: str | Path, seed: int = 0) -> Path:
    """Each participant gets `per_participant` candidate pairs, the two responses in random
    order (so a synthetic label is not given away)."""
    if len(pairs) < per_participant:
        raise EvaluationError(f"{len(pairs)} candidate pairs, fewer than {per_participant} per participant")
    rows = []
    for pid in participants:
        rng = stable_rng(seed, "template", pid)
        for item, p in enumerate(rng.sample(list(pairs), per_participant), start=1):
            a, b = (p.chosen, p.rejected) if rng.random() < 0.5 else (p.rejected, p.chosen)
            rows.append({"participant_id": pid, "item": item, "question": p.question,
                         "response_a": a, "response_b": b, "preferred": ""})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TEMPLATE_NAME
    _write_csv(path, TEMPLATE_COLUMNS, rows)
    (out / "preferences_instructions.txt").write_text(INSTRUCTIONS["template"] + "\n")
    return path


def read_preferences_template(path: str | Path) -> dict[str, list[Preference]]:
    """A filled template -> participant -> their preferences (the shots), in file order."""
    rows = _read_table(path)
    _require(rows, TEMPLATE_COLUMNS, path)
    out: dict[str, list[Preference]] = {}
    for r in rows:
        mark = str(r.get("preferred") or "").strip().upper()
        if not mark:
            continue  # skipped by the participant
        if mark not in ("A", "B"):
            raise EvaluationError(f"{path}:{r['line']}: preferred must be A or B (or blank), got {r['preferred']!r}")
        question, a, b = (str(r.get(c) or "").strip() for c in ("question", "response_a", "response_b"))
        if not (question and a and b):
            raise EvaluationError(f"{path}:{r['line']}: question, response_a and response_b must all be filled")
        chosen, rejected = (a, b) if mark == "A" else (b, a)
        out.setdefault(str(r["participant_id"]).strip(), []).append(Preference(question, chosen, rejected))
    if not out:
        raise EvaluationError(f"{path}: no row has 'preferred' filled (A or B); nothing to use as shots")
    return out


# --------------------------------------------------------------------------- 2. comparisons


def participant_users(prefs: dict[str, list[Preference]], questions: Sequence[EvalQuestion],
                      per_participant: int, max_shots: int, seed: int = 0) -> list[EvalUser]:
    """Participants as evaluation users: their marked pairs are the shots (first max_shots),
    the questions are drawn from `questions`, never one of their own."""
    users = []
    for pid in sorted(prefs):
        own = {p.question for p in prefs[pid]}
        pool = [q for q in questions if q.question not in own]
        if len(pool) < per_participant:
            raise EvaluationError(f"participant {pid}: only {len(pool)} questions not in their template, "
                                  f"need evaluate.human.questions_per_participant={per_participant}")
        picked = stable_rng(seed, "questions", pid).sample(pool, per_participant)
        users.append(EvalUser(pid, "human", "", None, None, tuple(prefs[pid][:max_shots]), tuple(picked)))
    return users


def build_comparisons(answers: dict[tuple[str, int, str], str], methods: Sequence[str], baseline: str,
                      users: Sequence[EvalUser], seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Blind items and their key. `answers[(participant, question index, method)]` is a text;
    each item shows one method's answer and the baseline's, sides drawn at random."""
    items, key = [], []
    rng = random.Random(f"human-eval-{seed}")
    for u in users:
        mine = []
        for qi, q in enumerate(u.questions):
            for m in methods:
                method_text, base_text = answers[(u.user_id, qi, m)], answers[(u.user_id, qi, baseline)]
                position = rng.choice((1, 2))
                r1, r2 = (method_text, base_text) if position == 1 else (base_text, method_text)
                mine.append(({"participant_id": u.user_id, "question": q.question, "response_1": r1,
                               "response_2": r2, "preferred": ""},
                              {"participant_id": u.user_id, "method": m, "baseline": baseline,
                               "method_position": position}))
        rng.shuffle(mine)  # methods interleaved, so position in the sheet says nothing
        for item, k in mine:
            item_id = f"{rng.getrandbits(48):012x}"  # opaque: no order or method in the id
            items.append({"item_id": item_id, **item})
            key.append({"item_id": item_id, **k})
    return items, key


def write_comparisons(items: list[dict], key: list[dict], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "comparisons.csv", "jsonl": out / "comparisons.jsonl", "key": out / "key.jsonl"}
    _write_csv(paths["csv"], COMPARISON_COLUMNS, items)
    _write_jsonl(paths["jsonl"], COMPARISON_COLUMNS, items)
    _write_jsonl(paths["key"], KEY_COLUMNS, key)
    (out / "comparisons_instructions.txt").write_text(
        INSTRUCTIONS["comparisons"] + "\nKeep key.jsonl away from participants: it says which response is which.\n")
    return paths


def read_questions_file(path: str | Path) -> list[EvalQuestion]:
    rows = _read_table(path)
    out = []
    for r in rows:
        q = str(r.get("question") or "").strip()
        if not q:
            raise EvaluationError(f"{path}:{r['line']}: a question row needs a non-empty 'question'")
        out.append(EvalQuestion(q, r.get("question_id")))
    if not out:
        raise EvaluationError(f"{path}: no questions")
    return out


def export_comparisons(cfg, preferences_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Generate every method's and the baseline's answers for each participant (Ray Data), then
    write the blind comparisons and the key."""
    from fspo_ray.data import read_preferences
    from fspo_ray.evaluation import inference
    from fspo_ray.evaluation.plan import (
        answer_request,
        describe_id,
        describe_request,
        plan_methods,
        plan_prompts,
    )

    ev, human = cfg.evaluate, cfg.evaluate.human
    seed = cfg.seed if ev.seed is None else ev.seed
    mp = plan_methods(ev.model_copy(update={"only": list(human.methods), "describe_before": None,
                                            "describe_after": None, "on_missing": "fail"}), cfg.layout)
    ev = plan_prompts(ev, mp, cfg.episodes.num_shots)
    for m in human.methods:
        if mp.methods[m].context == "true_description":
            raise EvaluationError(f"evaluate.human.methods: {m!r} needs a true user description; real "
                                  "participants have none")
    prefs = read_preferences_template(preferences_path)
    if human.questions_file:
        questions = read_questions_file(human.questions_file)
    else:
        table = read_preferences(cfg.layout.prefs)
        seen, questions = set(), []
        for r in table.to_pylist():
            if r["question"] not in seen:
                seen.add(r["question"])
                questions.append(EvalQuestion(r["question"], r.get("question_id")))
    users = participant_users(prefs, questions, human.questions_per_participant, ev.num_shots, seed)

    n = ev.num_shots
    describe = {}
    for m in human.methods:
        if mp.methods[m].context == "generated_description":
            for u in users:
                r = describe_request(mp.methods[m].describer, u, n)
                describe[r["request_id"]] = r
    described = inference.generate(list(describe.values()), mp.models, ev.inference, ev.max_shots)
    requests, where = {}, {}
    for u in users:
        for qi in range(len(u.questions)):
            for m in [*human.methods, ev.baseline]:
                mc = mp.methods[m]
                d = (described[describe_id(mc.describer, n, u.user_id)]["text"]
                     if mc.context == "generated_description" else None)
                r = answer_request(m, mc, u, qi, n, d)
                requests[r["request_id"]] = r
                where[(u.user_id, qi, m)] = r["request_id"]
    answered = inference.generate(list(requests.values()), mp.models, ev.inference, ev.max_shots)
    answers = {k: answered[rid]["text"] for k, rid in where.items()}
    items, key = build_comparisons(answers, human.methods, ev.baseline, users, seed)
    return write_comparisons(items, key, out_dir)


# --------------------------------------------------------------------------- 3. score


def score_answers(answers_path: str | Path, key_path: str | Path) -> dict:
    """Filled comparisons + key -> per method: win rate, 95% interval, p-value, n; and the
    number of unanswered items. Each item is one judgment (one order, drawn at random)."""
    answers, key = _read_table(answers_path), _read_table(key_path)
    _require(answers, ("item_id", "preferred"), answers_path)
    _require(key, KEY_COLUMNS, key_path)
    by_id = {str(k["item_id"]): k for k in key}
    votes: dict[str, list[tuple[float]]] = {}
    unanswered = 0
    for r in answers:
        item = str(r["item_id"]).strip()
        if item not in by_id:
            raise EvaluationError(f"{answers_path}:{r['line']}: item_id {item!r} is not in the key {key_path}")
        mark = str(r.get("preferred") or "").strip().lower()
        if not mark:
            unanswered += 1
            continue
        if mark not in ("1", "2", "tie"):
            raise EvaluationError(f"{answers_path}:{r['line']}: preferred must be 1, 2 or tie (or blank), "
                                  f"got {r['preferred']!r}")
        k = by_id[item]
        v = 0.5 if mark == "tie" else float(int(mark) == int(k["method_position"]))
        votes.setdefault(k["method"], []).append((v,))
    if not votes:
        raise EvaluationError(f"{answers_path}: no item has 'preferred' filled (1, 2 or tie)")
    baseline = key[0]["baseline"]
    result: dict[str, WinRate] = {m: win_rate(v) for m, v in votes.items()}
    return {
        "baseline": baseline,
        "methods": {m: r.to_dict() for m, r in result.items()},
        "unanswered": unanswered,
        "statistics": "each item one judgment; win 1, tie 1/2, loss 0; 95% Wilson interval; one-sided exact "
                      "binomial test against 0.5",
    }


def score_table(scores: dict) -> str:
    lines = [f"| Method | Win rate vs {scores['baseline']} (%) | 95% interval | p-value | n |", "|---|---:|---:|---:|---:|"]
    for m, r in scores["methods"].items():
        lo, hi = r["ci95"]
        lines.append(f"| {m} | {100 * r['win_rate']:.1f} | {100 * lo:.1f}–{100 * hi:.1f} | {r['p_value']:.3g} | {r['n']} |")
    return "\n".join(lines)
