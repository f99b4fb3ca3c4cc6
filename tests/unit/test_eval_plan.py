"""Evaluation config, planning (users, shots, methods), judging and description quality."""

import json
from pathlib import Path

import pytest

from fspo_ray.config import ConfigError, build_config
from fspo_ray.episodes import stable_rng
from fspo_ray.evaluation.config import EvaluateConfig, MethodConfig
from fspo_ray.evaluation.descriptions import axes_recovered, summarize
from fspo_ray.evaluation.judging import (
    Comparison,
    gold_persona,
    llm_judge_rows,
    votes_from_replies,
    world_judge_problem,
    world_votes,
)
from fspo_ray.evaluation.plan import (
    Cell,
    EvaluationError,
    answer_request,
    cells,
    checkpoint_problem,
    describe_request,
    plan_methods,
    plan_prompts,
    select_users,
    user_from_rows,
)
from fspo_ray.layout import RunLayout
from fspo_ray.world import World, WorldParams

STAGES = ("base_sft", "sft", "fspo", "ipo_no_context", "rat_describe_sft", "rat_describe", "fspo_rat")


# --------------------------------------------------------------------------- config


def test_default_methods_map_to_training_stages():
    ev = build_config({}).evaluate
    assert list(ev.methods) == ["base", "few_shot", "pref_ft", "ipo", "fspo", "fspo_rat", "oracle"]
    got = {k: (m.model, m.context, m.describer) for k, m in ev.methods.items()}
    assert got == {
        "base": ("base_sft", "none", None),
        "few_shot": ("base_sft", "shots", None),
        "pref_ft": ("sft", "shots", None),
        "ipo": ("ipo_no_context", "none", None),
        "fspo": ("fspo", "shots", None),
        "fspo_rat": ("fspo_rat", "generated_description", "rat_describe"),
        "oracle": ("fspo_rat", "true_description", None),
    }
    assert ev.baseline == "base" and ev.on_missing == "skip" and ev.num_shots is None


def test_method_overrides_merge_onto_defaults():
    ev = build_config({}, ["evaluate.methods.fspo.model=/ckpt/fspo-step-900", "evaluate.methods.oracle=null",
                           "evaluate.methods.dpo={model: dpo, context: shots}"]).evaluate
    assert ev.methods["fspo"] == MethodConfig(model="/ckpt/fspo-step-900", context="shots")
    assert "oracle" not in ev.methods and ev.methods["dpo"].model == "dpo"
    assert list(ev.methods)[-1] == "dpo"


@pytest.mark.parametrize("overrides, match", [
    (["evaluate.baseline=nope"], "baseline 'nope' is not one of methods"),
    (["evaluate.only=[fspo,bogus]"], r"only names unknown method\(s\) \['bogus'\]"),
    (["evaluate.sweep_split=train", "evaluate.splits=[held_out]"], "sweep_split 'train' must be one of splits"),
    (["evaluate.shots_sweep=[2,2]"], "shots_sweep has duplicates"),
    (["evaluate.shots_sweep=[0,4]"], "shots_sweep values must be >= 1"),
    (["evaluate.on_missing=ignore"], "evaluate.on_missing"),
    (["evaluate.methods.fspo_rat.describer=null"], "needs describer"),
    (["evaluate.methods.fspo.describer=rat_describe"], "describer applies to context 'generated_description' only"),
    (["evaluate.baseline=oracle"], "a baseline's context must be 'none' or 'shots'"),
    (["evaluate.users_per_split=0"], "evaluate.users_per_split"),
    (["evaluate.judge.kind=gpt"], "evaluate.judge.kind"),
    (["evaluate.typo=1"], "evaluate.typo: unknown key"),
])
def test_bad_evaluate_config_names_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config({}, overrides)


# --------------------------------------------------------------------------- users


def _rows(user, split, n, questions=None):
    return [{"user_id": user, "split": split, "domain": "elix", "question": (questions or {}).get(i, f"q{user}-{i}?"),
             "chosen": f"c{i}", "rejected": f"r{i}", "user_description": f"desc of {user}",
             "user_profile": json.dumps({"tone": "formal"}), "question_id": f"id{i}"} for i in range(n)]


