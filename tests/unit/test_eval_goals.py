"""The issue's claims, measured on paired pair scores: hand-worked differences and verdicts."""

import pytest

from fspo_ray.evaluation.goals import (
    compare_markdown,
    evaluate_goals,
    goals_markdown,
    paired,
)
from fspo_ray.evaluation.plan import Cell


def test_paired_difference_by_hand():
    """d = [.5, 0, 0, .5]: mean .25; sd = sqrt(4 * .0625 / 3) = .288675;
    half = 1.959964 * .288675 / sqrt(4) = .282896 -> [-.0329, .5329]."""
    d = paired(_keyed([1, 0.75, 0.5, 1]), _keyed([0.5, 0.75, 0.5, 0.5]))
    assert d["mean"] == 0.25 and d["n"] == 4
    assert d["ci95"] == pytest.approx([-0.032896, 0.532896], abs=1e-6)
    assert paired({"u": 1.0}, {"u": 0.5})["ci95"] == [0.5, 0.5]
    assert paired({"u": 1.0, "v": 0.0}, {"v": 0.5, "w": 1.0})["n"] == 1  # only the comparisons both have
    with pytest.raises(ValueError, match="no comparison in common"):
        paired({"u": 1.0}, {})


def _keyed(scores):
    return {("user", i): s for i, s in enumerate(scores)}


def _scores():
    h = "held_out"
    return {c: _keyed(v) for c, v in {
        Cell("few_shot", h, 8): [0.5, 0.5, 0.5, 0.5],
        Cell("pref_ft", h, 8): [0.5, 0.75, 0.5, 0.5],
        Cell("fspo", h, 8): [1.0, 0.75, 1.0, 0.75],
        Cell("fspo_rat", h, 8): [0.75, 0.75, 0.75, 0.75],
        Cell("oracle", h, 8): [1.0, 1.0, 1.0, 1.0],
        Cell("fspo", h, 2): [0.5, 0.5, 0.75, 0.5],
        Cell("fspo", h, 4): [0.75, 0.5, 0.75, 0.75],
        Cell("fspo_rat", h, 2): [0.75, 0.75, 0.75, 0.75],
        Cell("fspo_rat", h, 4): [1.0, 1.0, 1.0, 1.0],
        Cell("ipo", h, 8): [0.75, 0.75, 0.75, 0.75],
    }.items()}


def test_claims_hold_or_not_with_margins():
    goals = evaluate_goals(_scores(), split="held_out", num_shots=8, shots=[2, 4, 8], sweep_split="held_out",
                           methods=["few_shot", "pref_ft", "ipo", "fspo", "fspo_rat", "oracle"])
    by = {g["claim"]: g for g in goals}
    g = by["fspo beats few_shot on held-out users"]
    assert g["holds"] and g["significant"] and g["difference"]["mean"] == 0.375  # 0.875 - 0.5
    assert g["meets_target"] and g["target"] == 0.08
    g = by["fspo beats pref_ft on held-out users"]
    assert g["holds"] and g["difference"]["mean"] == pytest.approx(0.3125)
    g = by["fspo beats ipo on held-out users"]  # +12.5 points, but the interval [-0.04, 0.29] reaches below 0
    assert g["holds"] and g["difference"]["mean"] == 0.125 and not g["meets_target"]
    g = by["fspo_rat beats fspo on held-out users"]
    assert g["holds"] is False and g["difference"]["mean"] == -0.125  # missed by 12.5 points
    g = by["oracle is the ceiling on held-out users"]
    assert g["holds"] and g["best_other"] == "fspo" and g["margin"] == 0.125
    g = by["fspo win rate rises with the number of shots (held-out users)"]
    assert g["holds"] and g["monotone"] and g["by_shots"] == {"2": 0.5625, "4": 0.6875, "8": 0.875}
    g = by["fspo_rat win rate rises with the number of shots (held-out users)"]
    assert g["holds"] is False and not g["monotone"]  # 0.75 -> 1.0 -> 0.75
    md = "\n".join(goals_markdown(goals))
    assert "| fspo_rat beats fspo on held-out users | **no** | 75.0 vs 87.5 | -12.5 [" in md
    assert "N=2: 56.2 -> N=4: 68.8 -> N=8: 87.5" in md


def test_missing_methods_are_not_measured_and_runs_compare():
    scores = {c: v for c, v in _scores().items() if c.method not in ("oracle", "fspo_rat")}
    goals = evaluate_goals(scores, split="held_out", num_shots=8, shots=[2, 8], sweep_split="held_out",
                           methods=["few_shot", "pref_ft", "fspo"])
    by = {g["claim"]: g for g in goals}
    assert by["fspo_rat beats fspo on held-out users"] == {
        "claim": "fspo_rat beats fspo on held-out users", "holds": None, "why": "not measured: fspo_rat not evaluated"}
    assert by["oracle is the ceiling on held-out users"]["holds"] is None
    table = compare_markdown({"seed0": {"goals": goals}, "seed1": {"goals": goals[:1]}})
    assert "| Claim | seed0 | seed1 |" in table
    assert "| fspo beats few_shot on held-out users | yes (+37.5 pp) | yes (+37.5 pp) |" in table
    assert "| fspo beats pref_ft on held-out users | yes (+31.2 pp) | n/a |" in table
