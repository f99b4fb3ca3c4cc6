"""bench.train_throughput's two sides on a tiny model: same pairs, same tokens, finite losses."""

import math

import pytest
import torch

from bench.train_throughput import processed_tokens, step_flops, train_ours, train_trl
from fspo_ray.config import load_config
from fspo_ray.modeling import build_tiny_model, train_tokenizer
from fspo_ray.world import world_from_config

pytest.importorskip("trl")

BATCH, STEPS = 2, 2


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two OpenMP threads wait on each other for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """A 2-shot world episode set and a 2-layer, 32-wide Llama with a tokenizer of world text."""
    from bench.train_throughput import episode_records

    cfg = load_config(None, ["world.prefs_per_user=6"])
    tokenizer = train_tokenizer(world_from_config(cfg.world).corpus(300), vocab_size=400)
    records = episode_records(cfg, tokenizer, shots=2, n_pairs=BATCH * STEPS)

    def model():
        return build_tiny_model(
            tokenizer, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
            num_kv_heads=2, max_position_embeddings=1024, seed=0,
        )  # fmt: skip

    return tokenizer, records, model


def test_both_sides_train_the_same_pairs_and_tokens(tiny, tmp_path):
    tokenizer, records, model = tiny
    common = dict(batch_size=BATCH, steps=STEPS, lr=1e-4, beta=0.1, grad_clip=10.0)
    ours = train_ours(model(), records, pad_token_id=tokenizer.pad_token_id, **common)
    trl = train_trl(model(), tokenizer, records, output_dir=str(tmp_path), **common)

    expected = [
        [len(r["prompt_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"])] for r in records
    ]
    # TRL tokenizes the strings itself (and appends EOS): it must arrive at our token ids' lengths.
    assert ours.pair_lengths == trl.pair_lengths == expected
    assert len(ours.step_ends) == len(trl.step_ends) == STEPS + 1
    assert len(ours.losses) == len(trl.losses) == STEPS
    assert all(math.isfinite(x) for x in ours.losses + trl.losses)

    p = sum(x[0] for x in expected)
    c_plus_r = sum(x[1] + x[2] for x in expected)
    assert processed_tokens(ours.pair_lengths, ours.layout) == p + c_plus_r
    assert processed_tokens(trl.pair_lengths, trl.layout) == 2 * p + c_plus_r
    # One packed row per pair, against two padded rows per pair.
    for step, padded in enumerate(ours.padded_tokens):
        chunk = expected[step * BATCH : (step + 1) * BATCH]
        assert padded == BATCH * max(sum(x) for x in chunk)
        assert trl.padded_tokens[step] == 2 * BATCH * max(x[0] + max(x[1], x[2]) for x in chunk)

    # The packed step needs fewer FLOPs than the concatenated one on the same pairs.
    m = model()
    assert step_flops(m, expected, "shared_prefix") < step_flops(m, expected, "concatenated")


def test_ipo_loss_starts_at_the_margin_term(tiny):
    """At step 1 the policy is the reference, so h = 0 and IPO's loss is (0 - 1/(2 beta))^2 = 25."""
    tokenizer, records, model = tiny
    ours = train_ours(model(), records, pad_token_id=tokenizer.pad_token_id, batch_size=BATCH,
                      steps=1, lr=1e-4, beta=0.1, grad_clip=10.0)  # fmt: skip
    assert ours.losses[0] == pytest.approx(25.0, abs=1e-3)
