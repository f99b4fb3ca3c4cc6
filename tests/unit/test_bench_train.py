"""bench.train_throughput on a tiny case: every side trains the same pairs and tokens, the tree layout
scores each pair as scoring it alone does, and the JSON line carries the per-Q figures."""

import argparse
import json
import math

import pytest
import torch

from bench.train_throughput import (
    TEXT_WORLD,
    pair_records,
    parse_args,
    processed_tokens,
    report,
    score_pairs,
    side_result,
    single_pairs,
    step_flops,
    summarize,
    support_sets,
    token_bound,
    token_bound_vs_trl,
    train_ours,
    train_trl,
)
from fspo_ray.config import load_config
from fspo_ray.modeling import build_tiny_model, train_tokenizer
from fspo_ray.world import world_from_config

pytest.importorskip("trl")

BATCH, STEPS, QMAX = 2, 2, 2  # 4 pairs: 2 support sets of 2 queries; ours at Q = 1 and Q = 2
COMMON = dict(batch_size=BATCH, steps=STEPS, lr=1e-4, beta=0.1, grad_clip=10.0)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two OpenMP threads wait on each other for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """Text-world pairs, 2 shots and 2 queries per support set, and a 2-layer, 32-wide Llama."""
    cfg = load_config(None, [*TEXT_WORLD, "world.prefs_per_user=6"])
    tokenizer = train_tokenizer(world_from_config(cfg.world).corpus(300), vocab_size=400)
    records = pair_records(cfg, tokenizer, shots=2, n_pairs=BATCH * STEPS, per_set=QMAX)

    def model():
        return build_tiny_model(
            tokenizer, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
            num_kv_heads=2, max_position_embeddings=1024, seed=0,
        )  # fmt: skip

    return tokenizer, records, model


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    tokenizer, records, model = tiny
    torch.set_num_threads(1)
    pad = tokenizer.pad_token_id
    return {
        "ours_q1": train_ours(model(), records, pad_token_id=pad, queries=1, **COMMON),
        "ours_q2": train_ours(model(), records, pad_token_id=pad, queries=2, **COMMON),
        "trl": train_trl(
            model(), tokenizer, records, output_dir=str(tmp_path_factory.mktemp("trl")), **COMMON
        ),
    }


def test_records_are_support_sets_of_one_user(tiny):
    tokenizer, records, _ = tiny
    assert [r["support_set"] for r in records] == [0, 0, 1, 1]
    assert records[0]["prefix_ids"] == records[1]["prefix_ids"] != records[2]["prefix_ids"]
    assert records[0]["question_ids"] != records[1]["question_ids"]
    for r in records:
        # TRL's prompt string is exactly our prefix + question, token for token.
        assert (
            tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
            == r["prefix_ids"] + r["question_ids"]
        )
        assert r["num_shots"] == 2 and r["prompt"].count("# Example ") == 2
    with pytest.raises(ValueError, match="not 2 queries of one support set"):
        support_sets(records[1:3], 2)


def test_every_side_trains_the_same_pairs_and_tokens(tiny, runs):
    _, records, model = tiny
    expected = [[len(r["prefix_ids"]) + len(r["question_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"])]
                for r in records]  # fmt: skip
    q1, q2, trl = runs["ours_q1"], runs["ours_q2"], runs["trl"]
    # TRL tokenizes the strings itself (and appends EOS): it must arrive at our token ids' lengths.
    assert q1.pair_lengths == q2.pair_lengths == trl.pair_lengths == expected
    for run in runs.values():
        assert len(run.step_ends) == STEPS + 1 and len(run.losses) == STEPS
        assert all(math.isfinite(x) for x in run.losses)

    prefix = [len(r["prefix_ids"]) for r in records]
    pcr = sum(map(sum, expected))
    assert processed_tokens(trl.pair_lengths, "concatenated") == pcr + sum(
        p for p, _, _ in expected
    )
    assert processed_tokens(q1.pair_lengths, "tree", q1.prefix_lengths, 1) == pcr
    # Q = 2: the second query of each support set does not pay for the prefix again.
    assert (
        processed_tokens(q2.pair_lengths, "tree", q2.prefix_lengths, 2)
        == pcr - prefix[1] - prefix[3]
    )
    for step in range(STEPS):
        chunk = expected[step * BATCH : (step + 1) * BATCH]
        assert q1.padded_tokens[step] == BATCH * max(map(sum, chunk))  # 2 rows, one pair each
        assert (
            q2.padded_tokens[step] == sum(map(sum, chunk)) - prefix[2 * step + 1]
        )  # 1 row, 2 pairs
        assert trl.padded_tokens[step] == 2 * BATCH * max(p + max(c, r) for p, c, r in chunk)

    m = model()
    flops = [step_flops(m, expected, "tree", prefix, 2), step_flops(m, expected, "tree", prefix, 1),
             step_flops(m, expected, "concatenated")]  # fmt: skip
    assert flops == sorted(flops) and flops[0] < flops[1] < flops[2]


