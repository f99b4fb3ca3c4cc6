"""Losses: hand-worked values, TRL cross-check, summed completion-only log-probs."""

import math
from types import SimpleNamespace

import pytest
import torch

from fspo_ray.losses import preference_loss, reward_accuracy, sft_loss, summed_logps


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_ipo_hand_worked():
    # h = (-1 - -2) - (-3 - -2.5) = 1 + 0.5 = 1.5; beta=0.25 -> 1/(2 beta) = 2; (1.5 - 2)^2 = 0.25
    losses, cr, rr = preference_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.5), loss_type="ipo", beta=0.25)
    torch.testing.assert_close(losses, _t(0.25))
    torch.testing.assert_close(cr, _t(0.25))  # 0.25 * (-1 - -2)
    torch.testing.assert_close(rr, _t(-0.125))  # 0.25 * (-3 - -2.5)


def test_dpo_hand_worked_and_cdpo():
    # h = 1.5, beta = 0.5 -> -log sigmoid(0.75) = log(1 + e^-0.75) = 0.3868...
    losses, _, _ = preference_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.5), loss_type="dpo", beta=0.5)
    torch.testing.assert_close(losses, _t(math.log1p(math.exp(-0.75))))
    # cDPO with eps = 0.1: 0.9 * log(1+e^-0.75) + 0.1 * log(1+e^0.75)
    losses, _, _ = preference_loss(
        _t(-1.0), _t(-3.0), _t(-2.0), _t(-2.5), loss_type="dpo", beta=0.5, label_smoothing=0.1
    )
    expected = 0.9 * math.log1p(math.exp(-0.75)) + 0.1 * math.log1p(math.exp(0.75))
    torch.testing.assert_close(losses, _t(expected))


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown loss_type 'kto'; expected one of \('dpo', 'ipo'\)"):
        preference_loss(_t(0.0), _t(0.0), _t(0.0), _t(0.0), loss_type="kto", beta=0.1)


def test_ipo_rejects_label_smoothing():
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type 'dpo' only"):
        preference_loss(_t(0.0), _t(0.0), _t(0.0), _t(0.0), loss_type="ipo", beta=0.1, label_smoothing=0.1)


def test_summed_logps_counts_completion_tokens_only():
    # Uniform logits over V=4: every predicted token has log-prob log(1/4).
    logits = torch.zeros(2, 5, 4)
    labels = torch.tensor([[-100, -100, 1, 2, 3], [-100, 1, 2, -100, -100]])
    out = summed_logps(logits, labels)
    torch.testing.assert_close(out, torch.tensor([3 * math.log(0.25), 2 * math.log(0.25)]))


def test_sft_loss_is_mean_nll_over_completion_tokens():
    logits = torch.zeros(1, 4, 8)
    logits[0, 1, 5] = 10.0  # position 1 predicts token 5 with high probability
    labels = torch.tensor([[-100, -100, 5, 6]])
    p5 = math.exp(10) / (math.exp(10) + 7)
    expected = -(math.log(p5) + math.log(1 / 8)) / 2
    torch.testing.assert_close(sft_loss(logits, labels), torch.tensor(expected))


def test_reward_accuracy_counts_ties_half():
    assert reward_accuracy(_t(1.0, 0.0, 2.0, 1.0), _t(0.0, 1.0, 2.0, 0.5)).item() == pytest.approx(0.625)


# --------------------------------------------------------------------------- TRL cross-check