def test_user_from_rows_questions_never_among_shots_and_shots_nest():
    # pairs 0 and 1 share a question: if one is held out, the other may not be a shot
    rows = _rows("u", "held_out", 9, questions={0: "same?", 1: "same?"})
    u = user_from_rows("u", rows, max_shots=4, questions=2, seed=0)
    held = {q.question for q in u.questions}
    assert len(held) == 2 and not held & {s.question for s in u.shot_pool}
    assert len(u.shot_pool) == 4 and u.shots(2) == u.shot_pool[:2]
    assert u.profile == {"tone": "formal"} and u.description == "desc of u"
    # deterministic per (seed, user); another seed draws another split of the pairs
    assert user_from_rows("u", rows, max_shots=4, questions=2, seed=0) == u
    assert user_from_rows("u", rows, max_shots=4, questions=2, seed=1) != u
    # 2 questions + 4 shots need 6 pairs on distinct questions
    assert user_from_rows("u", rows[:5], max_shots=4, questions=2, seed=0) is None


def test_user_from_rows_passes_over_questions_that_would_leave_too_few_shots():
    # 10 pairs on 4 questions: "big?" holds 7 of them; holding it out would leave 3 pairs, < 4 shots
    rows = _rows("u", "held_out", 10, questions={i: "big?" for i in range(7)})
    for seed in range(20):
        u = user_from_rows("u", rows, max_shots=4, questions=2, seed=seed)
        assert u is not None and "big?" not in {q.question for q in u.questions} and len(u.shot_pool) == 4
    # where nothing needs passing over, the pick is the plain per-user random one
    plain = _rows("u", "held_out", 12)
    for seed in range(5):
        u = user_from_rows("u", plain, max_shots=4, questions=2, seed=seed)
        order = list(range(12))
        stable_rng(seed, "eval", "u").shuffle(order)
        assert [q.question for q in u.questions] == [plain[i]["question"] for i in order[:2]]


def test_select_users_first_users_by_id_and_empty_split_message():
    ev = EvaluateConfig(users_per_split=2, questions_per_user=1, num_shots=2, shots_sweep=[1, 2],
                        splits=["train", "held_out"], sweep_split="held_out")
    rows = _rows("b", "train", 4) + _rows("a", "train", 4) + _rows("c", "train", 2) + _rows("d", "held_out", 3)
    users = select_users(rows, ev, seed=0, source="prefs")
    assert [u.user_id for u in users["train"]] == ["a", "b"]
    assert [u.user_id for u in users["held_out"]] == ["d"]
    with pytest.raises(EvaluationError, match=r"split 'held_out' has no users in prefs: drop it from "
                                              r"evaluate.splits \(e.g. evaluate.splits=\[train\]\)"):
        select_users(_rows("a", "train", 4), ev, seed=0, source="prefs")
    with pytest.raises(EvaluationError, match=r"split 'train': no user has enough preferences.*3 pairs\), "
                                              "the largest user has 2"):
        select_users(_rows("c", "train", 2) + _rows("d", "held_out", 3), ev, seed=0, source="prefs")


# --------------------------------------------------------------------------- methods


def _fake_model(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"")
    (path / "tokenizer.json").write_text("{}")


def test_plan_methods_skip_fail_and_explicit_paths(tmp_path):
    for st in ("base_sft", "sft", "fspo", "ipo_no_context", "rat_describe_sft"):
        _fake_model(tmp_path / "models" / st)
    (tmp_path / "models" / "fspo_rat").mkdir()  # an interrupted export: no weights
    ev = EvaluateConfig()
    plan = plan_methods(ev, RunLayout(tmp_path))
    assert list(plan.methods) == ["base", "few_shot", "pref_ft", "ipo", "fspo"]
    assert plan.skipped["fspo_rat"] == f"model stage 'fspo_rat': {tmp_path}/models/fspo_rat has no weights " \
                                       "(model.safetensors or model.safetensors.index.json or pytorch_model.bin)"
    assert plan.skipped["oracle"].startswith("model stage 'fspo_rat'")
    assert plan.describers == {"before": "rat_describe_sft"}
    assert plan.describers_skipped["after"] == f"describe_after stage 'rat_describe': {tmp_path}/models/rat_describe does not exist"
    assert plan.models["base_sft"] == str(tmp_path / "models" / "base_sft")

    with pytest.raises(EvaluationError, match=r"evaluate.methods.fspo_rat: model stage 'fspo_rat'.*has no weights"):
        plan_methods(ev.model_copy(update={"on_missing": "fail"}), RunLayout(tmp_path))
    # a missing baseline always fails
    with pytest.raises(EvaluationError, match="evaluate.methods.base: model stage 'base_sft'"):
        plan_methods(ev, RunLayout(tmp_path / "elsewhere"))
    # an explicit checkpoint that does not exist always fails, whatever on_missing says
    methods = dict(ev.methods, fspo=MethodConfig(model=str(tmp_path / "nope"), context="shots"))
    with pytest.raises(EvaluationError, match=f"evaluate.methods.fspo.model: checkpoint {tmp_path}/nope does not exist"):
        plan_methods(ev.model_copy(update={"methods": methods}), RunLayout(tmp_path))
    # only the baseline left: nothing to evaluate
    with pytest.raises(EvaluationError, match="nothing to evaluate"):
        plan_methods(ev.model_copy(update={"only": ["fspo_rat"]}), RunLayout(tmp_path))
    assert checkpoint_problem("meta-llama/Llama-3.2-3B-Instruct") is None  # a hub id: not checked offline


