"""The shared-prefix forward equals the concatenated one: log-probs, IPO loss and gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fspo_ray.collate import collate_concatenated, collate_packed
from fspo_ray.forward import (
    _decoder_and_head,
    concatenated_forward,
    forward_for,
    sequence_logps,
    shared_prefix_attention_mask,
    shared_prefix_forward,
)
from fspo_ray.losses import preference_loss, summed_logps

PAD = 0
ATOL = RTOL = 1e-4


def tiny_llama(attn_implementation: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        # A larger init than the default 0.02 makes attention far from uniform, so a mask
        # that leaks chosen into rejected changes the log-probs well above the tolerance.
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config).float()
    model.set_attn_implementation(attn_implementation)
    return model.train()


def random_examples(seed: int = 0) -> list[dict]:
    """Pairs with different prompt and completion lengths, so both layouts pad."""
    generator = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, 100, (n,), generator=generator).tolist()

    lengths = [(9, 4, 6), (3, 7, 2), (14, 1, 5)]  # (prompt, chosen, rejected)
    return [
        {"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r),
         "ref_chosen_logps": -float(c) * 4.0, "ref_rejected_logps": -float(r) * 4.5}
        for p, c, r in lengths
    ]  # fmt: skip


def ipo_loss(output, batch) -> torch.Tensor:
    losses, _, _ = preference_loss(
        output.chosen_logps,
        output.rejected_logps,
        batch["ref_chosen_logps"],
        batch["ref_rejected_logps"],
        loss_type="ipo",
        beta=0.1,
    )
    return losses.mean()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    return tiny_llama(request.param)


@pytest.fixture(scope="module")
def batches():
    examples = random_examples()
    return collate_concatenated(examples, PAD), collate_packed(examples, PAD)


def test_logps_match_concatenated(model, batches):
    concatenated, packed = batches
    assert _decoder_and_head(model) is not None  # Llama takes the lm_head-on-completions path
    with torch.no_grad():
        reference = concatenated_forward(model, concatenated)
        shared = shared_prefix_forward(model, packed)
        # The full-logits path (lm_head on every position) must agree with the gathered one.
        shared_full = shared_prefix_forward(model, packed, completion_logits_only=False)
        logits = model(
            input_ids=concatenated["input_ids"], attention_mask=concatenated["attention_mask"]
        ).logits
    for output in (shared, shared_full):
        torch.testing.assert_close(
            output.chosen_logps, reference.chosen_logps, atol=ATOL, rtol=RTOL
        )
        torch.testing.assert_close(
            output.rejected_logps, reference.rejected_logps, atol=ATOL, rtol=RTOL
        )
    assert shared.chosen_tokens.tolist() == reference.chosen_tokens.tolist() == [4, 7, 1]
    assert shared.rejected_tokens.tolist() == reference.rejected_tokens.tolist() == [6, 2, 5]

    # sequence_logps on full logits agrees with the gathered path and with losses.summed_logps.
    full_logps, full_tokens = sequence_logps(logits, concatenated["labels"])
    expected = torch.cat([reference.chosen_logps, reference.rejected_logps])
    torch.testing.assert_close(full_logps, expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        full_logps, summed_logps(logits, concatenated["labels"]), atol=ATOL, rtol=RTOL
    )
    assert full_tokens.tolist() == [4, 7, 1, 6, 2, 5]


def test_leaky_mask_is_caught(model, batches):
    """Negative control: if rejected tokens could see chosen ones, the numbers would differ."""
    concatenated, packed = batches
    # Rejected counted as chosen: rejected tokens then see the chosen ones.
    leaky = dict(packed, segment_ids=packed["segment_ids"].clamp(max=2))
    with torch.no_grad():
        reference = concatenated_forward(model, concatenated)
        output = shared_prefix_forward(model, leaky)
    torch.testing.assert_close(output.chosen_logps, reference.chosen_logps, atol=ATOL, rtol=RTOL)
    assert (output.rejected_logps - reference.rejected_logps).abs().max() > 1e-2


def test_ipo_loss_and_gradients_match_concatenated(model, batches):
    concatenated, packed = batches
    gradients, loss_values = [], []
    for forward, batch in ((concatenated_forward, concatenated), (shared_prefix_forward, packed)):
        model.zero_grad(set_to_none=True)
        loss = ipo_loss(forward(model, batch), batch)
        loss.backward()
        loss_values.append(loss.detach())
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)

    torch.testing.assert_close(loss_values[1], loss_values[0], atol=ATOL, rtol=RTOL)
    reference, shared = gradients
    assert reference.keys() == shared.keys()
    for name in reference:
        assert reference[name].abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(
            shared[name],
            reference[name],
            atol=ATOL,
            rtol=RTOL,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def test_forward_for_and_attention_errors():
    assert forward_for("concatenated") is concatenated_forward
    assert forward_for("shared_prefix") is shared_prefix_forward
    with pytest.raises(
        ValueError, match=r"unknown forward mode 'packed'; expected one of \('concatenated'"
    ):
        forward_for("packed")
    segment_ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="'flash_attention_2' does not take"):
        shared_prefix_attention_mask(segment_ids, "flash_attention_2", torch.bfloat16)
