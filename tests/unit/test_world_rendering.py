"""The compact rendering: the same users, pairs and labels as the text rendering, read back by the
same reader, and a word tokenizer that spends one token per word and per template header."""

import pytest

from fspo_ray.episodes import Preference, render_prompt, render_shot, sign_words
from fspo_ray.world import World, WorldParams, read
from fspo_ray.world.reader import read_compact
from fspo_ray.world.rendering import (
    COMPACT_WORDS,
    compact_question,
    compact_response,
    display_text,
    parse_compact_question,
)


def _pairs(rendering: str, n_users: int = 6) -> list[dict]:
    world = World(WorldParams(seed=3, rendering=rendering, judge_noise=0.0))
    return [r for u in world.user_ids("train", n_users) for r in world.user_preferences(u, 10)]


def test_compact_rendering_holds_the_same_pairs_labels_and_views_as_text():
    text, compact = _pairs("text"), _pairs("compact")
    assert len(text) == len(compact) == 60
    for t, c in zip(text, compact, strict=True):
        assert (t["user_id"], t["question_id"], t["view_chosen"], t["view_rejected"]) == (
            c["user_id"], c["question_id"], c["view_chosen"], c["view_rejected"])
        assert read(t["chosen"]) == read(c["chosen"]) == c["view_chosen"]  # both read back to the chosen view
        assert t["user_profile"] == c["user_profile"]
    row = compact[0]
    world = World(WorldParams(seed=3))
    q = world.question(row["question_id"])
    assert row["question"] == compact_question(q) == f"{q.domain}: {' '.join(q.relevant_axes)}"
    assert row["chosen"] == compact_response(q, row["view_chosen"])
    assert read_compact(row["user_description"]) == row["user_profile"]  # the refined persona, axis then value
    assert ", " in row["user_description"] and "." not in row["user_description"]


def test_reader_reads_compact_items_with_or_without_punctuation():
    assert read_compact("length: concise, tone: formal, medium: hands-on") == {
        "length": "concise", "tone": "formal", "medium": "hands-on"}
    assert read_compact("length concise tone formal") == {"length": "concise", "tone": "formal"}  # decoded model output
    assert read_compact("tone: concise") == {}  # a value of another axis is not read
    assert read_compact("In short, with due respect.") == {}
    assert read("length: concise, tone: formal") == {"length": "concise", "tone": "formal"}


def test_display_text_writes_sentences_that_read_back_to_the_same_view():
    world = World(WorldParams(seed=0))
    q = world.questions("elix")[0]
    view = {a: v for a, v in q.mode}
    compact = compact_response(q, view)
    sentences = display_text(q, compact)
    assert sentences != compact and read(sentences) == view
    assert display_text(q, "already sentences.") == "already sentences."
    assert world.find_question(q.text) == q
    assert world.find_question(compact_question(q)).relevant_axes == q.relevant_axes
    assert parse_compact_question("elix: length expertise") == ("elix", ("length", "expertise"))
    assert parse_compact_question("What is a cat?") is None


def test_signed_shots_mark_every_word_with_its_side():
    shot = Preference("roleplay: tone", "tone: formal", "tone: casual")
    assert sign_words("tone: formal, pace: fast", "+") == "+tone: +formal, +pace: +fast"
    assert "## Preferred Response \n+tone: +formal\n## Dispreferred Response \n-tone: -casual\n" in render_shot(1, shot, signed=True)
    assert render_shot(1, shot) == render_prompt([shot], "q").split("# Task")[0]  # unsigned: the official template


def test_word_tokenizer_one_token_per_word_and_header():
    from fspo_ray.modeling import template_pieces, train_word_tokenizer

    tok = train_word_tokenizer(COMPACT_WORDS, template_pieces())
    shot = Preference("roleplay: tone pace", "tone: formal, pace: fast", "tone: casual, pace: fast")
    prompt = render_prompt([shot], "roleplay: tone", signed=False)
    tokens = tok.convert_ids_to_tokens(tok(prompt, add_special_tokens=False)["input_ids"])
    assert tokens == ["# Example", "1", "## Question", "roleplay", "tone", "pace", "## Preferred Response", "tone",
                      "formal", "pace", "fast", "## Dispreferred Response", "tone", "casual", "pace", "fast",
                      tok.convert_ids_to_tokens(tok("# Task\nGiven the examples above, generate a preferred response to "
                                                    "the following question.", add_special_tokens=False)["input_ids"])[0],
                      "## Question", "roleplay", "tone"]
    signed = tok(render_prompt([shot], "roleplay: tone", signed=True), add_special_tokens=False)["input_ids"]
    assert "+formal" in tok.convert_ids_to_tokens(signed) and "-casual" in tok.convert_ids_to_tokens(signed)
    assert tok.unk_token_id not in signed
    assert tok.decode(tok("length: concise, tone: formal", add_special_tokens=False)["input_ids"]) == "length concise tone formal"


@pytest.mark.parametrize("bad", ["words"])
def test_words_tokenizer_needs_the_compact_world(bad):
    from fspo_ray.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="tiny_model.tokenizer=words knows only the compact rendering"):
        build_config({"tiny_model": {"tokenizer": bad}, "world": {"rendering": "text"}})