def _trained(path: Path, num_shots: int, rat: bool = False, task: str = "answer") -> None:
    _fake_model(path)
    (path / "fspo_prompt.json").write_text(json.dumps({"template": "markdown", "num_shots": num_shots, "rat": rat,
                                                       "task": task}))


def test_num_shots_and_contexts_follow_how_the_models_were_trained(tmp_path):
    """The main table's N comes from the models' fspo_prompt.json; a setting that contradicts it names
    both values and is refused unless evaluate.override_prompt_contract says it is on purpose."""
    layout = RunLayout(tmp_path)
    _trained(layout.model("base_sft"), 0)  # trained without shots: any N is the few-shot baseline
    _trained(layout.model("ipo_no_context"), 0)
    for st in ("sft", "fspo"):
        _trained(layout.model(st), 8)
    _trained(layout.model("fspo_rat"), 8, rat=True)
    for st in ("rat_describe_sft", "rat_describe"):
        _trained(layout.model(st), 8, task="describe")
    ev = EvaluateConfig()
    plan = plan_methods(ev, layout)
    assert plan_prompts(ev, plan, fallback_shots=4).num_shots == 8  # trained N, not episodes.num_shots
    with pytest.raises(ConfigError, match=r"evaluate\.num_shots=4 contradicts how .*/models/sft was trained "
                                          r"\(num_shots: 8 in its fspo_prompt\.json\).*override_prompt_contract=true"):
        plan_prompts(ev.model_copy(update={"num_shots": 4}), plan, fallback_shots=4)
    on_purpose = ev.model_copy(update={"num_shots": 4, "override_prompt_contract": True})
    assert plan_prompts(on_purpose, plan, fallback_shots=4).num_shots == 4
    # models trained with different N: unset is ambiguous
    _trained(layout.model("sft2"), 4)
    mixed = ev.model_copy(update={"methods": dict(ev.methods, pref_ft=MethodConfig(model="sft2", context="shots"))})
    with pytest.raises(EvaluationError, match=r"trained with different N \(N=4: method 'pref_ft'; N=8: method 'fspo'"):
        plan_prompts(mixed, plan_methods(mixed, layout), fallback_shots=4)
    # a context that contradicts RAT training
    for name, m in (("oracle", MethodConfig(model="fspo", context="true_description")),
                    ("fspo", MethodConfig(model="fspo_rat", context="shots"))):
        wrong = ev.model_copy(update={"methods": dict(ev.methods, **{name: m})})
        with pytest.raises(EvaluationError, match=rf"evaluate\.methods\.{name}: context '{m.context}'.*trained with rat"):
            plan_prompts(wrong, plan_methods(wrong, layout), fallback_shots=4)
        allowed = wrong.model_copy(update={"override_prompt_contract": True})
        assert plan_prompts(allowed, plan_methods(allowed, layout), fallback_shots=4).num_shots == 8
    # models without a contract (hub models, untrained copies): episodes.num_shots
    bare = RunLayout(tmp_path / "bare")
    for st in STAGES:
        _fake_model(bare.model(st))
    assert plan_prompts(ev, plan_methods(ev, bare), fallback_shots=4).num_shots == 4


def test_cells_main_table_plus_sweep_of_methods_with_context():
    ev = EvaluateConfig(num_shots=8, shots_sweep=[2, 4, 8])
    got = cells(ev, ev.methods)
    assert len(got) == 7 * 3 + 5 * 2  # every method x split at N=8; the 5 with context at N=2, 4
    assert Cell("fspo", "held_out", 2) in got and Cell("ipo", "held_out", 2) not in got
    assert len(set(got)) == len(got)


