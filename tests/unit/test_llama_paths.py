"""What a real Llama-3.x model does and the tiny model does not, on a Llama-3-style tokenizer built
here (word-level, a post-processor that adds <|begin_of_text|>, a chat template that prints today's
date unless given `date_string`): stop on every EOS of generation_config, no top-k, a 0-GPU Ray actor
on the CPU, a fixed date in every chat prompt, one BOS at the start of every prompt."""

from __future__ import annotations

import datetime
import json
from types import SimpleNamespace

import pytest
import ray
import torch

from fspo_ray.config import build_config
from fspo_ray.data import UserData
from fspo_ray.engines.config import EngineConfig, Sampling
from fspo_ray.engines.local import HFEngine, render_chat
from fspo_ray.engines.ray_data import PromptTokenizer, prompt_of
from fspo_ray.episodes import CHAT_DATE, Episode, Preference, apply_chat, encode_episode
from fspo_ray.forward import MASKED_ATTENTION
from fspo_ray.modeling import (
    bos_prefix_ids,
    build_tiny_model,
    default_device,
    encode_prompt,
    save_model,
    stop_token_ids,
    template_pieces,
    train_tokenizer,
    train_word_tokenizer,
)
from fspo_ray.sections import ConfigError
from fspo_ray.training.batches import encode_examples, stage_episodes
from fspo_ray.training.config import TRAIN_ATTENTION, ModelConfig
from fspo_ray.training.plan import make_plan
from fspo_ray.training.sampling import describe_prompts, sample_texts

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIALS = [BOS, EOS, EOT, "<|start_header_id|>", "<|end_header_id|>", "<|pad|>", "<|unk|>"]
WORDS = ["user", "assistant", "system", "Today", "Date:", *CHAT_DATE.split(), *(f"w{i}" for i in range(120))]
# Llama-3.x's templates print "Today Date: ..." with today's date when no date_string is passed.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\n"
    "Today Date: {{ date_string | default(strftime_now('%d %b %Y')) }}<|eot_id|>"
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PROMPT = "w1 w2 w3 w4"
MESSAGES = [{"role": "user", "content": PROMPT}]


def llama3_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + WORDS)}, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token="<|pad|>",
                                   unk_token="<|unk|>", additional_special_tokens=SPECIALS[2:5])
    fast.chat_template = LLAMA3_TEMPLATE
    return fast


def _model(tok, eos_ids):
    model = build_tiny_model(tok, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                             max_position_embeddings=256, seed=0)
    model.generation_config.eos_token_id = eos_ids
    return model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A saved Llama-3-style model dir: BOS-adding tokenizer, generation_config stopping on EOS and EOT."""
    tok = llama3_tokenizer()
    ids = tok.convert_tokens_to_ids([EOS, EOT])
    return save_model(_model(tok, ids), tok, tmp_path_factory.mktemp("llama3"))


def _today_in(text: str) -> bool:
    return datetime.date.today().strftime("%d %b %Y") in text


def _users() -> UserData:
    prefs = {f"train-0-{u:06d}": [Preference(f"w{u} w{i}", f"w{i} w{i + 1}", f"w{i + 2}") for i in range(4)]
             for u in range(3)}
    return UserData(prefs, {u: "w9 w8" for u in prefs})


def _stage(template: str):
    cfg = build_config({"episodes": {"num_shots": 2, "min_shots": 1, "max_length": 512, "template": template},
                        "train": {"stages": [{"name": "s", "kind": "preference"}]}})
    plan = make_plan(cfg)
    return plan, plan.stages[0]


def _rows(enc: dict) -> list[list[int]]:
    """The real (unpadded) ids of each row of a left-padded batch."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)]


# --------------------------------------------------------------------------- stop tokens, top_k


def test_stop_token_ids_unite_generation_config_and_tokenizer_in_order():
    tok = SimpleNamespace(eos_token_id=128009)
    cfg = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[128001, 128008, 128009]))
    assert stop_token_ids(cfg, tok) == [128001, 128008, 128009]
    cfg.generation_config.eos_token_id = 128001
    assert stop_token_ids(cfg, tok) == [128001, 128009]
    cfg.generation_config.eos_token_id = None
    assert stop_token_ids(cfg, tok) == [128009]