def test_tree_layout_scores_each_pair_as_alone(tiny):
    tokenizer, records, model = tiny
    m, pad = model(), tokenizer.pad_token_id
    alone = score_pairs(
        m, single_pairs(records), layout="concatenated", pad_token_id=pad, rows_per_batch=1
    )
    shared = score_pairs(
        m, support_sets(records, 2), layout="tree", pad_token_id=pad, rows_per_batch=2
    )
    assert len(alone[0]) == len(shared[0]) == 4
    assert all(x < -1.0 for x in alone[0] + alone[1])  # real log-probs of ~20-token completions
    torch.testing.assert_close(torch.tensor(shared), torch.tensor(alone), rtol=0, atol=1e-5)


def test_grouping_does_not_change_the_training(runs):
    """Q = 1 and Q = 2 train the same pairs per step with the same mean loss: after one identical
    step the second step's loss is the same, whatever the rows look like (cf. TRL's grad-accum
    invariance test)."""
    q1, q2 = runs["ours_q1"].losses, runs["ours_q2"].losses
    assert abs(q1[1] - 25.0) > 0.01  # the first step moved the policy (h != 0 on the second batch)
    assert q2[1] == pytest.approx(q1[1], abs=1e-4)


def test_ipo_loss_starts_at_the_margin_term(runs):
    """At step 1 the policy is the reference, so h = 0 and IPO's loss is (0 - 1/(2 beta))^2 = 25."""
    assert runs["ours_q1"].losses[0] == pytest.approx(25.0, abs=1e-3)
    assert runs["ours_q2"].losses[0] == pytest.approx(25.0, abs=1e-3)


def test_token_bound_by_hand():
    # Issue 15: P = 1000, R = 100, Q = 4 -> 4 x 1200 / 1800 = 2.67; Q = 1 is the shared-prefix layout.
    assert token_bound(1000, 100, 4) == pytest.approx(8 / 3)
    assert token_bound(1000, 100, 1) == 1.0
    # Against TRL's 2P + 2R per pair: Q = 1 -> 2200 / 1200; Q = 8 -> 16 x 1100 / 2600.
    assert token_bound_vs_trl(1000, 100, 1) == pytest.approx(11 / 6)
    assert token_bound_vs_trl(1000, 100, 8) == pytest.approx(17600 / 2600)


def test_args_group_the_same_pairs_per_step():
    args = parse_args(["--queries", "8,1,4"])
    assert args.queries == [1, 4, 8] and args.batch_size == 8
    quick = parse_args(["--quick"])
    assert quick.queries == [1, 2] and quick.batch_size == 2 and quick.steps == 2
    with pytest.raises(SystemExit):
        parse_args(["--queries", "1,3,8"])  # 3 does not divide 8
    with pytest.raises(SystemExit):
        parse_args(["--queries", "1,4", "--batch-size", "6"])


def test_report_has_the_per_q_figures(tiny, runs, capsys):
    _, _, model = tiny
    m = model()
    rows = {}
    for side, run in runs.items():
        raw = side_result(run, m, BATCH, gflops=100.0)
        raw.update(rss_after_load_mb=1.0, load_avg=[[0.0] * 3] * 2)
        rows[side] = [summarize(raw, warmup=1, batch_size=BATCH)]
    args = argparse.Namespace(queries=[1, 2], batch_size=BATCH, hidden=32, intermediate=64, layers=2, heads=2,
                              threads=1, steps=STEPS - 1, warmup=1, rounds=1, shots=2, max_length=1024, lr=1e-4)  # fmt: skip
    result = report(args, rows, {"beta": 0.1}, [0.0] * 3)
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    assert set(result["by_queries"]) == {"1", "2"}
    trl = rows["trl"][0]
    assert result["trl_pairs_per_s"] == pytest.approx(BATCH / trl["step_s"], rel=1e-3)
    assert result["same_tokens"] is True
    for q in ("1", "2"):
        row, ours = result["by_queries"][q], rows[f"ours_q{q}"][0]
        assert row["ours_pairs_per_s"] == pytest.approx(BATCH / ours["step_s"], rel=1e-3)
        assert row["ratio_vs_trl"] == pytest.approx(
            ours["pairs_per_s"] / trl["pairs_per_s"], abs=1e-3
        )
        assert row["ours_peak_rss_mb"] == round(ours["peak_rss_mb"]) > 0
        assert row["support_sets_per_step"] == BATCH // int(q)
    # The timed step (the second) holds pairs 2 and 3: one support set.
    assert (
        result["by_queries"]["2"]["processed_tokens_per_step"]
        < result["by_queries"]["1"]["processed_tokens_per_step"]
    )
    p, r = result["mean_prompt_tokens"], result["mean_completion_tokens"]
    assert result["by_queries"]["2"]["token_bound_vs_q1"] == pytest.approx(
        token_bound(p, r, 2), abs=2e-3
    )
    assert token_bound(p, r, 2) > 1.2
