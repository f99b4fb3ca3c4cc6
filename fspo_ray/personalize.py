"""Two-stage RAT generation: describe the user from their shots, then answer conditioned on
shots + description. One API for evaluation (batched) and serving (one request, streamed).

User-supplied text (preferences, questions) is data, never instructions: chat-template
special tokens are stripped, markdown header lines are escaped so the template's own headers
stay the only delimiters, and with the chat template it only ever enters the user turn.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from fspo_ray.engines.config import EngineConfig, Sampling
from fspo_ray.engines.local import Engine, build_engine
from fspo_ray.episodes import (
    RESPONSE_HEADER,
    Preference,
    apply_chat,
    render_describe_prompt,
    render_prompt,
)
from fspo_ray.errors import FspoError
from fspo_ray.modeling import bos_prefix_ids, encode_prompt
from fspo_ray.prompting import DEFAULTS, contract_of, setting
from fspo_ray.sections import ConfigError, Section

# Generation stops where the model would open a new template section: a header at a line start, or
# a template header anywhere (a word-level tokenizer decodes without the newlines).
SECTION_STOPS = ("\n# ", "\n## ", "# Example", "## Question", "## Preferred Response", "## Dispreferred Response",
                 "## User Description", "# Task")

# Chat-template control strings of common model families, beyond the tokenizer's own special
# tokens: Llama-3 / ChatML / Phi `<|...|>`, Llama-2 `[INST]` and `<<SYS>>`, Gemma turns, `<s>`.
_GENERIC_SPECIALS = re.compile(
    r"<\|[^<>|\s]{1,64}\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|</?s>", re.IGNORECASE
)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADER_LINE = re.compile(r"^([ \t]*)(#)", re.MULTILINE)


class PromptTooLongError(FspoError):
    """The question (and description) alone do not fit the model's context window."""


