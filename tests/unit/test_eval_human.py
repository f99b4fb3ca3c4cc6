"""Human-evaluation kit round trip: template -> shots, blind comparisons + key -> win rates."""

import csv
import json

import pytest

from fspo_ray.episodes import Preference
from fspo_ray.evaluation.human_eval import (
    build_comparisons,
    participant_users,
    read_preferences_template,
    score_answers,
    write_comparisons,
    write_template,
)
from fspo_ray.evaluation.plan import EvalQuestion, EvaluationError
from jobs import human_eval_score

PAIRS = [Preference(f"question {i}?", f"good answer {i}", f"bad answer {i}") for i in range(10)]


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_template_round_trip_gives_the_participants_shots(tmp_path):
    path = write_template(PAIRS, ["p0", "p1"], 4, tmp_path, seed=0)
    rows = _read_csv(path)
    assert len(rows) == 8 and {r["participant_id"] for r in rows} == {"p0", "p1"}
    assert all(r["preferred"] == "" for r in rows)
    # the synthetic label is not given away: "good" is not always response_a
    assert {r["response_a"].startswith("good") for r in rows} == {True, False}
    # a participant who prefers the "bad" answers, skips one row and adds a pair of their own
    for r in rows:
        r["preferred"] = "a" if r["response_a"].startswith("bad") else "B"
    rows[1]["preferred"] = ""
    rows.append({"participant_id": "p1", "item": "99", "question": "my own?", "response_a": "x", "response_b": "y",
                 "preferred": "A"})
    _write_csv(path, rows)
    prefs = read_preferences_template(path)
    assert len(prefs["p0"]) == 3 and len(prefs["p1"]) == 5
    assert all(p.chosen.startswith("bad") for p in prefs["p0"])
    assert prefs["p1"][-1] == Preference("my own?", "x", "y")


def test_template_errors_name_the_line(tmp_path):
    path = write_template(PAIRS, ["p0"], 2, tmp_path)
    rows = _read_csv(path)
    rows[1]["preferred"] = "maybe"
    _write_csv(path, rows)
    with pytest.raises(EvaluationError, match=r"preferences_template.csv:3: preferred must be A or B"):
        read_preferences_template(path)
    for r in rows:
        r["preferred"] = ""
    _write_csv(path, rows)
    with pytest.raises(EvaluationError, match="no row has 'preferred' filled"):
        read_preferences_template(path)


def _export(tmp_path, methods=("fspo", "fspo_rat")):
    prefs = {"p0": PAIRS[:3], "p1": PAIRS[3:6]}
    questions = [EvalQuestion(f"new question {i}?", None) for i in range(5)] + [EvalQuestion(PAIRS[0].question, None)]
    users = participant_users(prefs, questions, per_participant=3, max_shots=8, seed=0)
    assert all(PAIRS[0].question not in {q.question for q in u.questions} for u in users)  # never their own
    answers = {(u.user_id, qi, m): f"{m} answer to {q.question}" for u in users for qi, q in enumerate(u.questions)
               for m in (*methods, "base")}
    items, key = build_comparisons(answers, list(methods), "base", users, seed=0)
    return users, items, key, write_comparisons(items, key, tmp_path)


def test_comparisons_are_blind_and_balanced(tmp_path):
    users, items, key, paths = _export(tmp_path)
    assert len(items) == len(key) == 2 * 3 * 2  # participants x questions x methods
    csv_rows = _read_csv(paths["csv"])
    assert [json.loads(line) for line in paths["jsonl"].read_text().splitlines()] == csv_rows  # same items
    assert list(csv_rows[0]) == ["item_id", "participant_id", "question", "response_1", "response_2", "preferred"]
    assert all("method" not in r for r in csv_rows)  # which side is which lives in the key only
    by_id = {k["item_id"]: k for k in key}
    for it in items:
        k = by_id[it["item_id"]]
        shown = it[f"response_{k['method_position']}"]
        assert shown.startswith(k["method"]) and it[f"response_{3 - k['method_position']}"].startswith("base")
    assert {k["method_position"] for k in key} == {1, 2}


def test_score_round_trip_hand_worked(tmp_path, capsys):
    """A participant who always picks fspo_rat and rejects fspo, except for one tie and one blank:
    fspo_rat: 6 items, 5 wins + 1 tie = 5.5/6 = 0.9167, p = P(X >= 5) = (6 + 1)/64;
    fspo: 5 answered losses, 0/5, p = 1."""
    _, items, key, paths = _export(tmp_path)
    by_id = {k["item_id"]: k for k in key}
    rows = _read_csv(paths["csv"])
    tie_done = blank_done = False
    for r in rows:
        k = by_id[r["item_id"]]
        other = 3 - k["method_position"]
        if k["method"] == "fspo_rat" and not tie_done:
            r["preferred"], tie_done = "Tie", True
        elif k["method"] == "fspo" and not blank_done:
            r["preferred"], blank_done = "", True
        else:
            r["preferred"] = str(k["method_position"] if k["method"] == "fspo_rat" else other)
    answers = tmp_path / "filled.csv"
    _write_csv(answers, rows)
    s = score_answers(answers, paths["key"])
    assert s["baseline"] == "base" and s["unanswered"] == 1
    rat, fspo = s["methods"]["fspo_rat"], s["methods"]["fspo"]
    assert rat["win_rate"] == pytest.approx(5.5 / 6) and rat["n"] == 6 and rat["p_value"] == 7 / 64
    assert (rat["wins"], rat["ties"], rat["losses"]) == (5, 1, 0)
    assert fspo["win_rate"] == 0.0 and fspo["n"] == 5 and fspo["p_value"] == 1.0
    # the CLI: same numbers, a table, a JSON file
    assert human_eval_score.main(["--answers", str(answers), "--key", str(paths["key"])]) == 0
    out = capsys.readouterr().out
    assert "| fspo_rat | 91.7 |" in out and "1 items left blank" in out
    assert json.loads((tmp_path / "human_eval_scores.json").read_text()) == s


def test_score_rejects_bad_answers(tmp_path, capsys):
    _, _, _, paths = _export(tmp_path)
    rows = _read_csv(paths["csv"])
    rows[0]["preferred"] = "3"
    bad = tmp_path / "bad.csv"
    _write_csv(bad, rows)
    with pytest.raises(EvaluationError, match=r"bad.csv:2: preferred must be 1, 2 or tie"):
        score_answers(bad, paths["key"])
    rows[0]["preferred"], rows[0]["item_id"] = "1", "deadbeef"
    _write_csv(bad, rows)
    with pytest.raises(EvaluationError, match="item_id 'deadbeef' is not in the key"):
        score_answers(bad, paths["key"])
    assert human_eval_score.main(["--answers", str(tmp_path / "missing.csv"), "--key", str(paths["key"])]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
