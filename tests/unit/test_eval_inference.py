"""The Ray Data actor of evaluation, called in-process: prompts from the Personalizer, rows
grouped by model, greedy answers equal to the two-stage API's, bad rows counted not raised."""

import json

import pytest

from fspo_ray.episodes import Preference
from fspo_ray.evaluation.config import InferenceConfig, default_methods
from fspo_ray.evaluation.inference import OUTPUT_COLUMNS, AnswerActor, personalize_config
from fspo_ray.evaluation.plan import EvalQuestion, EvalUser, answer_request, describe_request
from fspo_ray.modeling import build_tiny_model, save_model, train_tokenizer
from fspo_ray.personalize import Personalizer

TEXTS = [f"they like {a} answers about {b}" for a in ("short", "long", "formal", "playful")
         for b in ("cooking", "travel", "money", "music")] * 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-inference")
    tok = train_tokenizer(TEXTS, vocab_size=300)
    out = {}
    for seed, name in ((0, "a"), (1, "b")):
        model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                 num_kv_heads=2, max_position_embeddings=2048, seed=seed)
        blank = [i for i in range(len(tok)) if not tok.decode([i]).strip()]
        model.generation_config.suppress_tokens = sorted(set(blank + tok.all_special_ids))  # never empty
        out[name] = str(save_model(model, tok, root / name))
    return out


USER = EvalUser("u1", "held_out", "elix", "they like short answers", None,
                tuple(Preference(f"question {i}?", f"short {i}", f"long {i}") for i in range(4)),
                (EvalQuestion("what about cooking?", None), EvalQuestion("and travel?", None)))


def _batch(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_actor_groups_by_model_and_matches_the_personalizer(models):
    inf = InferenceConfig(max_new_tokens=6, describe_max_new_tokens=5, batch_size=4)
    methods = default_methods()
    rows = [
        dict(answer_request("fspo", methods["fspo"], USER, 0, 4, None), model="a"),
        dict(describe_request("rat", USER, 2), model="b"),
        dict(answer_request("oracle", methods["oracle"], USER, 1, 4, USER.description), model="a"),
        dict(answer_request("base", methods["base"], USER, 1, 4, None), model="b"),
    ]
    actor = AnswerActor(models, inf.model_dump(), max_shots=4)
    out = actor(_batch(rows))
    assert list(out) == list(OUTPUT_COLUMNS)
    assert out["request_id"] == [r["request_id"] for r in rows]  # row order kept across model groups
    assert out["error"] == [""] * 4 and out["shots_used"] == [4, 2, 4, 0]
    # the same prompts through the two-stage API give the same greedy texts
    pa = Personalizer.from_config(personalize_config(models["a"], inf, 4))
    pb = Personalizer.from_config(personalize_config(models["b"], inf, 4))
    shots = list(USER.shot_pool)
    assert out["text"][0] == pa.answer(shots, None, "what about cooking?")
    assert out["text"][1] == pb.describe(shots[:2])
    assert out["text"][2] == pa.answer(shots, USER.description, "and travel?")
    assert out["text"][3] == pb.answer([], None, "and travel?")
    assert all(out["text"]) and out["finish_reason"][0] in ("stop", "length")
    assert set(actor._loaded) == {"a", "b"}  # each model loaded once, on first use


def test_a_prompt_that_cannot_fit_is_counted_not_raised(models):
    inf = InferenceConfig(max_new_tokens=6, max_prompt_tokens=200)
    long_question = dict(answer_request("base", default_methods()["base"], USER, 0, 0, None), model="a",
                         question="why " * 200)
    ok = dict(answer_request("base", default_methods()["base"], USER, 1, 0, None), model="a")
    out = AnswerActor({"a": models["a"]}, inf.model_dump(), max_shots=4)(_batch([long_question, ok]))
    assert out["finish_reason"][0] == "error" and "even with no shots" in out["error"][0] and out["text"][0] == ""
    assert out["error"][1] == "" and out["text"][1]
    assert json.loads(ok["shots_json"]) == []
