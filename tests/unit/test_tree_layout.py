"""Multi-query (tree) layout: one support set encoded once, Q held-out pairs scored against it.

Every query's summed completion log-probs must equal scoring that query alone (prefix +
question + completion as one plain sequence), to 1e-5 in fp32, with padding and with
queries of different lengths; and the mask must hide other queries and the sibling
completion.
"""

import pytest
import torch

from fspo_ray.collate import (
    IGNORE_INDEX,
    PAD_SEGMENT,
    TREE_PREFIX_SEGMENT,
    build_tree_mask,
    collate_concatenated,
    collate_packed,
    collate_tree,
    tree_segment,
)
from fspo_ray.forward import concatenated_forward, shared_prefix_forward, tree_forward
from tests.unit.test_shared_prefix import PAD, tiny_llama

ATOL = 1e-5


def literal_batch() -> list[dict]:
    """Two support sets: 3 queries on a 4-token prefix, 1 query on a 2-token prefix."""
    return [
        {"prefix_ids": [5, 6, 7, 8], "queries": [
            {"question_ids": [9, 10], "chosen_ids": [11, 12], "rejected_ids": [13]},
            {"question_ids": [14], "chosen_ids": [15], "rejected_ids": [16, 17, 18]},
            {"question_ids": [19, 20, 21], "chosen_ids": [22, 23, 24], "rejected_ids": [25, 26]},
        ]},
        {"prefix_ids": [30, 31], "queries": [
            {"question_ids": [32], "chosen_ids": [33, 34], "rejected_ids": [35, 36]},
        ]},
    ]  # fmt: skip


def test_collate_tree_literal_positions_segments_and_targets():
    b = collate_tree(literal_batch(), PAD)
    row = b["input_ids"][0].tolist()
    assert row == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]
    # positions restart after the prefix for every query; rejected restarts after the question
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 6, 4, 5, 5, 6, 7, 4, 5, 6, 7, 8, 9, 7, 8]
    s = lambda j, r: tree_segment(j, r)  # noqa: E731
    assert b["segment_ids"][0].tolist() == [1] * 4 + [s(0, 0)] * 2 + [s(0, 1)] * 2 + [s(0, 2)] + [s(1, 0)] + [
        s(1, 1)] + [s(1, 2)] * 3 + [s(2, 0)] * 3 + [s(2, 1)] * 3 + [s(2, 2)] * 2
    # row 1 is padded to the longer row
    assert b["segment_ids"][1].tolist()[9:] == [PAD_SEGMENT] * 13
    ct, cp = b["chosen_targets"][0].tolist(), b["chosen_pair"][0].tolist()
    # query 0: chosen [11, 12] predicted at the last question token (5) and at 6
    assert ct[5:7] == [11, 12] and cp[5:7] == [0, 0]
    rt, rp = b["rejected_targets"][0].tolist(), b["rejected_pair"][0].tolist()
    # query 1: rejected [16, 17, 18] predicted at its question token (9) and at 11, 12
    assert rt[9] == 16 and rt[11:13] == [17, 18] and rp[9] == rp[11] == rp[12] == 1
    assert b["chosen_pair"][1].tolist()[2:4] == [3, 3]  # the second row's only pair is pair 3
    assert sum(t != IGNORE_INDEX for t in ct) == 2 + 1 + 3


def test_tree_mask_hides_other_queries_and_the_sibling_completion():
    b = collate_tree(literal_batch(), PAD)
    m = build_tree_mask(b["segment_ids"])[0, 0]  # (T, T)
    # query 1's rejected token (position 11) sees the prefix, its question, itself; nothing of query 0
    assert m[11].nonzero().flatten().tolist() == [0, 1, 2, 3, 9, 11]
    # query 2's first chosen token (17) sees the prefix and its own question only
    assert m[17].nonzero().flatten().tolist() == [0, 1, 2, 3, 14, 15, 16, 17]
    assert m[1, 2].item() is False  # causal inside the prefix
    assert TREE_PREFIX_SEGMENT == 1