def _trl_loss(loss_type, beta, policy_c, policy_r, ref_c, ref_r, n_tokens):
    """Run TRL's own DPOTrainer._compute_loss on given per-sequence log-probs.

    The stand-in model returns per-token log-probs whose sums are the given values, spread
    over `n_tokens` completion tokens; everything after the model call is TRL's code.
    """
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer

    B = policy_c.shape[0]
    T = n_tokens + 2  # one prompt token, n completion tokens, one pad
    completion_mask = torch.zeros(2 * B, T)
    completion_mask[:, 1 : 1 + n_tokens] = 1
    seq = torch.cat([policy_c, policy_r])  # (2B,)
    per_token = torch.zeros(2 * B, T - 1)
    per_token[:, : n_tokens] = (seq / n_tokens).unsqueeze(1)  # shifted mask: positions 0..n-1

    class Model:
        training = True

        def __call__(self, **kw):
            return SimpleNamespace(
                log_probs=per_token,
                entropy=torch.zeros_like(per_token),
                mean_logits=torch.zeros_like(per_token),
                is_top1=torch.zeros_like(per_token, dtype=torch.bool),
            )

    from collections import defaultdict

    acc = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    self = SimpleNamespace(
        model=Model(), accelerator=acc, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=0.0, use_weighting=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    return DPOTrainer._compute_loss(self, self.model, inputs, return_outputs=False)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
def test_dpo_matches_trl(beta):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(16, generator=g, dtype=torch.float64) * 50 for _ in range(4))
    ours, _, _ = preference_loss(pc, pr, rc, rr, loss_type="dpo", beta=beta)
    theirs = _trl_loss("sigmoid", beta, pc, pr, rc, rr, n_tokens=7)
    torch.testing.assert_close(ours.mean(), theirs.to(ours.dtype))


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
def test_ipo_matches_trl_on_per_token_average(beta):
    # TRL's IPO divides the log-ratios by the completion length (stated in its source); the
    # FSPO recipe sums. On the same inputs, ours on (logps / L) must equal TRL's.
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-torch.rand(16, generator=g, dtype=torch.float64) * 50 for _ in range(4))
    L = 5
    ours, _, _ = preference_loss(pc / L, pr / L, rc / L, rr / L, loss_type="ipo", beta=beta)
    theirs = _trl_loss("ipo", beta, pc, pr, rc, rr, n_tokens=L)
    torch.testing.assert_close(ours.mean(), theirs.to(ours.dtype))
    # And with one-token completions the two conventions coincide exactly.
    ours1, _, _ = preference_loss(pc, pr, rc, rr, loss_type="ipo", beta=beta)
    torch.testing.assert_close(ours1.mean(), _trl_loss("ipo", beta, pc, pr, rc, rr, n_tokens=1).to(ours1.dtype))


def test_step_loss_rpo_adds_the_chosen_mean_token_nll():
    from types import SimpleNamespace

    from fspo_ray.losses import step_loss

    # Two pairs; h = (-2 - -3) - (-5 - -4) = 2 and h = 0. DPO beta 1: -logsigmoid(2) = 0.126928,
    # -logsigmoid(0) = 0.693147; mean 0.410038. Chosen mean token NLL: 2/4 = 0.5 and 6/2 = 3; mean 1.75.
    out = SimpleNamespace(chosen_logps=torch.tensor([-2.0, -6.0]), rejected_logps=torch.tensor([-5.0, -1.0]),
                          chosen_tokens=torch.tensor([4, 2]), rejected_tokens=torch.tensor([3, 3]))
    ref = {"ref_chosen_logps": torch.tensor([-3.0, -6.0]), "ref_rejected_logps": torch.tensor([-4.0, -1.0])}
    plain, stats = step_loss(out, ref, kind="preference", loss_type="dpo", beta=1.0)
    torch.testing.assert_close(plain, torch.tensor(0.410038), atol=1e-5, rtol=0)
    rpo, stats = step_loss(out, ref, kind="preference", loss_type="dpo", beta=1.0, rpo_alpha=0.5)
    torch.testing.assert_close(rpo, torch.tensor(0.410038 + 0.5 * 1.75), atol=1e-5, rtol=0)
    assert stats["chosen_nll"].item() == pytest.approx(3.5) and stats["reward_accuracy"].item() == pytest.approx(1.5)
    sft, stats = step_loss(out, None, kind="sft")
    torch.testing.assert_close(sft, torch.tensor((2 + 6 + 5 + 1) / 12.0))  # mean NLL over all 12 completion tokens
