"""bench.gpu_shared_prefix in its CPU smoke mode: the work formula by hand, and --queries cases that
hold the same pairs and score them as the concatenated layout does."""

import pytest
import torch

from bench.gpu_shared_prefix import (
    main,
    parse_args,
    regroup,
    single_pairs,
    synthetic_support_sets,
    workload,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tree_workload_by_hand():
    """Prefix 3, one query: question 1, chosen 2, rejected 1.

    tokens 3 + 1 + 2 + 1 = 7, scored 2 + 1 = 3; attended (query, key) pairs: prefix 3*4/2 = 6,
    question 1*3 + 1 = 4, chosen 2*4 + 3 = 11, rejected 1*4 + 1 = 5: 26, the same as the packed
    layout with the question in a 4-token prompt (4*5/2 + 11 + 5).
    """
    tree = [
        {
            "prefix_ids": [1] * 3,
            "queries": [{"question_ids": [1], "chosen_ids": [1] * 2, "rejected_ids": [1]}],
        }
    ]
    packed = [{"prompt_ids": [1] * 4, "chosen_ids": [1] * 2, "rejected_ids": [1]}]
    assert workload(tree, "tree") == {"tokens": 7, "scored_tokens": 3, "attended_pairs": 26}
    assert workload(packed, "shared_prefix") == workload(tree, "tree")
    # A second query (question, chosen, rejected of 1 token each) adds 3 tokens, not the prefix
    # again, and question 1*3 + 1 = 4, chosen 1*4 + 1 = 5, rejected 5: 26 + 14 attended pairs.
    tree[0]["queries"].append({"question_ids": [1], "chosen_ids": [1], "rejected_ids": [1]})
    assert workload(tree, "tree") == {"tokens": 10, "scored_tokens": 5, "attended_pairs": 40}


def test_support_sets_regroup_the_same_pairs():
    args = parse_args(["--tiny", "--device", "cpu", "--queries", "1,2", "--pairs", "4"])
    sets = synthetic_support_sets(args, 2)
    assert [len(s["queries"]) for s in sets] == [2, 2]
    pairs = single_pairs(sets)
    assert pairs[1]["prompt_ids"][: len(sets[0]["prefix_ids"])] == sets[0]["prefix_ids"]
    assert single_pairs(regroup(sets, 1)) == pairs
    assert [len(s["queries"]) for s in regroup(sets, 1)] == [1, 1, 1, 1]
    with pytest.raises(SystemExit):
        parse_args(["--tiny", "--device", "cpu", "--queries", "1,3", "--pairs", "4"])


def test_queries_smoke_on_cpu(capsys):
    result = main(["--tiny", "--device", "cpu", "--queries", "1,2", "--attn", "sdpa"])
    cases = {c["mode"]: c for c in result["cases"]}
    assert list(cases) == ["concatenated", "tree_q1", "tree_q2"]
    assert result["rows"] == {"concatenated": 4, "tree_q1": 2, "tree_q2": 1}
    for case in cases.values():
        assert "error" not in case and case["pairs_per_s"] > 0
        # Every layout scores every pair as the concatenated one does (fp32).
        assert case["max_abs_logp_diff_vs_ref"] <= 1e-4
    assert result["max_abs_ref_logp"] > 10  # real summed log-probs, not zeros
    # Fewer tokens per pair at Q = 2: the tree row encodes the prefix once for both pairs.
    assert cases["tree_q2"]["tokens_per_s"] / cases["tree_q2"]["pairs_per_s"] < (
        cases["tree_q1"]["tokens_per_s"] / cases["tree_q1"]["pairs_per_s"]
    )
    by_q = result["by_queries"]["sdpa"]
    assert set(by_q) == {"1", "2"} and by_q["1"]["speedup_vs_q1"] == 1.0
    assert by_q["2"]["token_bound_vs_q1"] > 1.3
    assert (
        capsys.readouterr().out.strip().splitlines()[-1].startswith('{"bench": "gpu_shared_prefix"')
    )


def test_default_cases_unchanged_on_cpu():
    result = main(["--tiny", "--device", "cpu", "--attn", "sdpa"])
    assert [c["mode"] for c in result["cases"]] == ["concatenated", "shared_prefix"]
    assert result["cases"][1]["max_abs_logp_diff_vs_ref"] <= 1e-4
    assert "by_queries" not in result and set(result["speedup_pairs_per_s"]) == {"sdpa"}
