"""Evaluation's inference, called in-process: prompts from the Personalizer over each model's
tokenizer, the engines layer's actor answering rows grouped by model and budget, greedy answers
equal to the two-stage API's, a prompt that cannot fit counted not raised."""

import json

import pytest

from fspo_ray.engines.ray_data import GenerateActor
from fspo_ray.episodes import Preference
from fspo_ray.evaluation.config import InferenceConfig, default_methods
from fspo_ray.evaluation.inference import OUTPUT_COLUMNS, Prompts, engine_config, personalize_config
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


def _answer(rows, models, inf):
    """Prompts built, then the hf actor of the engines layer over one batch, in-process."""
    from dataclasses import asdict

    import pyarrow as pa

    from fspo_ray.engines.config import Sampling
    from fspo_ray.personalize import SECTION_STOPS

    prompts = Prompts(models, inf, max_shots=4)
    engine_rows, failed = prompts.rows(rows)
    actor = GenerateActor({ref: engine_config(path, inf).model_dump() for ref, path in models.items()},
                          asdict(Sampling(max_new_tokens=inf.max_new_tokens, stop=SECTION_STOPS)))
    out = actor(pa.Table.from_pylist(engine_rows)) if engine_rows else pa.table({})
    answered = {r["request_id"]: prompts.output(r) for r in out.to_pylist()}
    return [answered.get(r["request_id"]) or failed[r["request_id"]] for r in rows], actor


def test_actor_groups_by_model_and_matches_the_personalizer(models):
    inf = InferenceConfig(max_new_tokens=6, describe_max_new_tokens=5, batch_size=4)
    methods = default_methods()
    rows = [
        dict(answer_request("fspo", methods["fspo"], USER, 0, 4, None), model="a"),
        dict(describe_request("rat", USER, 2), model="b"),
        dict(answer_request("oracle", methods["oracle"], USER, 1, 4, USER.description), model="a"),
        dict(answer_request("base", methods["base"], USER, 1, 4, None), model="b"),
    ]
    out, actor = _answer(rows, models, inf)
    assert all(list(o)[: len(OUTPUT_COLUMNS)] == list(OUTPUT_COLUMNS) for o in out)
    assert [o["request_id"] for o in out] == [r["request_id"] for r in rows]
    assert [o["error"] for o in out] == [""] * 4 and [o["shots_used"] for o in out] == [4, 2, 4, 0]
    # the same prompts through the two-stage API give the same greedy texts
    pa_ = Personalizer.from_config(personalize_config(models["a"], inf, 4))
    pb = Personalizer.from_config(personalize_config(models["b"], inf, 4))
    shots = list(USER.shot_pool)
    assert out[0]["text"] == pa_.answer(shots, None, "what about cooking?")
    assert out[1]["text"] == pb.describe(shots[:2])
    assert out[2]["text"] == pa_.answer(shots, USER.description, "and travel?")
    assert out[3]["text"] == pb.answer([], None, "and travel?")
    assert out[2]["prompt"] == pa_.answer_prompt(shots, USER.description, "and travel?")[0]  # what reached the engine
    assert all(o["text"] for o in out) and out[0]["finish_reason"] in ("stop", "length")
    assert set(actor._engines) == {"a", "b"}  # each model loaded once, on first use


def test_a_prompt_that_cannot_fit_is_counted_not_raised(models):
    inf = InferenceConfig(max_new_tokens=6, max_prompt_tokens=200)
    long_question = dict(answer_request("base", default_methods()["base"], USER, 0, 0, None), model="a",
                         question="why " * 200)
    ok = dict(answer_request("base", default_methods()["base"], USER, 1, 0, None), model="a")
    out, _ = _answer([long_question, ok], {"a": models["a"]}, inf)
    assert out[0]["finish_reason"] == "error" and "even with no shots" in out[0]["error"] and out[0]["text"] == ""
    assert out[1]["error"] == "" and out[1]["text"]
    assert json.loads(ok["shots_json"]) == []