def test_hf_engine_stops_on_every_eos_of_the_generation_config(llama, tmp_path):
    greedy = Sampling(max_new_tokens=6, temperature=0.0)
    engine = HFEngine(str(llama), device="cpu")
    enc = engine._inputs([PROMPT])
    first = engine.model.generate(**enc, **engine._gen_kwargs(greedy))[0, enc["input_ids"].shape[1]].item()
    eos = engine.tokenizer.eos_token_id
    assert first != eos
    # A model whose generation_config also stops on the token greedy decoding writes first (as
    # Llama-3.2-Instruct stops on <|eot_id|>): one new token, not six.
    engine.model.generation_config.eos_token_id = [eos, first]
    save_model(engine.model, engine.tokenizer, tmp_path)
    stopping = HFEngine(str(tmp_path), device="cpu")
    assert stopping.stop_ids == [eos, first]
    out = stopping.model.generate(**enc, **stopping._gen_kwargs(greedy))
    assert out.shape[1] - enc["input_ids"].shape[1] == 1


def test_hf_engine_samples_without_top_k_as_vllm_does(llama):
    # A near-uniform model over ~130 tokens: 400 one-token samples hit far more than top_k=50 distinct tokens.
    engine = HFEngine(str(llama), device="cpu")
    kw = engine._gen_kwargs(Sampling(max_new_tokens=1, temperature=1.0, top_p=1.0))
    enc = engine._inputs([PROMPT])
    torch.manual_seed(0)
    out = engine.model.generate(**enc, **kw, num_return_sequences=400)
    assert len(set(out[:, -1].tolist())) > 50
    assert kw["top_k"] == 0


def test_rat_sampling_stops_on_every_eos_and_starts_with_one_bos(llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(llama), AutoModelForCausalLM.from_pretrained(llama)
    seen = {}
    generate = model.generate

    def spy(**kw):
        seen.update(kw)
        return generate(**kw)

    model.generate = spy
    sample_texts(model, tok, [PROMPT], k=2, temperature=1.0, max_new_tokens=2, seed=0, device="cpu")
    assert seen["eos_token_id"] == tok.convert_tokens_to_ids([EOS, EOT])
    assert seen["input_ids"][0].tolist() == [tok.bos_token_id, *tok(PROMPT, add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------- device


@pytest.fixture
def fake_cuda_host(monkeypatch):
    """A host with a GPU, as seen by a Ray worker: set `gpu_ids` to what Ray gave it."""
    state = SimpleNamespace(initialized=True, mode=ray.WORKER_MODE, gpu_ids=[])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ray, "is_initialized", lambda: state.initialized)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(worker=SimpleNamespace(mode=state.mode)))
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: state.gpu_ids)
    return state


def test_default_device_inside_ray_follows_the_gpus_ray_gave(fake_cuda_host, monkeypatch):
    assert default_device() == "cpu"  # a 0-GPU actor on a GPU node: Ray 2.60 leaves CUDA visible
    fake_cuda_host.gpu_ids = [0]
    assert default_device() == "cuda"
    fake_cuda_host.mode = ray.SCRIPT_MODE  # the driver: any visible GPU
    fake_cuda_host.gpu_ids = []
    assert default_device() == "cuda"
    fake_cuda_host.initialized = False
    assert default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"


def test_hf_engine_and_embedder_in_a_0_gpu_actor_stay_on_cpu(fake_cuda_host, llama, monkeypatch):
    import sentence_transformers

    from fspo_ray.engines.embedder import load_sentence_model

    assert HFEngine(str(llama)).device == "cpu"
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", lambda path, device: device)
    assert load_sentence_model("unused") == "cpu"
    fake_cuda_host.gpu_ids = [0]
    assert load_sentence_model("unused") == "cuda"


# --------------------------------------------------------------------------- chat date


def test_every_chat_rendering_passes_the_fixed_date(llama):
    tok = llama3_tokenizer()
    date_ids = tok.convert_tokens_to_ids(CHAT_DATE.split())
    texts = {
        "episodes.apply_chat": apply_chat(PROMPT, tok.apply_chat_template),
        "engines.render_chat": render_chat(tok, MESSAGES),
        "ray_data.prompt_of": prompt_of(tok, {"messages_json": json.dumps(MESSAGES)}),
        "training.describe_prompts": describe_prompts([Episode("u", (Preference("w1", "w2", "w3"),), Preference("w4", "w5", "w6"))], tok,
                                                      "chat")[0],
    }
    for where, text in texts.items():
        assert f"Today Date: {CHAT_DATE}<|eot_id|>" in text and not _today_in(text), where
    plan, stage = _stage("chat")
    examples, _ = encode_examples(stage_episodes(_users(), stage, plan, 0), tok, stage, plan)
    prefix = examples[0]["prefix_ids"]
    assert any(prefix[i : i + 3] == date_ids for i in range(len(prefix))), "training prefix"


