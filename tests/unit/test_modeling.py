"""Offline tiny models: tokenizer + Llama built here, saved, and loaded back by transformers."""

import pytest
import torch

from fspo_ray.modeling import (
    ModelLoadError,
    build_tiny_model,
    load_model_and_tokenizer,
    save_model,
    train_tokenizer,
)

TEXTS = [f"the user prefers {a} answers about {b} with {c}" for a in ("short", "long", "playful", "formal")
         for b in ("cooking", "travel", "money", "physics", "music") for c in ("bullets", "steps", "prose", "videos")] * 5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = train_tokenizer(TEXTS, vocab_size=400)
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             max_position_embeddings=256)
    return save_model(model, tok, tmp_path_factory.mktemp("tiny"))


def test_saved_as_safetensors_and_loads_with_auto_classes(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_dir / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == len(tok)
    ids = tok("the user prefers short answers")["input_ids"]
    assert tok.decode(ids) == "the user prefers short answers"  # byte-level BPE round-trips
    assert tok.eos_token == "<|end_of_text|>" and tok.pad_token == "<|pad|>"


def test_chat_template_renders_user_turn(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def test_loader_dtype_attention_and_generation(tiny_dir):
    model, tok = load_model_and_tokenizer(str(tiny_dir), dtype="bfloat16", attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    model, tok = load_model_and_tokenizer(str(tiny_dir))  # auto on CPU -> float32
    assert next(model.parameters()).dtype == torch.float32
    out = model.generate(**tok("the user", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 2


def test_dir_without_tokenizer_is_a_clear_error(tiny_dir, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"has no tokenizer \(expected tokenizer\.json or tokenizer\.model\)"):
        load_model_and_tokenizer(str(tmp_path))


def test_dir_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"has no weights \(expected one of model\.safetensors"):
        load_model_and_tokenizer(str(tmp_path))


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "nope"))
