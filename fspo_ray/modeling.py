"""Models: build the offline tiny tokenizer + Llama-shaped LM, and load any causal LM.

`load_model_and_tokenizer` is the one loader every stage uses: it takes a directory made by
`build_tiny_model` or a hub id / path of a real model (Llama-3.2-3B-Instruct on a GPU cluster).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fspo_ray.errors import FspoError
from fspo_ray.layout import looks_local
from fspo_ray.sections import Section

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "pad": "<|pad|>"}
CHAT_TURN_START, CHAT_TURN_END = "<|start_header_id|>", "<|eot_id|>"
CHAT_HEADER_END = "<|end_header_id|>"
UNK_TOKEN = "<|unk|>"
# A Llama-3-style chat template for the tiny model, so the chat rendering path is exercised.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class TinyModelConfig(Section):
    """Sizes of the tiny Llama-shaped model and tokenizer that build_model trains offline."""

    output: str = Field("{output_dir}/models/tiny", description="Where build_model saves the model and tokenizer.")
    corpus_files: list[str] = Field(
        default_factory=list,
        description="Text files (one sentence a line) to train the tokenizer on; empty: the world's text.",
    )
    corpus_sentences: int = Field(20000, ge=100, description="Sentences of world text when corpus_files is empty.")
    tokenizer: Literal["bpe", "words"] = Field(
        "bpe",
        description="'bpe': byte-level BPE trained on the corpus (any text); 'words': one token per word of the "
        "world's compact rendering and per header of the prompt template (world.rendering=compact).",
    )
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary size (byte-level; >= 256 + special tokens).")
    hidden_size: int = Field(256, ge=8, description="Model width.")
    intermediate_size: int = Field(688, ge=8, description="MLP width.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(4, ge=1, description="Key/value heads (grouped-query attention when < num_heads).")
    max_position_embeddings: int = Field(2048, ge=64, description="Longest sequence the model supports.")
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings.")
    initializer_range: float = Field(
        0.02, gt=0.0, description="Std of the random initial weights (Llama's default 0.02; the compact world uses 0.1, "
        "which leaves attention less uniform at the start and shortens the plateau before in-context reading)."
    )

    @model_validator(mode="after")
    def _check(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self


class ModelLoadError(FspoError):
    """A model path that cannot be loaded; the message says what is missing."""


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*SPECIAL_TOKENS.values(), CHAT_TURN_START, CHAT_HEADER_END, CHAT_TURN_END]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        additional_special_tokens=[CHAT_TURN_START, CHAT_HEADER_END, CHAT_TURN_END],
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def train_word_tokenizer(words: Iterable[str], template_pieces: Iterable[str], max_index: int = 64):
    """A word-level tokenizer for the world's compact rendering: one token per word, one per
    header of the prompt template (so `## Preferred Response` is a single segment token), and
    one per example index 1..max_index. Punctuation of the compact rendering (`:` and `,`) is
    dropped; unknown words map to `<|unk|>`. Wrapped as a PreTrainedTokenizerFast with the same
    special tokens and chat template as the BPE tokenizer, so every stage loads it the same way.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from fspo_ray.world.rendering import COMPACT_PUNCTUATION

    specials = [*SPECIAL_TOKENS.values(), CHAT_TURN_START, CHAT_HEADER_END, CHAT_TURN_END, UNK_TOKEN]
    words = list(words)
    # Each word also as a sign token, '+word' / '-word': episodes.signed_shots marks the words of a shot's
    # preferred / dispreferred response with them.
    signed = [f"{sign}{w}" for sign in "+-" for w in words]
    plain = list(dict.fromkeys([*words, *signed, *(str(i) for i in range(1, max_index + 1)), "user", "assistant", "system"]))
    vocab = {t: i for i, t in enumerate(specials + plain)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Replace(Regex(f"[{COMPACT_PUNCTUATION}]"), " ")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Headers match on the raw text before normalization, longest first.
    pieces = sorted({p.strip() for p in template_pieces if p.strip()}, key=len, reverse=True)
    tok.add_tokens([AddedToken(p, normalized=False, single_word=False) for p in pieces])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=UNK_TOKEN,
        additional_special_tokens=[CHAT_TURN_START, CHAT_HEADER_END, CHAT_TURN_END],
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def template_pieces() -> list[str]:
    """The fixed strings of the FSPO prompt template (fspo_ray.episodes), one token each."""
    from fspo_ray import episodes as ep

    return [ep.TASK_LINE, ep.DESCRIBE_TASK_LINE, ep.RESPONSE_HEADER, ep.DESCRIPTION_HEADER,
            "# Example", "## Question", "## Dispreferred Response"]


def build_tiny_model(tokenizer, *, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int,
                     num_kv_heads: int, max_position_embeddings: int, tie_word_embeddings: bool = True, seed: int = 0,
                     initializer_range: float = 0.02):
    """A randomly initialised Llama-shaped causal LM sized for `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _check_local_dir(path: Path) -> None:
    if not path.is_dir():
        return
    if not any((path / f).exists() for f in WEIGHT_FILES):
        raise ModelLoadError(
            f"model directory {path} has no weights (expected one of {', '.join(WEIGHT_FILES)}); "
            "run `python -m jobs.build_model` or point model.name_or_path at a trained checkpoint"
        )
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {path} has no tokenizer (expected {' or '.join(TOKENIZER_FILES[:2])}); "
            "save it with tokenizer.save_pretrained(dir) next to the weights"
        )


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    if path.is_dir() and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {path} has no tokenizer (expected {' or '.join(TOKENIZER_FILES[:2])}); "
            "save it with tokenizer.save_pretrained(dir) next to the weights"
        )
    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Real Llama-3 tokenizers ship without a pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    model_kwargs: dict | None = None,
):
    """Load (model, tokenizer) from a local directory or a hub id, with dtype and attention from config;
    `model_kwargs` go to from_pretrained as they are (an engine config's engine_kwargs)."""
    from transformers import AutoModelForCausalLM

    path = Path(name_or_path)
    if path.exists():
        _check_local_dir(path)
    elif looks_local(name_or_path):
        raise ModelLoadError(f"model path {name_or_path} does not exist")
    kwargs = dict(model_kwargs or {})
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype=resolve_dtype(dtype, device),
            attn_implementation=attn_implementation,
            **kwargs,
        )
    except OSError as e:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {e}") from None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def default_device() -> str:
    """'cuda' or 'cpu' for a model whose config names no device.

    Inside a Ray task or actor: cuda only when Ray gave it a GPU. Ray 2.60 no longer hides the
    GPUs from a process that asked for none (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO now defaults off),
    so torch alone would put a 0-GPU actor on cuda:0, next to whatever Ray placed there (OOM beside
    vLLM). Outside Ray: cuda when there is one.
    """
    import ray
    import torch

    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a reply: the model's generation_config.eos_token_id (an int or a list;
    Llama-3.2-Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>), then the tokenizer's EOS, each once.

    `generate(eos_token_id=tokenizer.eos_token_id)` would replace the model's list, and a reply would
    run past the <|eot_id|> where vLLM, which stops on the whole list, ends it."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        ids = []
    elif isinstance(configured, int):
        ids = [configured]
    else:
        ids = list(configured)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids))