def test_elicitation_bench_encodes_as_training_does(llama):
    from bench.elicitation import Scorer

    cfg = build_config({"episodes": {"template": "chat"}})
    threads = torch.get_num_threads()
    try:
        scorer = Scorer(str(llama), str(llama), cfg, threads=1)
    finally:
        torch.set_num_threads(threads)
    enc = encode_episode(Episode("u", (Preference("w1", "w2", "w3"),), (Preference("w4", "w5", "w6"),)),
                         scorer._encode, **scorer.kwargs)
    tok = scorer.tok
    assert enc.prefix_ids.count(tok.bos_token_id) == 1 and enc.prefix_ids[0] == tok.bos_token_id
    assert CHAT_DATE in tok.decode(enc.prefix_ids)


# --------------------------------------------------------------------------- BOS


def test_one_bos_starts_every_prompt_of_a_bos_adding_tokenizer(llama):
    tok = llama3_tokenizer()
    bos = tok.bos_token_id
    assert bos_prefix_ids(tok) == [bos]
    chat = render_chat(tok, MESSAGES)  # the template writes the BOS itself
    for template in ("markdown", "chat"):
        plan, stage = _stage(template)
        examples, _ = encode_examples(stage_episodes(_users(), stage, plan, 0), tok, stage, plan)
        for e in examples:
            head = e["prefix_ids"] + e["queries"][0]["question_ids"]
            assert head[0] == bos and head.count(bos) == 1, template
    engine = HFEngine(str(llama), device="cpu")
    for row in _rows(engine._inputs([PROMPT, chat, "w5"])):
        assert row[0] == bos and row.count(bos) == 1
    tokenize = PromptTokenizer(str(llama))
    for row in ({"prompt": PROMPT}, {"prompt": chat}, {"messages_json": json.dumps(MESSAGES)}):
        ids = tokenize(row)["tokenized_prompt"]
        assert ids[0] == bos and ids.count(bos) == 1


@pytest.mark.parametrize("kind", ["bpe", "words"])
def test_the_tiny_tokenizers_encode_as_before(kind, tmp_path):
    from fspo_ray.world.rendering import COMPACT_WORDS

    if kind == "bpe":
        tok = train_tokenizer([f"user {i} likes short answers in prose" for i in range(50)], vocab_size=300)
    else:
        tok = train_word_tokenizer(COMPACT_WORDS, template_pieces())
    assert bos_prefix_ids(tok) == []
    prompts = ["user 1 likes short answers", "user 2 likes prose"]
    # Training: what encode_episode gives without a BOS argument (the encoding before this change).
    plan, stage = _stage("markdown")
    episodes = stage_episodes(_users(), stage, plan, 0)
    examples, _ = encode_examples(episodes, tok, stage, plan)
    plain = [encode_episode(e, lambda t: tok(t, add_special_tokens=False)["input_ids"], eos_token=tok.eos_token,
                            max_length=plan.max_length, min_shots=stage.min_shots, template=plan.template,
                            rat=stage.rat, task=stage.task, signed=plan.signed_shots).as_tree_example()
             for e in episodes]
    assert [{k: e[k] for k in ("prefix_ids", "queries")} for e in examples] == plain
    # Engines: the ids and padding of tokenizer(prompts, add_special_tokens=False).
    model = build_tiny_model(tok, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                             max_position_embeddings=256)
    engine = HFEngine(str(save_model(model, tok, tmp_path)), device="cpu")
    before = engine.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    after = engine._inputs(prompts)
    assert torch.equal(after["input_ids"], before["input_ids"])
    assert torch.equal(after["attention_mask"], before["attention_mask"])
    assert PromptTokenizer(str(tmp_path))({"prompt": prompts[0]})["tokenized_prompt"] == \
        tok(prompts[0], add_special_tokens=False)["input_ids"]
    assert encode_prompt(tok, prompts[1]) == tok(prompts[1], add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- attention


def test_training_refuses_flash_attention_2_at_config_time():
    from typing import get_args

    assert set(get_args(ModelConfig.model_fields["attn_implementation"].annotation)) == set(TRAIN_ATTENTION)
    assert set(TRAIN_ATTENTION) == set(MASKED_ATTENTION)
    with pytest.raises(ConfigError, match=r"model\.attn_implementation: .*flash_attention_2 cannot train.*4D attention"):
        build_config({"model": {"attn_implementation": "flash_attention_2"}})
    assert EngineConfig(model="m", attn_implementation="flash_attention_2").attn_implementation == "flash_attention_2"


def test_personalizer_counts_a_prompt_as_the_engine_feeds_it(llama):
    """The prompt budget (max_prompt_tokens) counts the BOS the engine puts in front."""
    from fspo_ray.personalize import _Stage

    engine = HFEngine(str(llama), device="cpu")
    stage = _Stage(engine, EngineConfig(kind="hf", model=str(llama)), "markdown", 64)
    fed = _rows(engine._inputs([PROMPT]))[0]
    assert stage.count_prompt(PROMPT) == len(fed) == stage.count(PROMPT) + 1
