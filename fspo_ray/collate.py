"""Batch layouts for preference pairs: plain DPO concatenation and shared-prefix packing.

Shared-prefix packing puts prompt + chosen + rejected in one row, so a long few-shot prompt
goes through the model once per pair instead of twice; a 4D mask keeps the two completions
blind to each other, and position ids let the rejected completion continue the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100

# Segment ids of the packed layout, one per token.
PAD_SEGMENT, PROMPT_SEGMENT, CHOSEN_SEGMENT, REJECTED_SEGMENT = 0, 1, 2, 3

REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")

FORWARD_MODES = ("concatenated", "shared_prefix")

Example = Mapping[str, Any]


def _check_examples(examples: Sequence[Example]) -> None:
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    for i, example in enumerate(examples):
        # The last prompt token predicts the first completion token, so none may be empty.
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            if len(example[key]) == 0:
                raise ValueError(f"example {i} has an empty {key!r}")


def _padded_length(length: int, pad_to_multiple_of: int | None) -> int:
    """Round the row length up, e.g. to 16 so SDPA's fused kernels take the mask unpadded."""
    if not pad_to_multiple_of:
        return length
    return -(-length // pad_to_multiple_of) * pad_to_multiple_of


def _ref_logps(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """The reference log-probs as (B,) float tensors, when every example carries them."""
    present = [all(key in example for key in REF_KEYS) for example in examples]
    if not any(present):
        return {}
    if not all(present):
        raise ValueError(f"some examples carry {REF_KEYS} and some do not; collate them apart")
    return {
        key: torch.tensor([float(example[key]) for example in examples], dtype=torch.float32)
        for key in REF_KEYS
    }


def collate_concatenated(
    examples: Sequence[Example], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """The plain DPO layout: 2B rows, prompt+chosen for each example, then prompt+rejected.

    `labels` follow the Hugging Face convention (the token id at its own position, -100 on
    prompt and padding); the forward shifts them by one. Rows are right-padded.
    """
    _check_examples(examples)
    prompts = [list(example["prompt_ids"]) for example in examples]
    completions = [list(e["chosen_ids"]) for e in examples] + [
        list(e["rejected_ids"]) for e in examples
    ]
    prompts = prompts + prompts
    length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    length = _padded_length(length, pad_to_multiple_of)

    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)  # (2B, T)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)  # (2B, T)
    labels = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)  # (2B, T)
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        end = len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor(prompt + completion)
        attention_mask[row, :end] = 1
        labels[row, len(prompt) : end] = torch.tensor(completion)

    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    batch.update(_ref_logps(examples))
    return batch


def collate_packed(
    examples: Sequence[Example], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """The shared-prefix layout: one row per pair, prompt + chosen + rejected, right-padded.

    `position_ids` restart at len(prompt) for the rejected segment, as if chosen were absent.
    `chosen_targets` / `rejected_targets` are next-token targets, already shifted: entry t is
    the token that the logits at position t must predict, -100 elsewhere. Shifted targets are
    needed because the first rejected token is predicted from the last prompt token, not from
    its left neighbour in the row (the last chosen token); so both tensors hold a target at
    position len(prompt) - 1. `segment_ids` (0 pad, 1 prompt, 2 chosen, 3 rejected) is all that
    `build_shared_prefix_mask` needs.
    """
    _check_examples(examples)
    rows = len(examples)
    length = max(
        len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples
    )
    length = _padded_length(length, pad_to_multiple_of)
    input_ids = torch.full((rows, length), pad_token_id, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((rows, length), dtype=torch.long)  # (B, T)
    segment_ids = torch.full((rows, length), PAD_SEGMENT, dtype=torch.long)  # (B, T)
    chosen_targets = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    rejected_targets = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)  # (B, T)

    for row, example in enumerate(examples):
        prompt, chosen, rejected = (
            example["prompt_ids"],
            example["chosen_ids"],
            example["rejected_ids"],
        )
        p, c, r = len(prompt), len(chosen), len(rejected)
        input_ids[row, : p + c + r] = torch.tensor(list(prompt) + list(chosen) + list(rejected))
        position_ids[row, : p + c] = torch.arange(p + c)
        position_ids[row, p + c : p + c + r] = torch.arange(p, p + r)
        segment_ids[row, :p] = PROMPT_SEGMENT
        segment_ids[row, p : p + c] = CHOSEN_SEGMENT
        segment_ids[row, p + c : p + c + r] = REJECTED_SEGMENT
        # chosen[i] is predicted at position p - 1 + i.
        chosen_targets[row, p - 1 : p - 1 + c] = torch.tensor(list(chosen))
        # rejected[0] is predicted from the last prompt token, rejected[j] from rejected[j - 1].
        rejected_targets[row, p - 1] = rejected[0]
        rejected_targets[row, p + c : p + c + r - 1] = torch.tensor(
            list(rejected[1:]), dtype=torch.long
        )

    batch = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "chosen_targets": chosen_targets,
        "rejected_targets": rejected_targets,
    }
    batch.update(_ref_logps(examples))
    return batch


def shared_prefix_allowed(seg_q, seg_kv, q_idx, kv_idx):
    """Whether a query may attend to a key; the one rule behind the dense and the flex masks.

    Causal by row index; completions never see each other; everyone sees the prompt; padding
    is invisible, and a padding query sees only itself, so no query row is fully masked (a
    fully masked row turns into NaN in SDPA, and NaN reaches the gradients).
    """
    causal = kv_idx <= q_idx
    crossed = ((seg_q == CHOSEN_SEGMENT) & (seg_kv == REJECTED_SEGMENT)) | (
        (seg_q == REJECTED_SEGMENT) & (seg_kv == CHOSEN_SEGMENT)
    )
    real = (seg_q != PAD_SEGMENT) & (seg_kv != PAD_SEGMENT)
    padding_self = (seg_q == PAD_SEGMENT) & (kv_idx == q_idx)
    return (causal & real & ~crossed) | padding_self


def dense_mask(allowed_fn, segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense (B, 1, T, T) mask of a layout's attention rule `allowed_fn(seg_q, seg_kv, q_idx, kv_idx)`.

    With `dtype=None` it is boolean, True = attend (what SDPA takes). With a float dtype it is
    additive, 0 = attend and the dtype's minimum = masked (what eager attention needs: it adds
    the mask to the scores, so a boolean mask there would be silently wrong).
    """
    length = segment_ids.shape[1]
    positions = torch.arange(length, device=segment_ids.device)
    allowed = allowed_fn(
        segment_ids[:, :, None],  # (B, T, 1) queries
        segment_ids[:, None, :],  # (B, 1, T) keys
        positions[:, None],  # (T, 1)
        positions[None, :],  # (1, T)
    )[:, None]  # (B, 1, T, T)
    if dtype is None:
        return allowed
    additive = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)  # (B, 1, T, T)


def build_shared_prefix_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense (B, 1, T, T) mask for the packed layout (see `dense_mask`)."""
    return dense_mask(shared_prefix_allowed, segment_ids, dtype)


def flex_attention_available() -> bool:
    """Whether this torch ships flex_attention (torch >= 2.5); running it needs torch.compile."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def block_mask(allowed_fn, segment_ids: torch.Tensor):
    """A layout's attention rule as a flex_attention BlockMask, which skips fully masked blocks (GPU path)."""
    if not flex_attention_available():
        raise RuntimeError("flex_attention needs torch >= 2.5; use sdpa or eager attention")
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segment_ids.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed_fn(segment_ids[b, q_idx], segment_ids[b, kv_idx], q_idx, kv_idx)

    return create_block_mask(mask_mod, batch, None, length, length, device=segment_ids.device)


def build_shared_prefix_block_mask(segment_ids: torch.Tensor):
    """The packed layout's mask as a flex_attention BlockMask."""
    return block_mask(shared_prefix_allowed, segment_ids)


def collator_for(mode: str) -> Callable[[Sequence[Example], int], dict[str, torch.Tensor]]:
    """The collate function of a forward mode ("concatenated" or "shared_prefix")."""
    if mode == "concatenated":
        return collate_concatenated
    elif mode == "shared_prefix":
        return collate_packed
    raise ValueError(f"unknown forward mode {mode!r}; expected one of {FORWARD_MODES}")


# --------------------------------------------------------------------------- multi-query (tree) layout

# Segment ids of the tree layout: 0 pad, 1 prefix, then three per query j:
# 2 + 3j its question block, 3 + 3j its chosen completion, 4 + 3j its rejected completion.
TREE_PREFIX_SEGMENT = 1


def tree_segment(query: int, role: int) -> int:
    """Segment id of query `query`'s block `role` (0 question, 1 chosen, 2 rejected)."""
    return 2 + 3 * query + role


def collate_tree(
    examples: Sequence[Example], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """The multi-query layout: one row per support set, `prefix + Q x (question, chosen, rejected)`.

    An example is `{"prefix_ids", "queries": [{"question_ids", "chosen_ids", "rejected_ids"
    [, "ref_chosen_logps", "ref_rejected_logps"]}, ...]}`. Each query's blocks see the prefix
    and their own question only (`tree_allowed`), and their positions restart after the prefix,
    so every pair is scored exactly as it would be alone. Pairs are numbered example-major;
    `chosen_pair` / `rejected_pair` hold, at each scored position, the pair whose completion
    token the logits there predict (-1 elsewhere). Q = 1 with the question in the prefix and an
    empty question block is the shared-prefix layout of `collate_packed`.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    for i, e in enumerate(examples):
        if len(e["prefix_ids"]) == 0:
            raise ValueError(f"example {i} has an empty 'prefix_ids'")
        if not e["queries"]:
            raise ValueError(f"example {i} has no queries")
        for j, q in enumerate(e["queries"]):
            if len(q["chosen_ids"]) == 0 or len(q["rejected_ids"]) == 0:
                raise ValueError(f"example {i} query {j} has an empty completion")
    rows = len(examples)
    length = max(
        len(e["prefix_ids"])
        + sum(len(q["question_ids"]) + len(q["chosen_ids"]) + len(q["rejected_ids"]) for q in e["queries"])
        for e in examples
    )
    length = _padded_length(length, pad_to_multiple_of)
    input_ids = torch.full((rows, length), pad_token_id, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((rows, length), dtype=torch.long)  # (B, T)
    segment_ids = torch.full((rows, length), PAD_SEGMENT, dtype=torch.long)  # (B, T)
    chosen_targets = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    rejected_targets = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    chosen_pair = torch.full((rows, length), -1, dtype=torch.long)  # (B, T)
    rejected_pair = torch.full((rows, length), -1, dtype=torch.long)  # (B, T)
    ref = {key: [] for key in REF_KEYS}
    pair = 0
    for row, e in enumerate(examples):
        prefix = list(e["prefix_ids"])
        p = len(prefix)
        input_ids[row, :p] = torch.tensor(prefix)
        position_ids[row, :p] = torch.arange(p)
        segment_ids[row, :p] = TREE_PREFIX_SEGMENT
        at = p
        for j, q in enumerate(e["queries"]):
            question, chosen, rejected = list(q["question_ids"]), list(q["chosen_ids"]), list(q["rejected_ids"])
            n_q, c, r = len(question), len(chosen), len(rejected)
            # Both completions are predicted first from the last token before them: the
            # question's last token, or the prefix's when the question block is empty.
            last = at + n_q - 1 if n_q else p - 1
            if not n_q and j:
                raise ValueError(f"example {row} query {j}: only a single query may have an empty question")
            block = question + chosen + rejected
            input_ids[row, at : at + len(block)] = torch.tensor(block)
            position_ids[row, at : at + n_q + c] = torch.arange(p, p + n_q + c)
            position_ids[row, at + n_q + c : at + n_q + c + r] = torch.arange(p + n_q, p + n_q + r)
            segment_ids[row, at : at + n_q] = tree_segment(j, 0)
            segment_ids[row, at + n_q : at + n_q + c] = tree_segment(j, 1)
            segment_ids[row, at + n_q + c : at + n_q + c + r] = tree_segment(j, 2)
            cs = at + n_q  # first chosen position
            rs = cs + c  # first rejected position
            chosen_targets[row, last] = chosen[0]
            chosen_targets[row, cs : cs + c - 1] = torch.tensor(chosen[1:], dtype=torch.long)
            chosen_pair[row, last] = pair
            chosen_pair[row, cs : cs + c - 1] = pair
            rejected_targets[row, last] = rejected[0]
            rejected_targets[row, rs : rs + r - 1] = torch.tensor(rejected[1:], dtype=torch.long)
            rejected_pair[row, last] = pair
            rejected_pair[row, rs : rs + r - 1] = pair
            for key in REF_KEYS:
                if key in q:
                    ref[key].append(float(q[key]))
            at += len(block)
            pair += 1
    batch = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "chosen_targets": chosen_targets,
        "rejected_targets": rejected_targets,
        "chosen_pair": chosen_pair,
        "rejected_pair": rejected_pair,
    }
    for key, values in ref.items():
        if values and len(values) != pair:
            raise ValueError(f"some queries carry {key} and some do not; collate them apart")
        if values:
            batch[key] = torch.tensor(values, dtype=torch.float32)  # (P,)
    return batch


def tree_allowed(seg_q, seg_kv, q_idx, kv_idx):
    """The tree layout's attention rule: causal; the prefix is seen by all; a query block sees
    its own question and itself, never another query or its sibling completion; padding only
    itself (no fully masked row, which would be NaN in SDPA)."""
    causal = kv_idx <= q_idx
    real = (seg_q != PAD_SEGMENT) & (seg_kv != PAD_SEGMENT)
    prefix = seg_kv == TREE_PREFIX_SEGMENT
    same_query = (seg_q >= 2) & (seg_kv >= 2) & ((seg_q - 2) // 3 == (seg_kv - 2) // 3)
    own = same_query & ((seg_kv == seg_q) | ((seg_kv - 2) % 3 == 0))
    padding_self = (seg_q == PAD_SEGMENT) & (kv_idx == q_idx)
    return (causal & real & (prefix | own)) | padding_self


def build_tree_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense (B, 1, T, T) mask of the tree layout: boolean (SDPA) or additive (eager)."""
    return dense_mask(tree_allowed, segment_ids, dtype)


def build_tree_block_mask(segment_ids: torch.Tensor):
    """The tree mask as a flex_attention BlockMask: fully masked blocks are skipped (GPU path)."""
    return block_mask(tree_allowed, segment_ids)