def bos_prefix_ids(tokenizer) -> list[int]:
    """[bos_token_id] when the tokenizer adds a BOS by default (Llama-3's post-processor does), else [].

    Prompts are tokenized with add_special_tokens=False (training tokenizes prefix, question and
    completions apart), so the BOS such a model was trained with is put back once, on the prompt's
    ids only (`with_bos`). The project's tiny tokenizers add none: for them this is []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    return [bos] if tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos] else []


def encode_prompt(tokenizer, text: str, bos_ids: Sequence[int] | None = None) -> list[int]:
    """A whole prompt's token ids as every engine and training see them: the text without added
    special tokens, after the model's BOS when it uses one (`bos_ids`: bos_prefix_ids, computed once)."""
    from fspo_ray.episodes import with_bos

    if bos_ids is None:
        bos_ids = bos_prefix_ids(tokenizer)
    return with_bos(tokenizer(text, add_special_tokens=False)["input_ids"], bos_ids)


def prompt_batch(tokenizer, prompts: Sequence[str], bos_ids: Sequence[int]):
    """`encode_prompt` of each prompt, padded on the tokenizer's padding side (left, for generate):
    the batch `model.generate` takes (input_ids, attention_mask)."""
    return tokenizer.pad({"input_ids": [encode_prompt(tokenizer, p, bos_ids) for p in prompts]}, return_tensors="pt")


PROMPT_CONTRACT = "fspo_prompt.json"


def read_prompt_contract(name_or_path: str) -> dict | None:
    """How a model exported by a training stage expects its prompts (template, signed shots,
    trained N, RAT, ...), from `fspo_prompt.json` next to its weights; None for other models
    (a hub id, a model this project did not train)."""
    import json

    path = Path(name_or_path) / PROMPT_CONTRACT
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def corpus_texts(cfg) -> list[str]:
    """Text for the tokenizer: the configured files, else the simulated world's text."""
    from fspo_ray.errors import FspoError

    tcfg = cfg.tiny_model
    if tcfg.corpus_files:
        texts: list[str] = []
        for f in tcfg.corpus_files:
            p = Path(f)
            if not p.is_file():
                raise FspoError(f"tiny_model.corpus_files: {p} does not exist")
            texts.extend(line for line in p.read_text().splitlines() if line.strip())
        if not texts:
            raise FspoError(f"tiny_model.corpus_files: {tcfg.corpus_files} hold no text")
        return texts
    from fspo_ray.world import world_from_config

    return world_from_config(cfg.world).corpus(tcfg.corpus_sentences)


def build_tiny_from_config(cfg) -> Path:
    """Train the tokenizer on the corpus, build the model from `cfg.tiny_model`, save both."""
    t = cfg.tiny_model
    if t.tokenizer == "words":
        from fspo_ray.world.rendering import COMPACT_WORDS

        tokenizer = train_word_tokenizer(COMPACT_WORDS, template_pieces())
    else:
        tokenizer = train_tokenizer(corpus_texts(cfg), t.vocab_size)
    model = build_tiny_model(
        tokenizer,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        num_kv_heads=t.num_kv_heads,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=t.tie_word_embeddings,
        seed=cfg.seed,
        initializer_range=t.initializer_range,
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny model: %.2fM parameters, vocab %d", n_params / 1e6, len(tokenizer))
    return save_model(model, tokenizer, t.output)