def sanitize_user_text(text: str, special_tokens: Sequence[str] = ()) -> str:
    """User text made inert inside the prompt template.

    - special tokens (the tokenizer's and common chat-template markers) are removed, repeatedly,
      since removing one can join the halves of another (`<|eot<|eot_id|>_id|>`);
    - control characters are dropped and line ends normalised;
    - a line starting with '#' is escaped to '\\#', so user text cannot open a template section
      (`# Task`, `## Preferred Response`): the template's headers stay the only delimiters.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    tokens = sorted((t for t in special_tokens if t), key=len, reverse=True)
    previous = None
    while previous != text:
        previous = text
        for tok in tokens:
            text = text.replace(tok, "")
        text = _GENERIC_SPECIALS.sub("", text)
    text = _HEADER_LINE.sub(lambda m: m.group(1) + "\\" + m.group(2), text)
    return text.strip()


# --------------------------------------------------------------------------- config


class StageEngineConfig(EngineConfig):
    """One stage's engine: its model is required, and sampling stops where the model would open a
    new section of the template."""

    model: str = Field(..., min_length=1, description="Hugging Face directory or hub id of this stage's model; "
                       "'{output_dir}' is replaced.")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vllm only: share of GPU memory vLLM may use.")

    def sampling(self, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: tuple[str, ...] = SECTION_STOPS) -> Sampling:
        return super().sampling(max_new_tokens, temperature, top_p, seed, stop)


class PersonalizeConfig(Section):
    """The two RAT stages: a persona (describe) model and an answer model, and how they are prompted.

    The prompt settings default to how the stage models were trained (their fspo_prompt.json); an
    explicit one that contradicts it is refused unless override_prompt_contract is true."""

    persona: StageEngineConfig = Field(..., description="Stage 1: writes the user description from the shots.")
    answer: StageEngineConfig = Field(..., description="Stage 2: answers from shots + description + question.")
    template: Literal["markdown", "chat"] | None = Field(
        None, description="'markdown': the official FSPO template; 'chat': it as one user turn of the chat template. "
        "Unset: as each stage's model was trained, else markdown."
    )
    signed_shots: bool | None = Field(
        None, description="Sign tokens on the shots' responses ('+word' preferred, '-word' dispreferred). Unset: as "
        "each stage's model was trained, else off."
    )
    num_shots: int | None = Field(
        None, ge=1, description="Most recent preferences rendered as shots (older ones are ignored). Unset: the N "
        "the models were trained with, else 8."
    )
    rat: bool | None = Field(
        None, description="The answer stage reads the persona stage's description (RAT). Unset: as the answer "
        "model was trained, else true."
    )
    override_prompt_contract: bool = Field(
        False, description="Allow template, signed_shots, num_shots or rat to differ from how the models were "
        "trained (their fspo_prompt.json); off: such a setting is an error naming both values."
    )
    max_prompt_tokens: int | None = Field(
        None, ge=16, description="Prompt + generation token budget; whole oldest shots are dropped to fit "
        "(unset: the model's context length)."
    )


def resolve_prompting(cfg: PersonalizeConfig, where: str = "personalize") -> PersonalizeConfig:
    """The config with num_shots and rat decided from the stage models' prompt contracts, after
    refusing explicit settings that contradict them (template and sign tokens are decided per
    stage, by the Personalizer, under the same rule)."""
    over = cfg.override_prompt_contract
    stages = {name: (getattr(cfg, name).model, contract_of(getattr(cfg, name).model)) for name in ("persona", "answer")}
    for model, contract in stages.values():
        for name in ("template", "signed_shots", "num_shots"):
            setting(where, name, getattr(cfg, name), model, contract, override=over)
    num_shots = cfg.num_shots
    if num_shots is None:
        trained = {name: c["num_shots"] for name, (_, c) in stages.items() if c.get("num_shots")}
        if len(set(trained.values())) > 1:
            raise ConfigError(
                f"{where}.num_shots is unset and the stage models were trained with different N (persona "
                f"{trained['persona']}, answer {trained['answer']}); set {where}.num_shots and "
                f"{where}.override_prompt_contract=true"
            )
        num_shots = next(iter(trained.values()), DEFAULTS["num_shots"])
    answer_model, answer_contract = stages["answer"]
    rat = setting(where, "rat", cfg.rat, answer_model, answer_contract, override=over)
    return cfg.model_copy(update={"num_shots": num_shots, "rat": rat})


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # generated tokens (of the returned text)
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]
    shots_used: int


class _Stage:
    """One engine with its tokenizer-derived prompt helpers."""

    def __init__(self, engine: Engine, cfg: EngineConfig, template: str, max_prompt_tokens: int | None,
                 signed_shots: bool = False):
        self.engine, self.cfg, self.template, self.signed_shots = engine, cfg, template, signed_shots
        self.tokenizer = getattr(engine, "tokenizer", None)
        # The model's BOS, decided once (the prompt budget is checked on every request).
        self.bos_ids = [] if self.tokenizer is None else bos_prefix_ids(self.tokenizer)
        if template == "chat" and (self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None)):
            raise FspoError(f"template 'chat' needs a tokenizer with a chat template; {cfg.model} has none")
        specials = set(getattr(self.tokenizer, "all_special_tokens", []) or [])
        added = (getattr(self.tokenizer, "added_tokens_decoder", {}) or {}).values()
        specials |= {t.content for t in added if getattr(t, "special", False)}  # e.g. Llama-3's reserved tokens
        self.special_tokens = tuple(sorted(specials))
        self.max_prompt_tokens = max_prompt_tokens or getattr(engine, "context_length", None)
        # HFEngine serialises its own calls; an engine without streaming (vLLM's offline LLM) is
        # not safe to call from two threads at once, so its calls go one at a time here.
        self.serial = threading.Lock() if not hasattr(engine, "stream") else contextlib.nullcontext()

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def count_prompt(self, prompt: str) -> int:
        """A whole prompt's tokens as the engine feeds them (the model's BOS included, when it has one)."""
        if self.tokenizer is None:
            return self.count(prompt)
        return len(encode_prompt(self.tokenizer, prompt, self.bos_ids))

    def wrap(self, markdown_prompt: str) -> str:
        if self.template == "chat":
            return apply_chat(markdown_prompt, self.tokenizer.apply_chat_template)
        return markdown_prompt


class Personalizer:
    """`describe(shots) -> description`, then `answer(shots, description, question) -> text`.

    Either stage may be absent (a Serve replica holds one); using it is then an error.
    """

    def __init__(self, persona_engine: Engine | None, answer_engine: Engine | None, cfg: PersonalizeConfig):
        self.cfg = cfg = resolve_prompting(cfg)
        budget = cfg.max_prompt_tokens
        self._persona = self._answer = None
        if persona_engine:
            template, signed = self._prompting(cfg, cfg.persona)
            self._persona = _Stage(persona_engine, cfg.persona, template, budget, signed)
        if answer_engine:
            template, signed = self._prompting(cfg, cfg.answer)
            self._answer = _Stage(answer_engine, cfg.answer, template, budget, signed)

    @staticmethod
    def _prompting(cfg: PersonalizeConfig, stage: EngineConfig) -> tuple[str, bool]:
        """(template, signed shots) of one stage: as its model was trained (its fspo_prompt.json) unless
        the config says otherwise, which must agree with it (or override it on purpose)."""
        contract, over = contract_of(stage.model), cfg.override_prompt_contract
        return (setting("personalize", "template", cfg.template, stage.model, contract, override=over),
                setting("personalize", "signed_shots", cfg.signed_shots, stage.model, contract, override=over))

    @classmethod
    def from_config(cls, cfg: PersonalizeConfig, stages: Sequence[str] = ("persona", "answer")) -> Personalizer:
        """Build the engines `stages` need; one engine is shared when both stages name the same model."""
        persona = build_engine(cfg.persona) if "persona" in stages else None
        if "answer" not in stages:
            answer = None
        elif persona is not None and cfg.answer.model_dump(exclude={"max_new_tokens", "temperature", "top_p"}) == \
                cfg.persona.model_dump(exclude={"max_new_tokens", "temperature", "top_p"}):
            answer = persona
        else:
            answer = build_engine(cfg.answer)
        return cls(persona, answer, cfg)

    # ------------------------------------------------------------------ prompts

    def _stage(self, name: str) -> _Stage:
        stage = self._persona if name == "persona" else self._answer
        if stage is None:
            raise FspoError(f"this Personalizer has no {name} engine")
        return stage

    def _clean_shots(self, stage: _Stage, shots: Sequence[Preference]) -> list[Preference]:
        recent = list(shots)[-self.cfg.num_shots :]
        clean = lambda t: sanitize_user_text(t, stage.special_tokens)  # noqa: E731
        return [Preference(clean(s.question), clean(s.chosen), clean(s.rejected)) for s in recent]

    def _fit(self, stage: _Stage, shots: list[Preference], render, max_new_tokens: int) -> tuple[str, int, int]:
        """Drop whole oldest shots until prompt + generation fit; the question is never cut."""
        while True:
            prompt = render(shots)
            n = stage.count_prompt(prompt)
            if stage.max_prompt_tokens is None or n + max_new_tokens <= stage.max_prompt_tokens:
                return prompt, n, len(shots)
            if not shots:
                raise PromptTooLongError(
                    f"the prompt needs {n} tokens plus {max_new_tokens} to generate, over the model's budget of "
                    f"{stage.max_prompt_tokens} tokens even with no shots; send a shorter question or fewer max_tokens"
                )
            shots = shots[1:]

    def describe_prompt(self, shots: Sequence[Preference], max_new_tokens: int | None = None) -> tuple[str, int, int]:
        """(prompt, prompt tokens, shots kept) for stage 1: shots, then the describe task."""
        stage = self._stage("persona")
        budget = max_new_tokens or stage.cfg.max_new_tokens
        return self._fit(stage, self._clean_shots(stage, shots),
                         lambda s: stage.wrap(render_describe_prompt(s, stage.signed_shots)), budget)

    def answer_prompt(self, shots: Sequence[Preference], description: str | None, question: str,
                      max_new_tokens: int | None = None) -> tuple[str, int, int]:
        """(prompt, prompt tokens, shots kept) for stage 2; the prompt ends with the response header,
        the first tokens of every completion the answer model was trained on. The description block is
        there only for an answer model that reads one (rat)."""
        stage = self._stage("answer")
        budget = max_new_tokens or stage.cfg.max_new_tokens
        q = sanitize_user_text(question, stage.special_tokens)
        d = None if description is None or not self.cfg.rat else sanitize_user_text(description, stage.special_tokens)
        return self._fit(stage, self._clean_shots(stage, shots),
                         lambda s: stage.wrap(render_prompt(s, q, d, stage.signed_shots)) + RESPONSE_HEADER, budget)

    # ------------------------------------------------------------------ generation

    def generate_from_prompts(self, name: Literal["persona", "answer"], prompts: Sequence[tuple[str, int, int]],
                              sampling: Sampling) -> list[Generation]:
        """One batched engine call over prompts made by describe_prompt / answer_prompt."""
        stage = self._stage(name)
        with stage.serial:
            texts = stage.engine.generate([p for p, _, _ in prompts], sampling)
        out = []
        for (_, n_prompt, kept), text in zip(prompts, texts, strict=True):
            text = text.strip()
            n = stage.count(text)
            finish = "length" if n >= sampling.max_new_tokens else "stop"
            out.append(Generation(text, n, n_prompt, finish, kept))
        return out

    def describe_many(self, shots_list: Sequence[Sequence[Preference]], sampling: Sampling | None = None) -> list[Generation]:
        """Stage 1 for many users in one batched call."""
        sampling = sampling or self._stage("persona").cfg.sampling()
        prompts = [self.describe_prompt(s, sampling.max_new_tokens) for s in shots_list]
        return self.generate_from_prompts("persona", prompts, sampling)

    def answer_many(self, items: Sequence[tuple[Sequence[Preference], str | None, str]],
                    sampling: Sampling | None = None) -> list[Generation]:
        """Stage 2 for many (shots, description, question) items in one batched call."""
        sampling = sampling or self._stage("answer").cfg.sampling()
        prompts = [self.answer_prompt(s, d, q, sampling.max_new_tokens) for s, d, q in items]
        return self.generate_from_prompts("answer", prompts, sampling)

    def describe(self, shots: Sequence[Preference]) -> str:
        return self.describe_many([shots])[0].text

    def answer(self, shots: Sequence[Preference], description: str | None, question: str) -> str:
        return self.answer_many([(shots, description, question)])[0].text

    def stream_answer(self, shots: Sequence[Preference], description: str | None, question: str,
                      sampling: Sampling | None = None, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stage 2, yielding text pieces; setting `cancel` stops generation at the next token."""
        sampling = sampling or self._stage("answer").cfg.sampling()
        prompt, _, _ = self.answer_prompt(shots, description, question, sampling.max_new_tokens)
        return self.stream_prompt(prompt, sampling, cancel)

    def stream_prompt(self, prompt: str, sampling: Sampling, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stream an answer_prompt. Engines without streaming (vLLM's offline engine) yield the whole
        answer as one piece. Surrounding whitespace is held back, so the pieces join to exactly the
        text `answer_many` returns."""
        stage = self._stage("answer")
        engine = stage.engine
        if not hasattr(engine, "stream"):
            with stage.serial:
                text = engine.generate([prompt], sampling)[0].strip()
            yield text
            return
        pending, started = "", False
        for piece in engine.stream(prompt, sampling, cancel):
            if cancel is not None and cancel.is_set():
                break  # pieces generated before the cancel took effect are not wanted either
            pending += piece
            if not started:
                pending = pending.lstrip()
            emit = pending.rstrip()
            if emit:
                started = True
                yield emit
                pending = pending[len(emit):]

    def count_tokens(self, stage: Literal["persona", "answer"], text: str) -> int:
        return self._stage(stage).count(text)