def test_requests_shots_and_descriptions():
    rows = _rows("u", "held_out", 12)
    u = user_from_rows("u", rows, max_shots=8, questions=2, seed=0)
    ev = EvaluateConfig()
    base = answer_request("base", ev.methods["base"], u, 0, 8, None)
    assert base["request_id"] == "answer|base|0|u|0" and json.loads(base["shots_json"]) == []
    few = answer_request("few_shot", ev.methods["few_shot"], u, 1, 4, None)
    assert few["request_id"] == "answer|few_shot|4|u|1" and len(json.loads(few["shots_json"])) == 4
    assert few["question"] == u.questions[1].question and few["use_description"] is False
    oracle = answer_request("oracle", ev.methods["oracle"], u, 0, 8, u.description)
    assert oracle["description"] == "desc of u" and oracle["use_description"] is True
    d = describe_request("rat_describe", u, 8)
    assert d["request_id"] == "describe|rat_describe|8|u" and d["kind"] == "describe"


# --------------------------------------------------------------------------- judging


@pytest.fixture(scope="module")
def world_user():
    world = World(WorldParams(seed=0))
    uid = world.user_ids("held_out", 1)[0]
    rows = world.user_preferences(uid, 8)
    for r in rows:
        r["user_profile"] = json.dumps(r["user_profile"])
    return world, rows, user_from_rows(uid, rows, max_shots=4, questions=2, seed=0)


def test_gold_persona_is_the_refined_profile(world_user):
    world, rows, u = world_user
    persona = gold_persona(u, world)
    assert persona.profile == json.loads(rows[0]["user_profile"])
    assert world_judge_problem({"held_out": [u]}, world) is None
    other = World(WorldParams(seed=1))
    assert "belongs to world seed 0, not 1" in world_judge_problem({"held_out": [u]}, other)


def test_world_votes_both_orders(world_user):
    """The user's own labelled pair: chosen beats rejected in both orders with a noiseless judge;
    identical texts tie; a judge that always answers 'A' gives one win and one loss."""
    world, rows, u = world_user
    by_q = {r["question"]: r for r in rows}
    r = by_q[u.questions[0].question]
    cell = Cell("fspo", "held_out", 4)
    good = Comparison(cell, u, 0, method_text=r["chosen"], baseline_text=r["rejected"])
    bad = Comparison(cell, u, 0, method_text=r["rejected"], baseline_text=r["chosen"])
    same = Comparison(cell, u, 0, method_text=r["chosen"], baseline_text=r["chosen"])
    assert world_votes([good, bad, same], world, position_bias=0.0, noise=0.0, seed=0) == [
        (1.0, 1.0), (0.0, 0.0), (0.5, 0.5)]
    assert world_votes([bad], world, position_bias=1.0, noise=0.0, seed=0) == [(1.0, 0.0)]


def test_llm_judge_rows_and_tolerant_votes(world_user):
    _, _, u = world_user
    c = Comparison(Cell("fspo", "held_out", 4), u, 1, method_text="M", baseline_text="B")
    rows = llm_judge_rows([c], "judge")
    assert [r["key"] for r in rows] == ["0|A", "0|B"]
    user_turn = json.loads(rows[0]["messages_json"])[-1]["content"]
    assert u.description in user_turn and u.questions[1].question in user_turn
    assert "Response A:\nM" in user_turn and "Response B:\nB" in user_turn  # order 1: the method is A
    assert "Response A:\nB" in json.loads(rows[1]["messages_json"])[-1]["content"]
    votes, dropped = votes_from_replies(4, {"0|A": "A", "0|B": "**B**", "1|A": "Response B is better",
                                            "1|B": "tie", "2|A": "I cannot say", "2|B": None, "3|A": "A", "3|B": "A"},
                                        errors={"3|A": "CUDA out of memory"})
    # malformed replies and engine errors are dropped judgments, not ties: comparison 2 has no vote left
    assert votes == [(1.0, 1.0), (0.0, 0.5), (), (0.0,)]
    assert dropped == {"unparseable_label": 2, "engine_error": 1}


def test_axes_recovered_and_summary():
    profile = {"tone": "formal", "format": "bullets", "diet": "vegetarian"}
    text = "They prefer a formal tone. They like answers in prose. They eat a vegetarian diet."
    assert axes_recovered(text, profile) == (2, 3)  # prose is wrong, the other two are right
    s = summarize(["train", "held_out"], [
        {"split": "train", "similarity": 0.5, "correct": 2, "total": 3},
        {"split": "held_out", "similarity": 0.25, "correct": 1, "total": 5},
    ])
    assert s["similarity"] == {"train": 0.5, "held_out": 0.25, "all": 0.375}
    assert s["axes_recovered"] == {"train": 2 / 3, "held_out": 0.2, "all": 3 / 8}
    assert s["users"] == {"train": 1, "held_out": 1, "all": 2}
