"""Win-rate statistics worked by hand: Wilson interval, exact binomial p-value, ties as half."""

import pytest

from fspo_ray.evaluation.stats import binomial_p_value, vote, wilson_interval, win_rate


def test_wilson_interval_8_of_10():
    """p = 0.8, n = 10, z = 1.96 (z^2 = 3.8415):
    denom = 1 + 3.8415/10 = 1.38415
    center = (0.8 + 3.8415/20) / 1.38415 = 0.99207 / 1.38415 = 0.71674
    half = 1.96 * sqrt(0.8*0.2/10 + 3.8415/400) / 1.38415 = 1.96 * sqrt(0.0256036) / 1.38415 = 0.22658
    -> (0.49016, 0.94331)"""
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-5)
    assert hi == pytest.approx(0.94331, abs=1e-5)


def test_wilson_interval_edges_stay_in_unit_range():
    """0 of 5: center = (z^2/10)/(1 + z^2/5) = half, so the lower bound is exactly 0; the
    upper is z^2/5 / (1 + z^2/5) = 0.76830/1.76830 = 0.43449. n of n mirrors it."""
    lo, hi = wilson_interval(0, 5)
    assert lo == pytest.approx(0.0, abs=1e-12)
    assert hi == pytest.approx(0.43449, abs=1e-5)
    lo, hi = wilson_interval(5, 5)
    assert (lo, hi) == pytest.approx((1 - 0.43449, 1.0), abs=1e-5)
    lo, hi = wilson_interval(2.5, 5)  # a fractional count from ties is fine
    assert lo + hi == pytest.approx(1.0)  # symmetric around 0.5


def test_binomial_p_value_exact():
    """P(X >= 8), X ~ Bin(10, 1/2) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = (45 + 10 + 1)/1024."""
    assert binomial_p_value(8, 10) == 56 / 1024
    assert binomial_p_value(10, 10) == 1 / 1024
    assert binomial_p_value(0, 10) == 1.0
    assert binomial_p_value(5, 10) == (252 + 210 + 120 + 45 + 10 + 1) / 1024  # 638/1024 = 0.623
    # a fractional count (ties) rounds down: conservative
    assert binomial_p_value(8.75, 10) == binomial_p_value(8, 10)
    # large n stays exact (Python ints): P(X >= 600) of Bin(1000, 1/2) is about 1.4e-10
    assert 1e-10 < binomial_p_value(600, 1000) < 2e-10


def test_vote_maps_labels_to_the_method_side():
    assert vote("A", "A") == 1.0 and vote("B", "A") == 0.0
    assert vote("B", "B") == 1.0 and vote("A", "B") == 0.0
    assert vote("tie", "A") == vote("tie", "B") == 0.5
    with pytest.raises(ValueError, match="unknown judge label"):
        vote("C", "A")


def test_win_rate_pairs_ties_half():
    """Four pairs judged in both orders: (1, 1) -> 1, (1, .5) -> .75, (0, 0) -> 0, (.5, .5) -> .5.
    s = 2.25 of n = 4 pairs: win rate 0.5625; p = P(X >= 2) = (6 + 4 + 1)/16 = 11/16;
    judgments: 3 wins, 3 ties, 2 losses."""
    r = win_rate([(1.0, 1.0), (1.0, 0.5), (0.0, 0.0), (0.5, 0.5)])
    assert r.win_rate == 0.5625
    assert r.n == 4 and r.judgments == 8
    assert (r.wins, r.ties, r.losses) == (3, 3, 2)
    assert r.p_value == 11 / 16
    assert r.ci95 == wilson_interval(2.25, 4)
    assert r.ci95[0] < r.win_rate < r.ci95[1]
    d = r.to_dict()
    assert d["ci95"] == list(r.ci95) and d["win_rate"] == 0.5625


def test_win_rate_single_judgment_items():
    """Human items are judged once: (1,), (1,), (0.5,), (0,) -> s = 2.5 of 4."""
    r = win_rate([(1.0,), (1.0,), (0.5,), (0.0,)])
    assert r.win_rate == 0.625 and r.n == 4 and r.judgments == 4
    assert r.p_value == binomial_p_value(2, 4) == 11 / 16


def test_win_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="no comparisons"):
        win_rate([])
    with pytest.raises(ValueError, match="votes must be"):
        win_rate([(0.3, 1.0)])
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes must be in"):
        binomial_p_value(11, 10)


def test_paired_difference_hand_worked():
    from fspo_ray.evaluation.stats import paired_difference

    # differences 1, 0, 0.5, 0.5: mean 0.5, sample variance (0.25 + 0.25 + 0 + 0) / 3 = 1/6,
    # standard error sqrt(1/6 / 4) = 0.2041; half width 1.96 * 0.2041 = 0.4001
    d, (lo, hi) = paired_difference([1.0, 0.5, 1.0, 0.75], [0.0, 0.5, 0.5, 0.25])
    assert d == pytest.approx(0.5)
    assert lo == pytest.approx(0.5 - 0.40008, abs=1e-4) and hi == pytest.approx(0.5 + 0.40008, abs=1e-4)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 0.0])


def test_method_differences_table_is_antisymmetric():
    from fspo_ray.evaluation.report import difference_lines, method_differences

    keyed = lambda xs: dict(enumerate(xs))  # noqa: E731
    diffs = method_differences({"fspo": keyed([1.0, 1.0, 0.5, 0.75]), "ipo": keyed([0.5, 0.25, 0.5, 0.5])}, "held_out")
    assert diffs["diff"]["fspo"]["ipo"] == pytest.approx(0.375) == -diffs["diff"]["ipo"]["fspo"]
    lo, hi = diffs["diff_ci95"]["fspo"]["ipo"]
    assert 0 < lo < 0.375 < hi
    assert any("+37.5" in line for line in difference_lines(diffs))


def test_method_differences_pair_only_the_comparisons_both_methods_have():
    from fspo_ray.evaluation.report import method_differences

    diffs = method_differences({"a": {"u1": 1.0, "u2": 0.5, "u3": 1.0}, "b": {"u2": 0.5, "u3": 0.0}}, "held_out")
    assert diffs["diff_n"]["a"]["b"] == 2 and diffs["diff"]["a"]["b"] == pytest.approx(0.5)  # (0 + 1) / 2
