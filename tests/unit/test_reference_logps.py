"""Reference log-probs computed once (the Ray Data scorer, run in-process here) give the same
losses and gradients as a reference model evaluated on the fly."""

import copy

import pytest
import torch

from fspo_ray.collate import collate_packed
from fspo_ray.forward import shared_prefix_forward
from fspo_ray.losses import preference_loss
from fspo_ray.modeling import build_tiny_model, save_model, train_tokenizer
from fspo_ray.training.prepare import EpisodeScorer

TEXTS = [f"user {i} likes {w} answers in {f}" for i in range(50) for w in ("short", "long") for f in ("bullets", "prose")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             max_position_embeddings=256, seed=1)
    return str(save_model(model, tok, tmp_path_factory.mktemp("ref")))


def _records():
    shots = [{"question": f"q{i}", "chosen": f"user {i} likes short answers", "rejected": f"user {i} likes long prose"}
             for i in range(3)]
    return {
        "index": [0, 1, 2],
        "user_id": ["u", "u", "v"],
        "split": ["train"] * 3,
        "shots": [shots, shots[:2], shots[1:]],
        "question": ["q9", "q8", "q7"],
        "chosen": ["likes bullets", "user 3 likes short answers in bullets", "long"],
        "rejected": ["likes prose", "user 3 likes long", "short answers in prose"],
        "user_description": ["", "", ""],
    }


def test_precomputed_reference_matches_on_the_fly(model_dir):
    scorer = EpisodeScorer(model_dir, max_length=512, min_shots=1, template="markdown", rat=False,
                           models={"ref_": model_dir}, dtype="float32", attn_implementation="sdpa",
                           forward="shared_prefix", micro_batch=2)
    rows = scorer(_records())
    assert rows["index"] == [0, 1, 2]
    examples = [{k: rows[k][i] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")}
                for i in range(3)]
    reference = scorer.models["ref_"]
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # make the policy differ from the reference
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = collate_packed(examples, scorer.tok.pad_token_id)

    def loss_and_grads(ref_c, ref_r):
        policy.zero_grad()
        out = shared_prefix_forward(policy, batch)
        losses, _, _ = preference_loss(out.chosen_logps, out.rejected_logps, ref_c, ref_r, loss_type="ipo", beta=0.1)
        losses.mean().backward()
        return losses.detach(), {n: p.grad.clone() for n, p in policy.named_parameters()}

    stored_loss, stored_grads = loss_and_grads(batch["ref_chosen_logps"], batch["ref_rejected_logps"])
    with torch.no_grad():
        ref_out = shared_prefix_forward(reference, batch)
    live_loss, live_grads = loss_and_grads(ref_out.chosen_logps, ref_out.rejected_logps)
    torch.testing.assert_close(stored_loss, live_loss, atol=1e-5, rtol=1e-5)
    for name in live_grads:
        torch.testing.assert_close(stored_grads[name], live_grads[name], atol=1e-5, rtol=1e-5)
    assert stored_loss.abs().sum() > 0


def test_over_budget_episodes_are_dropped_not_cut(model_dir):
    scorer = EpisodeScorer(model_dir, max_length=40, min_shots=1, template="markdown", rat=False, models={},
                           dtype="float32", attn_implementation="sdpa", forward="shared_prefix", micro_batch=2)
    rows = scorer(_records())
    assert rows["index"] == []  # none fits 40 tokens even with one shot: dropped (and counted by the caller)
