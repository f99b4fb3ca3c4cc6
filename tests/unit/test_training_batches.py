"""A worker's share of a stage (no Ray): episodes per epoch, rank slices, the reference pass and
the scoring pass, on literal data and a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from fspo_ray.collate import collate_tree
from fspo_ray.config import build_config
from fspo_ray.data import UserData
from fspo_ray.episodes import Preference
from fspo_ray.forward import tree_forward
from fspo_ray.losses import step_loss
from fspo_ray.modeling import build_tiny_model, train_tokenizer
from fspo_ray.training.batches import (
    attach_reference,
    encode_examples,
    eval_episodes,
    reward_correct,
    score,
    stage_episodes,
    steps_of,
)
from fspo_ray.training.plan import make_plan

TEXTS = [f"user {i} likes {w} answers in {f}" for i in range(50) for w in ("short", "long") for f in ("bullets", "prose")]


def _users(n_users: int = 6, n_pairs: int = 6) -> UserData:
    prefs = {f"train-0-{u:06d}": [Preference(f"q{u}-{i}", f"user {u} likes short answers {i}", f"user {u} likes long {i}")
                                  for i in range(n_pairs)] for u in range(n_users)}
    return UserData(prefs, {u: f"user {u} likes short answers" for u in prefs})


def _plan(queries: int = 1, **stage):
    cfg = build_config({"episodes": {"num_shots": 2, "min_shots": 1, "max_length": 512, "queries_per_episode": queries},
                        "train": {"stages": [{"name": "s", "kind": "preference", **stage}]}})
    plan = make_plan(cfg)
    return plan, plan.stages[0]


@pytest.fixture(scope="module")
def tiny():
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             max_position_embeddings=512, seed=1)
    return model.eval(), tok


def test_every_pair_is_a_query_once_per_epoch_and_resampled():
    plan, st = _plan(queries=3)
    users = _users()
    e0, e1 = stage_episodes(users, st, plan, 0), stage_episodes(users, st, plan, 1)
    q0 = sorted(q.question for e in e0 for q in e.queries)
    assert q0 == sorted(q.question for e in e1 for q in e.queries) and len(q0) == 36
    assert [e.queries for e in e0] != [e.queries for e in e1]  # new query sets and shots
    assert {len(e.queries) for e in e0} == {3}


def test_max_episodes_takes_a_different_subset_each_epoch():
    plan, st = _plan(max_episodes=7)
    users = _users()
    e0, e1 = stage_episodes(users, st, plan, 0), stage_episodes(users, st, plan, 1)
    assert len(e0) == len(e1) == 7
    assert {e.held_out.question for e in e0} != {e.held_out.question for e in e1}
    assert stage_episodes(users, st, plan, 0) == e0  # deterministic per (seed, epoch)


def test_describe_task_holds_the_gold_description_as_both_completions():
    plan, st = _plan(queries=3)
    st.kind, st.task, st.queries = "describe_sft", "describe", 1
    episodes = stage_episodes(_users(), st, plan, 0)
    assert all(len(e.queries) == 1 and e.queries[0].chosen == e.queries[0].rejected == e.user_description
               for e in episodes)


def test_rank_slices_follow_the_global_step():
    # G = 2 micro x 2 accum x 2 ranks = 8 rows a step; 19 rows -> 2 steps, 3 rows left out
    assert steps_of(19, rank=0, world_size=2, micro_batch=2, accum=2) == [[[0, 1], [4, 5]], [[8, 9], [12, 13]]]
    assert steps_of(19, rank=1, world_size=2, micro_batch=2, accum=2) == [[[2, 3], [6, 7]], [[10, 11], [14, 15]]]


def test_stored_reference_gives_the_losses_and_gradients_of_a_live_reference(tiny):
    model, tok = tiny
    plan, st = _plan(queries=2, loss_type="ipo", beta=0.1)
    examples, dropped = encode_examples(stage_episodes(_users(), st, plan, 0), tok, st, plan)
    assert dropped == 0 and len(examples) == 18
    rows = examples[:4]
    attach_reference(rows, *score(model, rows, pad_token_id=tok.pad_token_id, micro_batch=3, device="cpu"))
    policy = copy.deepcopy(model).train()
    with torch.no_grad():  # make the policy differ from the reference
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = collate_tree(rows, tok.pad_token_id)

    def loss_and_grads(ref):
        policy.zero_grad()
        loss, _ = step_loss(tree_forward(policy, batch), ref, kind="preference", loss_type="ipo", beta=0.1)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters()}

    stored_loss, stored = loss_and_grads(batch)
    with torch.no_grad():
        live = tree_forward(model, batch)
    live_loss, live_grads = loss_and_grads({"ref_chosen_logps": live.chosen_logps, "ref_rejected_logps": live.rejected_logps})
    torch.testing.assert_close(stored_loss, live_loss, atol=1e-5, rtol=1e-5)
    for name in live_grads:
        torch.testing.assert_close(stored[name], live_grads[name], atol=1e-5, rtol=1e-5)
    assert stored_loss > 0


def test_over_budget_episodes_are_dropped_not_cut(tiny):
    _, tok = tiny
    plan, st = _plan(queries=2)
    plan.max_length = 12
    examples, dropped = encode_examples(stage_episodes(_users(), st, plan, 0), tok, st, plan)
    assert examples == [] and dropped == 18  # none fits 12 tokens even with one shot: dropped and counted


def test_reward_correct_on_a_hand_worked_case():
    rows = [{"prefix_ids": [1], "queries": [
        {"ref_chosen_logps": -5.0, "ref_rejected_logps": -5.0},   # h = (-4 - -5) - (-6 - -5) = 2 > 0: correct
        {"ref_chosen_logps": -5.0, "ref_rejected_logps": -4.0},   # h = (-6 - -5) - (-3 - -4) = -2: wrong
        {"ref_chosen_logps": -1.0, "ref_rejected_logps": -1.0},   # h = 0: half
    ]}]
    assert reward_correct(rows, [-4.0, -6.0, -1.0], [-6.0, -3.0, -1.0]) == (1.5, 3)


def test_eval_episodes_are_fixed_and_disjoint_from_training_epochs():
    plan, st = _plan(queries=2)
    users = _users()
    a, b = eval_episodes(users, st, plan), eval_episodes(users, st, plan)
    assert a == b and a != stage_episodes(users, st, plan, 0)