def _alone(prefix, q):
    """The query scored alone in the plain concatenated layout: prompt = prefix + question."""
    return {"prompt_ids": prefix + q["question_ids"], "chosen_ids": q["chosen_ids"], "rejected_ids": q["rejected_ids"]}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_every_query_scores_as_if_alone(attn):
    model = tiny_llama(attn).eval()
    examples = literal_batch()
    with torch.no_grad():
        tree = tree_forward(model, collate_tree(examples, PAD, pad_to_multiple_of=8))
        alone = [_alone(e["prefix_ids"], q) for e in examples for q in e["queries"]]
        plain = concatenated_forward(model, collate_concatenated(alone, PAD))
    torch.testing.assert_close(tree.chosen_logps, plain.chosen_logps, atol=ATOL, rtol=0)
    torch.testing.assert_close(tree.rejected_logps, plain.rejected_logps, atol=ATOL, rtol=0)
    assert tree.chosen_tokens.tolist() == [2, 1, 3, 2] and tree.rejected_tokens.tolist() == [1, 3, 2, 2]


def test_single_query_with_empty_question_is_the_shared_prefix_layout():
    model = tiny_llama("sdpa").eval()
    packed = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]},
              {"prompt_ids": [11], "chosen_ids": [12], "rejected_ids": [13, 14, 15]}]
    tree = [{"prefix_ids": e["prompt_ids"], "queries": [
        {"question_ids": [], "chosen_ids": e["chosen_ids"], "rejected_ids": e["rejected_ids"]}]} for e in packed]
    with torch.no_grad():
        a = shared_prefix_forward(model, collate_packed(packed, PAD))
        b = tree_forward(model, collate_tree(tree, PAD))
    torch.testing.assert_close(a.chosen_logps, b.chosen_logps, atol=ATOL, rtol=0)
    torch.testing.assert_close(a.rejected_logps, b.rejected_logps, atol=ATOL, rtol=0)


def test_tree_gradients_match_scoring_alone():
    """The loss over all queries of a support set has the gradients of the same loss over the
    queries scored one by one (the prefix's activations are shared, not approximated)."""
    examples = literal_batch()
    alone = [_alone(e["prefix_ids"], q) for e in examples for q in e["queries"]]
    grads = []
    for build in (lambda m: tree_forward(m, collate_tree(examples, PAD)),
                  lambda m: concatenated_forward(m, collate_concatenated(alone, PAD))):
        model = tiny_llama("sdpa")
        out = build(model)
        (out.chosen_logps - 0.5 * out.rejected_logps).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_collate_tree_rejects_bad_examples():
    with pytest.raises(ValueError, match="no queries"):
        collate_tree([{"prefix_ids": [1], "queries": []}], PAD)
    with pytest.raises(ValueError, match="empty completion"):
        collate_tree([{"prefix_ids": [1], "queries": [{"question_ids": [2], "chosen_ids": [], "rejected_ids": [3]}]}], PAD)
    with pytest.raises(ValueError, match="only a single query"):
        q = {"question_ids": [], "chosen_ids": [2], "rejected_ids": [3]}
        collate_tree([{"prefix_ids": [1], "queries": [q, q]}], PAD)
    with pytest.raises(ValueError, match="carry ref_chosen_logps"):
        q = {"question_ids": [2], "chosen_ids": [2], "rejected_ids": [3]}
        collate_tree([{"prefix_ids": [1], "queries": [q, {**q, "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0}]}], PAD)


def test_tree_block_mask_has_the_same_rule_as_the_dense_mask():
    from fspo_ray.collate import build_tree_block_mask, flex_attention_available

    if not flex_attention_available():
        pytest.skip("torch without flex_attention")
    from torch.nn.attention.flex_attention import create_mask

    segment_ids = collate_tree(literal_batch(), PAD)["segment_ids"]  # (2, 22)
    block = build_tree_block_mask(segment_ids)
    dense = create_mask(block.mask_mod, 2, 1, 22, 22, device="cpu")  # (B, 1, T, T)
    assert torch.equal(dense, build_tree_mask(segment_ids))
