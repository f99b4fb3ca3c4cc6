"""Summed completion log-probs of preference pairs, from a concatenated or a shared-prefix batch.

Both forwards return the same `ForwardOutput`. By default lm_head runs only on the positions
that predict completion tokens: on few-shot prompts most positions are prompt, and their
(T, vocab) logits would be the largest tensor of the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fspo_ray.collate import (
    FORWARD_MODES,
    IGNORE_INDEX,
    block_mask,
    dense_mask,
    shared_prefix_allowed,
    tree_allowed,
)

# Attention implementations that take a custom 4D mask (flash-attention kernels do not).
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")

# Model types whose logits are exactly lm_head(final hidden state): no softcapping or scaling
# after the head, so projecting the gathered hidden states gives the same numbers. Other
# models take the full-logits path, which is exact for any causal LM.
PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

Batch = Mapping[str, torch.Tensor]


@dataclass
class ForwardOutput:
    """Policy log-probs of a batch of B pairs."""

    chosen_logps: torch.Tensor  # (B,) summed log pi(y_w | p), float32
    rejected_logps: torch.Tensor  # (B,) summed log pi(y_l | p), float32
    chosen_tokens: torch.Tensor  # (B,) number of chosen tokens scored
    rejected_tokens: torch.Tensor  # (B,) number of rejected tokens scored


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Shift Hugging Face labels so that entry t is the token the logits at t must predict."""
    targets = torch.full_like(labels, IGNORE_INDEX)  # (N, T)
    targets[:, :-1] = labels[:, 1:]
    return targets


