"""FSPO's losses as pure functions of summed log-probs: DPO, IPO, and the Pref-FT SFT loss.

h = (log pi(y_w|p) - log ref(y_w|p)) - (log pi(y_l|p) - log ref(y_l|p)), with log-probs summed
over completion tokens only (labels == -100 elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("dpo", "ipo")
IGNORE_INDEX = -100


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards, each of shape (B,).

    Rewards are beta * (log pi - log ref), detached, as in the DPO paper's logging.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "dpo":
        # Eq. 7 of arXiv 2305.18290; cDPO: expected loss under label-flip probability eps.
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing applies to loss_type 'dpo' only")
        losses = (h - 1 / (2 * beta)) ** 2  # IPO, Eq. 17 of arXiv 2310.12036
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of `labels` under causal-LM `logits`, and the completion mask.

    logits (N, T, V) predict the next token, so logits[:, t] scores labels[:, t + 1].
    Returns (logps (N, T-1), mask (N, T-1)) with zeros where labels are IGNORE_INDEX.
    """
    labels = labels[:, 1:]  # (N, T-1)
    logits = logits[:, :-1]  # (N, T-1, V)
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    # cross_entropy avoids materialising a full log_softmax copy of (N, T, V).
    logps = -F.cross_entropy(logits.transpose(1, 2).float(), safe, reduction="none")  # (N, T-1)
    return logps * mask, mask


def summed_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probs summed over completion tokens only: (N,)."""
    logps, _ = token_logps(logits, labels)
    return logps.sum(-1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pref-FT: mean token NLL over the completion tokens of every row (chosen and rejected
    alike under the few-shot prompt, as in the official recipe). Scalar."""
    logps, mask = token_logps(logits, labels)
    return -(logps.sum() / mask.sum().clamp(min=1))


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose implicit reward ranks chosen above rejected (ties count half)."""
    return ((chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()).mean()


SFT_KINDS = ("base_sft", "sft", "describe_sft")
PREFERENCE_KINDS = ("preference", "describe_preference")


def step_loss(out, ref: dict[str, torch.Tensor] | None, *, kind: str, loss_type: str = "ipo", beta: float = 0.1,
              label_smoothing: float = 0.0, rpo_alpha: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one objective of every stage: the scalar loss of a micro-batch and its summed statistics.

    `out` holds (P,) summed policy log-probs and token counts of P pairs (a `ForwardOutput`);
    `ref` the reference log-probs (`ref_chosen_logps`, `ref_rejected_logps`, each (P,)) for
    preference kinds. SFT kinds (Pref-FT and the RAT describe stage) minimise the mean token
    NLL over both completions; preference kinds DPO/IPO on each pair, plus `rpo_alpha` times the
    chosen completion's mean token NLL (RPO, arXiv 2404.19733; TRL's `rpo_alpha`). Statistics are
    sums over the micro-batch (divide by `pairs` after reducing over ranks).
    """
    pairs = torch.tensor(float(len(out.chosen_logps)), dtype=torch.float64)
    tokens = (out.chosen_tokens + out.rejected_tokens).sum()
    if kind in SFT_KINDS:
        # Pref-FT: mean NLL over the tokens of both completions under the prompt.
        loss = -(out.chosen_logps.sum() + out.rejected_logps.sum()) / tokens.clamp(min=1)
        return loss, {"loss": loss.detach() * pairs, "pairs": pairs, "tokens": tokens.detach()}
    if kind not in PREFERENCE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; expected one of {SFT_KINDS + PREFERENCE_KINDS}")
    losses, cr, rr = preference_loss(
        out.chosen_logps, out.rejected_logps, ref["ref_chosen_logps"], ref["ref_rejected_logps"],
        loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
    )
    loss = losses.mean()
    stats = {
        "loss": losses.detach().sum(),
        "pairs": pairs,
        "tokens": tokens.detach(),
        "reward_accuracy": ((cr > rr).float() + 0.5 * (cr == rr).float()).sum(),
        "reward_margin": (cr - rr).sum(),
        "chosen_reward": cr.sum(),
        "rejected_reward": rr.sum(),
    }
    if rpo_alpha:
        nll = -(out.chosen_logps / out.chosen_tokens.clamp(min=1))  # (P,) mean token NLL of each chosen completion
        loss = loss + rpo_alpha * nll.mean()
        stats["chosen_nll"] = nll.detach().sum()
    return loss, stats


def implicit_reward_correct(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                            ref_rejected: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 when the implicit reward log pi/ref ranks chosen above rejected, 0.5 on a tie, else 0. (P,)"""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (P,)
    return (h > 0).double() + 0.5 * (h == 0).double()
