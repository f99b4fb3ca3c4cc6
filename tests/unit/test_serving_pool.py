"""The page's pair pool: the JSONL loader names the first bad row by line; the world pool's pairs
differ on the question's axes, and each text exists as the model reads it and as a person does."""

import json

import pytest

from fspo_ray.serving import world_text
from fspo_ray.serving.pool import PoolError, jsonl_pool, world_pool
from fspo_ray.world import World, WorldParams, read

GOOD = {"question": "Plan my weekend.", "answer_a": "Two bullets.", "answer_b": "A long essay."}


def write(tmp_path, rows, name="pool.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_pool_reads_pairs_ids_and_features(tmp_path):
    rows = [GOOD, "", {**GOOD, "question": "What to cook?", "id": "cook",
                       "features_a": {"length": "concise"}, "features_b": {"length": "detailed"}}]
    pool = jsonl_pool(write(tmp_path, rows), max_chars=100)
    assert [p.pair_id for p in pool.pairs] == ["line-1", "cook"]  # the blank line 2 is skipped, lines still count
    cook = pool.pairs[1]
    assert cook.question.model == cook.question.person == "What to cook?"
    assert cook.features == ({"length": "concise"}, {"length": "detailed"})
    assert pool.pairs[0].features is None and not pool.has_features
    # A stored preference finds its pair and the side chosen, in either order.
    assert pool.answered("What to cook?", "A long essay.", "Two bullets.") == (1, 1)
    assert pool.answered("Plan my weekend.", "Two bullets.", "A long essay.") == (0, 0)
    assert pool.answered("Plan my weekend.", "Two bullets.", "something else") is None


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 3: not valid JSON"),
    ('["a", "b"]', "line 3: must be a JSON object, got list"),
    ({"question": "q", "answer_a": "a"}, "line 3: answer_b must be a non-empty string"),
    ({**GOOD, "question": "   "}, "line 3: question must be a non-empty string"),
    ({**GOOD, "answer_b": 7}, "line 3: answer_b must be a non-empty string"),
    ({**GOOD, "answer_b": "Two bullets. "}, "line 3: answer_a and answer_b are the same text"),
    ({**GOOD, "chosen": "x"}, "line 3: unknown key 'chosen'"),
    ({**GOOD, "features_a": {"tone": "formal"}}, "line 3: give both features_a and features_b, or neither"),
    ({**GOOD, "features_a": {"tone": 1}, "features_b": {"tone": "casual"}}, "line 3: features_a must be"),
    ({**GOOD, "id": "dup"}, "line 3: id 'dup' repeats line 2"),
    ({**GOOD, "answer_a": "x" * 101}, "line 3: answer_a has 101 characters; the limit is 100"),
])
def test_jsonl_pool_names_the_first_bad_row_by_line(tmp_path, bad, message):
    rows = [GOOD, {**GOOD, "id": "dup"}, bad, {"broken": "later rows are not reached"}]
    with pytest.raises(PoolError, match="pool.jsonl: " + message.replace("(", r"\(").replace("[", r"\[")):
        jsonl_pool(write(tmp_path, rows), max_chars=100)


def test_jsonl_pool_empty_or_missing_file(tmp_path):
    with pytest.raises(PoolError, match="holds no pairs"):
        jsonl_pool(write(tmp_path, ["", "  "]), max_chars=100)
    with pytest.raises(PoolError, match="page.pairs.path: cannot read"):
        jsonl_pool(tmp_path / "absent.jsonl", max_chars=100)


def test_world_pool_pairs_differ_on_relevant_axes_and_read_back_as_their_views():
    world = World(WorldParams(seed=3))
    pool = world_pool(world, "text", size=30, seed=1)
    assert len(pool) == 30 and pool.has_features
    assert [p.pair_id for p in world_pool(world, "text", size=30, seed=1).pairs] == [p.pair_id for p in pool.pairs]
    assert [p.pair_id for p in world_pool(world, "text", size=30, seed=2).pairs] != [p.pair_id for p in pool.pairs]
    assert {p.world_question.domain for p in pool.pairs} == set(world.params.domains)  # domains in turn
    assert len({p.world_question.question_id for p in pool.pairs}) == 30
    for p in pool.pairs:
        q = p.world_question
        fa, fb = p.features
        assert set(fa) == set(fb) == set(q.relevant_axes)
        assert fa != fb  # the answers differ on at least one relevant axis
        for text, view in zip(p.answers, p.features, strict=True):
            assert text.model == text.person  # the text rendering: the model reads what a person reads
            assert {a: v for a, v in read(text.person).items() if a in q.relevant_axes} == view
        assert p.question.person == q.text


@pytest.mark.skipif(world_text.compact_question is None, reason="this world has no compact rendering")
def test_world_pool_compact_rendering_keeps_sentences_for_the_person():
    pool = world_pool(World(WorldParams(seed=0)), "compact", size=40)
    p = pool.pairs[0]
    q = p.world_question
    assert p.question.model == f"{q.domain}: {' '.join(q.relevant_axes)}" and p.question.person == q.text
    for text, view in zip(p.answers, p.features, strict=True):
        assert text.model == ", ".join(f"{a}: {view[a]}" for a in q.relevant_axes)
        assert ":" not in text.person and read(text.person) == view
    # Shown back as it was asked, even though a compact question stands for several questions.
    assert pool.person_answer(p.question.model, p.answers[1].model) == p.answers[1].person
    assert len({(x.question.model, x.answers[0].model, x.answers[1].model) for x in pool.pairs}) == 40