def _summed_token_logps(
    logits: torch.Tensor, target_ids: torch.Tensor, rows: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """Sum per-token log-probs into their rows; logits are (K, V) at the K scored positions."""
    token_logps = -F.cross_entropy(logits.float(), target_ids, reduction="none")  # (K,)
    sums = torch.zeros(num_rows, dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps)  # (N,)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the label tokens of each row, and how many tokens were scored.

    logits (N, T, V) and labels (N, T) in the Hugging Face convention: logits[:, t] predicts
    labels[:, t + 1]; -100 marks unscored tokens. Only scored positions are upcast to float32.
    """
    targets = next_token_targets(labels)  # (N, T)
    scored = targets != IGNORE_INDEX  # (N, T)
    rows = scored.nonzero()[:, 0]  # (K,)
    logps = _summed_token_logps(logits[scored], targets[scored], rows, labels.shape[0])
    return logps, scored.sum(-1)


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder stack and lm_head, when logits are exactly lm_head(decoder output)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = model.get_output_embeddings()
    decoder = model.get_decoder()
    if not isinstance(head, nn.Linear) or decoder is model:
        return None
    return decoder, head


def _scored_logps(
    model: nn.Module,
    model_inputs: Mapping[str, torch.Tensor],
    targets: list[torch.Tensor],
    completion_logits_only: bool,
    groups: list[torch.Tensor] | None = None,
    num_groups: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each (N, T) next-token target tensor: (N,) summed log-probs and (N,) token counts;
    with `groups` ((N, T) group id per position, one tensor per target), sums per group:
    (num_groups,) each.

    One model forward serves every target tensor, and one lm_head call serves all of them;
    a position may be scored by several target tensors (the last prompt token of a packed row
    predicts both the first chosen and the first rejected token).
    """
    scored = [t != IGNORE_INDEX for t in targets]  # each (N, T)
    decoder_and_head = _decoder_and_head(model) if completion_logits_only else None
    if decoder_and_head is None:
        states = model(**model_inputs, use_cache=False).logits  # (N, T, V)
        selected = torch.cat([states[mask] for mask in scored])  # (K, V)
        logits = selected
    else:
        decoder, head = decoder_and_head
        states = decoder(**model_inputs, use_cache=False).last_hidden_state  # (N, T, H)
        selected = torch.cat([states[mask] for mask in scored])  # (K, H)
        logits = head(selected)  # (K, V)

    num_rows = targets[0].shape[0] if groups is None else num_groups
    results = []
    for i, (mask, target, part) in enumerate(
        zip(scored, targets, logits.split([int(m.sum()) for m in scored]), strict=True)
    ):
        rows = mask.nonzero()[:, 0] if groups is None else groups[i][mask]  # (K,)
        logps = _summed_token_logps(part, target[mask], rows, num_rows)
        counts = torch.bincount(rows, minlength=num_rows)
        results.append((logps, counts))  # (N,) or (num_groups,)
    return results


def concatenated_forward(
    model: nn.Module, batch: Batch, completion_logits_only: bool = True
) -> ForwardOutput:
    """Log-probs from the plain layout of `collate_concatenated`: 2B rows, chosen rows first."""
    model_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    targets = next_token_targets(batch["labels"])  # (2B, T)
    [(logps, tokens)] = _scored_logps(model, model_inputs, [targets], completion_logits_only)
    pairs = batch["input_ids"].shape[0] // 2
    return ForwardOutput(
        chosen_logps=logps[:pairs],
        rejected_logps=logps[pairs:],
        chosen_tokens=tokens[:pairs],
        rejected_tokens=tokens[pairs:],
    )


def _model_dtype(model: nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def attention_mask_for(layout: str, segment_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype):
    """A packed layout's mask ("shared_prefix" or "tree") in the form each attention takes.

    transformers 5 passes any 4D tensor or BlockMask through unchanged (masking_utils
    `_preprocess_mask_arguments`): SDPA gets it as `attn_mask` (boolean, True = attend);
    eager adds it to the scores (so it must be additive float); flex takes a BlockMask.
    """
    allowed = {"shared_prefix": shared_prefix_allowed, "tree": tree_allowed}[layout]
    if attn_implementation == "sdpa":
        return dense_mask(allowed, segment_ids)  # (B, 1, T, T) bool
    elif attn_implementation == "eager":
        return dense_mask(allowed, segment_ids, dtype=dtype)  # (B, 1, T, T) additive
    elif attn_implementation == "flex_attention":
        return block_mask(allowed, segment_ids)
    raise ValueError(
        f"the {layout} forward needs a 4D attention mask, which attn_implementation "
        f"{attn_implementation!r} does not take; expected one of {MASKED_ATTENTION}"
    )


def shared_prefix_attention_mask(segment_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype):
    """The packed layout's mask in the form each attention implementation takes."""
    return attention_mask_for("shared_prefix", segment_ids, attn_implementation, dtype)


def _packed_forward(layout: str, model: nn.Module, batch: Batch, completion_logits_only: bool, **groups) -> ForwardOutput:
    """One forward of a packed layout's batch under its mask; `groups` sums log-probs per pair."""
    attention_mask = attention_mask_for(
        layout, batch["segment_ids"], model.config._attn_implementation, _model_dtype(model)
    )
    model_inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": attention_mask,
        "position_ids": batch["position_ids"],
    }
    targets = [batch["chosen_targets"], batch["rejected_targets"]]  # each (B, T)
    (chosen_logps, chosen_tokens), (rejected_logps, rejected_tokens) = _scored_logps(
        model, model_inputs, targets, completion_logits_only, **groups
    )
    return ForwardOutput(chosen_logps, rejected_logps, chosen_tokens, rejected_tokens)


def shared_prefix_forward(
    model: nn.Module, batch: Batch, completion_logits_only: bool = True
) -> ForwardOutput:
    """Log-probs from the packed layout of `collate_packed`: one row per pair, prompt once."""
    return _packed_forward("shared_prefix", model, batch, completion_logits_only)


def tree_forward(model: nn.Module, batch: Batch, completion_logits_only: bool = True) -> ForwardOutput:
    """Log-probs of every pair of a `collate_tree` batch: one row per support set, the prefix
    encoded once for all of its queries. Outputs are (P,), pairs in example-major order."""
    pair_ids = [batch["chosen_pair"], batch["rejected_pair"]]  # each (B, T)
    return _packed_forward("tree", model, batch, completion_logits_only,
                           groups=pair_ids, num_groups=int(batch["chosen_pair"].max()) + 1)


def forward_for(mode: str) -> Callable[..., ForwardOutput]:
    """The forward of a batch layout: "concatenated" or "shared_prefix"."""
    if mode == "concatenated":
        return concatenated_forward
    elif mode == "shared_prefix":
        return shared_prefix_forward
    raise ValueError(f"unknown forward mode {mode!r}; expected one of {FORWARD_MODES}")
