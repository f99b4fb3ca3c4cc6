"""Collators on a literal two-example batch: the exact tensors of both layouts and the mask."""

import pytest
import torch

from fspo_ray.collate import (
    build_shared_prefix_block_mask,
    build_shared_prefix_mask,
    collate_concatenated,
    collate_packed,
    collator_for,
    flex_attention_available,
)

PAD = 0
X = -100  # IGNORE_INDEX

EXAMPLES = [
    {"prompt_ids": [11, 12, 13], "chosen_ids": [21, 22], "rejected_ids": [31],
     "ref_chosen_logps": -1.5, "ref_rejected_logps": -2.0},
    {"prompt_ids": [14], "chosen_ids": [23], "rejected_ids": [32, 33, 34],
     "ref_chosen_logps": -0.5, "ref_rejected_logps": -3.0},
]  # fmt: skip


def test_collate_concatenated_exact_tensors():
    batch = collate_concatenated(EXAMPLES, pad_token_id=PAD)
    # Rows: prompt+chosen of each example, then prompt+rejected of each; right-padded to 5.
    assert batch["input_ids"].tolist() == [
        [11, 12, 13, 21, 22],
        [14, 23, PAD, PAD, PAD],
        [11, 12, 13, 31, PAD],
        [14, 32, 33, 34, PAD],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ]
    assert batch["labels"].tolist() == [
        [X, X, X, 21, 22],
        [X, 23, X, X, X],
        [X, X, X, 31, X],
        [X, 32, 33, 34, X],
    ]
    torch.testing.assert_close(batch["ref_chosen_logps"], torch.tensor([-1.5, -0.5]))
    torch.testing.assert_close(batch["ref_rejected_logps"], torch.tensor([-2.0, -3.0]))


def test_collate_packed_exact_tensors():
    batch = collate_packed(EXAMPLES, pad_token_id=PAD)
    assert batch["input_ids"].tolist() == [
        [11, 12, 13, 21, 22, 31],
        [14, 23, 32, 33, 34, PAD],
    ]
    # Rejected positions restart at len(prompt): 3 in row 0, 1 in row 1.
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 3],
        [0, 1, 1, 2, 3, 0],
    ]
    assert batch["segment_ids"].tolist() == [
        [1, 1, 1, 2, 2, 3],
        [1, 2, 3, 3, 3, 0],
    ]
    # Next-token targets: the last prompt token (position 2, then 0) predicts the first token
    # of both completions.
    assert batch["chosen_targets"].tolist() == [
        [X, X, 21, 22, X, X],
        [23, X, X, X, X, X],
    ]
    assert batch["rejected_targets"].tolist() == [
        [X, X, 31, X, X, X],
        [32, X, 33, 34, X, X],
    ]
    torch.testing.assert_close(batch["ref_chosen_logps"], torch.tensor([-1.5, -0.5]))


def test_shared_prefix_mask_exact_matrix():
    segment_ids = collate_packed(EXAMPLES, pad_token_id=PAD)["segment_ids"]
    mask = build_shared_prefix_mask(segment_ids)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    expected = [
        # row 0, segments P P P C C R: rejected (q5) sees the prompt and itself, not chosen.
        [[1, 0, 0, 0, 0, 0],
         [1, 1, 0, 0, 0, 0],
         [1, 1, 1, 0, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 1, 0],
         [1, 1, 1, 0, 0, 1]],
        # row 1, segments P C R R R pad: the padding query sees only itself.
        [[1, 0, 0, 0, 0, 0],
         [1, 1, 0, 0, 0, 0],
         [1, 0, 1, 0, 0, 0],
         [1, 0, 1, 1, 0, 0],
         [1, 0, 1, 1, 1, 0],
         [0, 0, 0, 0, 0, 1]],
    ]  # fmt: skip
    assert mask[:, 0].int().tolist() == expected


def test_additive_mask_matches_boolean_mask():
    segment_ids = collate_packed(EXAMPLES, pad_token_id=PAD)["segment_ids"]
    allowed = build_shared_prefix_mask(segment_ids)
    additive = build_shared_prefix_mask(segment_ids, dtype=torch.bfloat16)
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive == 0, allowed)
    assert torch.all(additive[~allowed] == torch.finfo(torch.bfloat16).min)


@pytest.mark.skipif(not flex_attention_available(), reason="torch without flex_attention")
def test_block_mask_has_the_same_rule_as_the_dense_mask():
    from torch.nn.attention.flex_attention import create_mask

    segment_ids = collate_packed(EXAMPLES, pad_token_id=PAD)["segment_ids"]
    block_mask = build_shared_prefix_block_mask(segment_ids)
    assert block_mask.shape == (2, 1, 6, 6)
    dense = create_mask(block_mask.mask_mod, 2, 1, 6, 6, device="cpu")  # (B, 1, T, T)
    assert torch.equal(dense, build_shared_prefix_mask(segment_ids))


def test_pad_to_multiple_of_rounds_the_row_length_up():
    concatenated = collate_concatenated(EXAMPLES, pad_token_id=PAD, pad_to_multiple_of=4)
    packed = collate_packed(EXAMPLES, pad_token_id=PAD, pad_to_multiple_of=4)
    assert concatenated["input_ids"].shape == (4, 8)  # 5 rounded up
    assert packed["input_ids"].shape == (2, 8)  # 6 rounded up
    assert packed["segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 3, 0, 0]
    assert concatenated["labels"][:, 5:].eq(X).all()


def test_ref_logps_on_some_examples_only_is_an_error():
    mixed = [EXAMPLES[0], {k: EXAMPLES[1][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}]
    with pytest.raises(ValueError, match="some examples carry"):
        collate_packed(mixed, pad_token_id=PAD)
    no_ref = collate_concatenated(mixed[1:], pad_token_id=PAD)
    assert "ref_chosen_logps" not in no_ref


def test_empty_completion_is_an_error():
    with pytest.raises(ValueError, match="empty 'rejected_ids'"):
        collate_packed([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": []}], PAD)


def test_collator_for_unknown_mode():
    assert collator_for("shared_prefix") is collate_packed
    with pytest.raises(ValueError, match="unknown forward mode 'packed'; expected one of"):
        collator_for("packed")
