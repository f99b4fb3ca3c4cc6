"""Generation stages without Ray: parsers, refinement, entropy, determinism, commit, checks."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fspo_ray.config import ConfigError, build_config, load_config
from fspo_ray.data import read_preferences, validate_rows
from fspo_ray.errors import FspoError
from fspo_ray.generation.checks import (
    check_cluster,
    check_inputs,
    check_persona_file,
    check_questions_file,
)
from fspo_ray.generation.labels import combine_orders
from fspo_ray.generation.llm import LLMProvider
from fspo_ray.generation.parsers import (
    Drop,
    parse_label,
    parse_refinement,
    parse_response,
    parse_views,
)
from fspo_ray.generation.prompts import judge_prompt
from fspo_ray.generation.providers import make_provider
from fspo_ray.generation.report import build_report, cosine_stats
from fspo_ray.generation.rows import RowRandom, rng_for
from fspo_ray.generation.shards import ShardStore, fingerprint
from fspo_ray.generation.sources import plan_shards
from fspo_ray.generation.stages import (
    _refine_user,
    _run_machines,
    label_entropy,
    run_shard_in_process,
)
from fspo_ray.world import World, WorldParams, score

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"

SMALL = [
    "world.users_train=8",
    "world.users_held_out=4",
    "world.users_interpolated=4",
    "generate.users_per_shard=4",
]


def _cfg(*overrides):
    return build_config({}, [*SMALL, *overrides])


# --- parsers ----------------------------------------------------------------------------

GARBAGE = [None, "", "   ", "\x00\xff", "A" * 10_000, "1.", "1. x", "Response", "¿¡", "\n\n\n", "tie-break?"]


@pytest.mark.parametrize("text", GARBAGE)
def test_parsers_never_raise_on_garbage(text):
    for out in (parse_views(text, 2), parse_response(text), parse_label(text), parse_refinement(text)):
        assert isinstance(out, (str, list, Drop))


def test_parsers_read_good_answers_and_name_the_reason_for_bad_ones():
    assert parse_views("Here:\n1. Keep it frugal please\n2) Go lavish and loud\n3. Third one here", 2) == [
        "Keep it frugal please",
        "Go lavish and loud",
    ]
    assert parse_views("1. same thing here\n2. Same thing here", 2) == Drop("too_few_views")
    assert parse_views("no list at all", 2) == Drop("too_few_views")
    assert [parse_label(t) for t in ("A", "b.", "Tie", "**B**", "Response A is better", "I think a cat")] == [
        "A", "B", "tie", "B", "A", Drop("unparseable_label")
    ]
    assert parse_response("Sure, here is a plan.\nUser: next question") == "Sure, here is a plan."
    assert parse_response("ok") == Drop("empty_response")
    assert parse_refinement("They also prefer short answers. More text") == "They also prefer short answers."
    assert parse_refinement("ok") == Drop("unparseable_refinement")


def test_judge_prompt_tells_the_judge_to_ignore_length():
    text = judge_prompt("Likes bullets.", "Q?", "one", "two")[-1]["content"]
    assert "Ignore the length of the responses" in text
    assert text.index("Response A:\none") < text.index("Response B:\ntwo")


def test_combine_orders_keeps_only_swap_consistent_labels():
    assert combine_orders("A", "B") == "A"  # a first, then a second: a both times
    assert combine_orders("B", "A") == "B"
    assert combine_orders("tie", "tie") == "tie"
    assert [combine_orders(x, y) for x, y in (("A", "A"), ("B", "B"), ("A", "tie"), ("tie", "A"))] == ["inconsistent"] * 4


# --- seeded streams ---------------------------------------------------------------------------


def test_row_random_is_seeded_and_uniform_enough():
    a, b = rng_for("x", 1, "k"), rng_for("x", 1, "k")
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]
    assert rng_for("x", 1, "k").random() != rng_for("x", 2, "k").random()
    r = RowRandom(7)
    counts = Counter(r.randrange(3) for _ in range(30_000))
    assert all(9_500 < counts[i] < 10_500 for i in range(3))  # 10k expected each; sd ~82
    s = r.sample(range(10), 4)
    assert len(set(s)) == 4 and all(0 <= x < 10 for x in s)
    xs = list(range(8))
    r.shuffle(xs)
    assert sorted(xs) == list(range(8))


# --- refinement, by hand --------------------------------------------------------------------


class ScriptedRefiner:
    """A judge whose verdicts are scripted per (pair key, persona version)."""

    def __init__(self, verdicts: dict):
        self.verdicts = verdicts
        self.judge_calls: list = []
        self.refine_calls: list = []

    def judge_both(self, items):
        out = []
        for state, pair, _tag in items:
            self.judge_calls.append((state, pair["key"]))
            out.append(self.verdicts.get((pair["key"], state), "A"))
        return out

    def refine(self, items):
        out = []
        for state, pair, _rng in items:
            self.refine_calls.append((state, pair["key"]))
            out.append((state + 1, "B"))
        return out


def _pair(key, verdict):
    return {"key": key, "question_id": key, "text_a": f"{key}a", "text_b": f"{key}b", "verdict": verdict}


def test_refinement_is_sequential_rechecks_stale_labels_and_refills():
    """p0 is decided (A) by the initial persona (state 0). p1 is a tie: nothing refined yet,
    so a side is picked (B) and the persona becomes state 1. p2 is a tie: judged again under
    state 1 it is decided (A). Target 3 reached; p0 predates state 1, so it is rechecked:
    under state 1 it flips to B and is dropped; p3 (decided A) refills, and as it was
    decided under state 0 it is rechecked too and holds."""
    pairs = [_pair("p0", "A"), _pair("p1", "tie"), _pair("p2", "tie"), _pair("p3", "A"), _pair("p4", "A")]
    ref = ScriptedRefiner({("p0", 1): "B", ("p2", 1): "A", ("p3", 1): "A"})
    drops, counts = Counter(), Counter()
    machine = _refine_user(0, pairs, 3, rng=None, drops=drops, counts=counts)
    final, kept = _run_machines({"u": machine}, ref)["u"]
    assert final == 1
    assert [(k.pair["key"], k.label, k.refined) for k in kept] == [("p1", "B", True), ("p2", "A", False), ("p3", "A", False)]
    assert ref.refine_calls == [(0, "p1")]
    assert ref.judge_calls == [(1, "p2"), (1, "p0"), (1, "p3")]
    assert drops == Counter({"inconsistent_after_refinement": 1})
    assert counts["refinements"] == 1


def test_label_entropy_by_hand():
    assert label_entropy(0.5) == pytest.approx(math.log(2))
    assert label_entropy(1.0) == 0.0 and label_entropy(0.0) == 0.0
    # p = 7/8: -(7/8 ln 7/8 + 1/8 ln 1/8) = 0.3768
    assert label_entropy(7 / 8) == pytest.approx(0.376770, abs=1e-6)


# --- the world through every stage, in process ---------------------------------------------


@pytest.fixture(scope="module")
def world_shard():
    cfg = _cfg()
    provider = make_provider(cfg)
    shard = plan_shards(provider.users_per_split(), 4)[0]
    result = run_shard_in_process(shard.as_row(), provider, provider.open_refiner(), entropy_repeats=1)
    return cfg, provider, shard, result


def test_world_shard_rows_are_valid_and_labelled_by_the_final_persona(world_shard):
    cfg, provider, shard, result = world_shard
    rows = result.rows
    kept, report = validate_rows(rows)
    assert report.num_rejected == 0 and len(kept) == len(rows)
    per_user = Counter(r["user_id"] for r in rows)
    assert len(per_user) == 4 and all(n <= 24 for n in per_user.values())
    assert len(rows) >= 4 * 24 - 8  # oversample 2.5 leaves few users short
    assert len({r["pair_id"] for r in rows}) == len(rows)
    world = World(WorldParams(seed=0))
    agree = 0
    for uid in per_user:
        mine = [r for r in rows if r["user_id"] == uid]
        assert len({r["user_description"] for r in mine}) == 1  # the final description on every row
        persona = world.user(uid)
        profile = json.loads(mine[0]["user_profile"])
        assert set(persona.profile.items()) <= set(profile.items())  # refinement only adds axes
        for r in mine:
            q = world.question(r["question_id"])
            final = world.user(uid)
            for axis, value in profile.items():
                if final.value(axis) is None:
                    final = final.extend(axis, value)
            agree += score(final, q, r["chosen"]) > score(final, q, r["rejected"])
    # The noisy judge (bias 0.1, noise 0.05) passed the swap filter and the recheck: the
    # final persona's noiseless score agrees with nearly every label.
    assert agree / len(rows) > 0.95
    refined = [r for r in rows if r["refined"]]
    assert refined and all("They also prefer" in r["user_description"] for r in refined)


def test_world_shard_counts_add_up(world_shard):
    cfg, provider, shard, result = world_shard
    s = result.stats()
    slots = shard.count * provider.n_slots
    early = sum(n for reason, n in s["drops"].items() if reason in ("identical_responses",))
    assert s["pairs_judged"] + early == slots
    assert s["drops"]["position_inconsistent"] == s["position_inconsistent"] > 0
    assert s["generator_calls"] == slots * cfg.generate.views_per_question


def test_refinement_lowers_label_entropy_on_a_fixed_seed(world_shard):
    _, _, _, result = world_shard
    n = len(result.rows)
    before, after = result.entropy_before_sum / n, result.entropy_after_sum / n
    assert before > after + 0.02
    assert 0.0 < after < before < math.log(2)


def test_same_seed_same_rows_other_seed_other_rows(world_shard):
    cfg, provider, shard, result = world_shard
    again = run_shard_in_process(shard.as_row(), make_provider(cfg), make_provider(cfg).open_refiner(), entropy_repeats=1)
    assert again.rows == result.rows
    other_cfg = _cfg("seed=1")
    other = run_shard_in_process(shard.as_row(), make_provider(other_cfg), make_provider(other_cfg).open_refiner(), entropy_repeats=1)
    assert {r["pair_id"] for r in other.rows}.isdisjoint({r["pair_id"] for r in result.rows})


# --- LLM provider halves, with canned replies (no model) ------------------------------------


def test_llm_stage_halves_parse_or_count_every_row():
    cfg = _cfg("generate.provider=llm")
    p = LLMProvider(cfg)
    slot = {"shard_id": "s", "key": "u:0000", "strategy": "ensemble_view_conditioning", "n_views": 2, "question": "Q?"}
    prepared = p.views_prepare([slot])
    assert prepared[0]["engine"] == "tiny-a" and "Q?" in prepared[0]["messages"][-1]["content"]
    good = p.views_finish([{**prepared[0], "generated_text": "1. Be frugal about it\n2. Spend lavishly on it"}])[0]
    assert good["views"] == ["Be frugal about it", "Spend lavishly on it"]
    assert sorted(good["generators"]) == ["tiny-a", "tiny-b"]  # the ensemble takes turns
    bad = p.views_finish([{**prepared[0], "generated_text": "zzz"}])[0]
    assert bad["drop"] == "too_few_views"
    err = p.views_finish([{**prepared[0], "generated_text": "", "engine_error": "boom"}])[0]
    assert err["drop"] == "inference_error"
    judged = p.judge_finish([
        {"key": "k", "generated_text": "B"},
        {"key": "k", "generated_text": "???"},
    ])
    assert judged[0]["label"] == "B" and judged[1]["drop"] == "unparseable_label"


# --- commit and resume bookkeeping ----------------------------------------------------------


def test_commit_is_readable_and_resume_state_is_its_manifest(tmp_path, world_shard):
    cfg, provider, shard, result = world_shard
    store = ShardStore(tmp_path / "prefs")
    store.prepare(fingerprint(cfg), overwrite=False)
    (store.staging / "junk.parquet").write_text("left by a crash")
    store.prepare(fingerprint(cfg), overwrite=False)
    assert list(store.staging.iterdir()) == []  # staging leftovers are cleared
    manifest = store.commit(shard.as_row(), result.rows, result.stats())
    assert manifest["rows"] == len(result.rows)
    assert set(store.committed()) == {shard.shard_id}
    table = read_preferences(tmp_path / "prefs")
    assert table.num_rows == len(result.rows)
    assert pq.read_table(tmp_path / "prefs" / manifest["file"]).num_rows == len(result.rows)
    # a second commit of the same shard replaces the file: no duplicates
    store.commit(shard.as_row(), result.rows, result.stats())
    assert read_preferences(tmp_path / "prefs").num_rows == len(result.rows)
    with pytest.raises(FspoError, match="different generation config"):
        ShardStore(tmp_path / "prefs").prepare(fingerprint(_cfg("seed=5")), overwrite=False)
    store.forget(shard.shard_id)
    assert store.committed() == {} and not (tmp_path / "prefs" / manifest["file"]).exists()


def test_fingerprint_ignores_user_counts_and_resources():
    base = fingerprint(_cfg())
    assert fingerprint(_cfg("world.users_train=100", "generate.tasks.concurrency=2", "generate.fused=false")) == base
    assert fingerprint(_cfg("generate.oversample=3")) != base
    assert fingerprint(_cfg("world.judge_noise=0.2")) != base
    llm = fingerprint(_cfg("generate.provider=llm"))
    assert fingerprint(_cfg("generate.provider=llm", "generate.llm.judge.concurrency=4")) == llm
    assert fingerprint(_cfg("generate.provider=llm", "generate.llm.judge.temperature=0.5")) != llm
    # the run's own models are '{output_dir}/...' however the run directory is reached
    assert fingerprint(_cfg("generate.provider=llm", "output_dir=/mnt/a/run")) == \
        fingerprint(_cfg("generate.provider=llm", "output_dir=/mnt/b/run"))


# --- report ------------------------------------------------------------------------------


def test_cosine_stats_by_hand():
    # group 1: (1,0),(0,1),(1,1)/sqrt2 -> cosines 0, 1/sqrt2, 1/sqrt2; group 2: identical -> 1
    stats = cosine_stats({"q1": [[1, 0], [0, 1], [1, 1]], "q2": [[2, 0], [3, 0]]})
    h = 1 / math.sqrt(2)
    assert stats["pairs"] == 4
    assert stats["mean"] == pytest.approx((0 + h + h + 1) / 4)
    assert stats["median"] == pytest.approx(h)


def test_report_aggregates_manifests(world_shard):
    cfg, provider, shard, result = world_shard
    m = {**result.stats(), "split": "train", "rows_per_domain": {"elix": 3, "reviews": 2}, "users_with_rows": 4}
    report = build_report(cfg, provider, [m, m], {"plain_low_temp": {"mean": 0.9, "median": 0.9, "pairs": 1}}, "fp")
    assert report["rows"] == 2 * len(result.rows)
    assert report["rows_per_domain"] == {"elix": 6, "reviews": 4}
    assert report["users_per_split"] == {"train": 8}
    assert report["share_dropped_position_inconsistent"] == pytest.approx(
        result.position_inconsistent / result.pairs_judged
    )
    le = report["label_entropy_nats"]
    assert le["before_refinement"] == pytest.approx(result.entropy_before_sum / len(result.rows))
    assert le["after_refinement"] < le["before_refinement"]


# --- bad input fails at submit time, naming the field ---------------------------------------


def test_generator_ensemble_of_size_zero_is_refused():
    with pytest.raises(ConfigError, match=r"generate: Value error, llm\.generators is empty"):
        _cfg("generate.provider=llm", "generate.llm.generators=[]")
    with pytest.raises(ConfigError, match=r"llm\.generators has 1 model; strategy ensemble_view_conditioning needs at least 2"):
        build_config({"generate": {"provider": "llm", "llm": {"generators": [{"name": "a"}]}}})
    cfg = build_config({"generate": {"provider": "llm", "strategy": "view_conditioning", "llm": {"generators": [{"name": "a"}]}}})
    assert len(cfg.generate.llm.generators) == 1


def test_world_spreads_are_checked():
    with pytest.raises(ConfigError, match=r"world: Value error, low_spread \(2.0\) must be <= high_spread \(1.0\)"):
        _cfg("world.low_spread=2.0", "world.high_spread=1.0")
    with pytest.raises(ConfigError, match=r"generate\.strategy: Input should be"):
        _cfg("generate.strategy=greedy")


def test_persona_file_with_missing_fields_names_field_and_line(tmp_path):
    f = tmp_path / "personas.jsonl"
    f.write_text('{"user_id": "u1", "description": "Likes bullets.", "split": "train"}\n{"user_id": "u2", "split": "train"}\n')
    with pytest.raises(ConfigError, match=r"generate\.llm\.persona_file: .*line 2 lacks \['description'\]"):
        check_persona_file(str(f), ["elix"])
    f.write_text('{"user_id": "u1", "description": "d", "split": "dev"}\n')
    with pytest.raises(ConfigError, match=r"persona_file: .*unknown split 'dev'"):
        check_persona_file(str(f), ["elix"])
    cfg = _cfg("generate.provider=llm", f"generate.llm.persona_file={tmp_path / 'missing.jsonl'}",
               "generate.report.similarity_questions=0")
    with pytest.raises(ConfigError, match=r"generate\.llm\.persona_file: file not found"):
        check_inputs(cfg)


def test_empty_question_set_names_the_field(tmp_path):
    f = tmp_path / "questions.jsonl"
    f.write_text("")
    with pytest.raises(ConfigError, match=r"generate\.llm\.questions_file: the question set is empty for domain\(s\) \['elix'\]"):
        check_questions_file(str(f), ["elix"])
    f.write_text('{"domain": "elix", "question": "Why is the sky blue?"}\n')
    assert check_questions_file(str(f), ["elix"]) == {"elix": 1}
    with pytest.raises(ConfigError, match=r"empty for domain\(s\) \['reviews'\]"):
        check_questions_file(str(f), ["elix", "reviews"])


def test_concurrency_beyond_the_cluster_names_the_pool():
    cfg = _cfg("generate.provider=llm", "generate.llm.judge.concurrency=8", "generate.llm.judge.num_cpus=1")
    with pytest.raises(ConfigError, match=r"generate\.llm\.judge\.concurrency: 8 worker\(s\) x 1 CPU = 8 CPU, but the cluster has 4 CPU"):
        check_cluster(cfg, {"CPU": 4.0})
    gpu = load_config(CONFIGS / "gpu_generate_70b.yaml")
    check_cluster(gpu, {"CPU": 192.0, "GPU": 16.0})  # two 8-GPU nodes
    with pytest.raises(ConfigError, match=r"generate\.llm\.generators\[0\]\.concurrency: .* GPU, but the cluster has 8 GPU"):
        check_cluster(gpu, {"CPU": 96.0, "GPU": 8.0})
    check_cluster(_cfg("generate.llm.judge.concurrency=8"), {"CPU": 2.0})  # world: LLM pools unused
    # An autoscaling cluster: checked against what its node groups can grow to, or left to its autoscaler.
    check_cluster(gpu, {"CPU": 0.0}, ceiling={"CPU": 6 * 32 + 4 * 192.0, "GPU": 32.0})
    with pytest.raises(ConfigError, match=r"cluster has 8 GPU \(with its autoscaler's largest node groups\)"):
        check_cluster(gpu, {"CPU": 0.0}, ceiling={"CPU": 192.0, "GPU": 8.0})
    check_cluster(gpu, {"CPU": 0.0}, ceiling={})



def test_autoscaler_is_told_apart_from_the_monitor_of_a_plain_cluster():
    from fspo_ray.generation.checks import autoscaler_running

    def readonly(node):
        return f"node_{node}"

    def status(mapping):
        return json.dumps({"autoscaler_report": {"legacy": True, "node_type_mapping": mapping}}).encode()

    assert not autoscaler_running(None, readonly)
    assert not autoscaler_running(b"not json", readonly)
    assert not autoscaler_running(b'{"time": 1.0}', readonly)
    # What `ray.init` and `ray start --head` write: the read-only provider's anonymous node types.
    assert not autoscaler_running(status({"abc": "node_abc", "def": "node_def"}), readonly)
    # The cluster launcher and the fake multi-node provider: the configured node types.
    assert autoscaler_running(status({"abc": "ray.head.default", "def": "cpu_worker"}), readonly)

# --- configs and the vLLM path (built, not run) ----------------------------------------------


def test_world_yaml_generate_section_and_gpu_config_load():
    world = load_config(CONFIGS / "world.yaml")
    assert world.generate.provider == "world" and world.generate.tasks.num_cpus == 0.5
    gpu = load_config(CONFIGS / "gpu_generate_70b.yaml")
    g = gpu.generate
    assert g.provider == "llm" and g.strategy == "ensemble_view_conditioning"
    assert [m.model for m in g.llm.generators] == ["meta-llama/Llama-3.3-70B-Instruct", "google/gemma-2-27b-it"]
    assert all(m.kind == "vllm" for m in [*g.llm.generators, g.llm.judge])
    assert [m.tensor_parallel_size for m in g.llm.generators] == [4, 2]


def test_vllm_processor_config_is_built_from_the_model_config():
    pytest.importorskip("ray.data.llm")
    from fspo_ray.engines.ray_data import (
        restore_row,
        vllm_postprocess,
        vllm_preprocess,
        vllm_processor_config,
    )

    gpu = load_config(CONFIGS / "gpu_generate_70b.yaml")
    m = gpu.generate.llm.generators[0]
    c = vllm_processor_config(m)
    assert c.model_source == "meta-llama/Llama-3.3-70B-Instruct"
    assert c.engine_kwargs["tensor_parallel_size"] == 4 and c.engine_kwargs["max_model_len"] == m.max_model_len
    assert (c.batch_size, c.concurrency, c.accelerator_type) == (m.batch_size, m.concurrency, "H100")
    assert c.should_continue_on_error is True
    # our PromptTokenizer renders and tokenizes, vLLM's own text honours the stop strings
    assert not (c.chat_template_stage or c.tokenize_stage or c.detokenize_stage)
    row = {"shard_id": "s", "key": "k", "payload": "{}", "engine": "x", "model": "m", "max_tokens": 3,
           "messages_json": json.dumps([{"role": "user", "content": "hi"}]), "tokenized_prompt": [5, 6]}
    pre = vllm_preprocess({"temperature": 0.7, "max_tokens": 5})(dict(row))
    # only token ids and sampling reach the processor (a `model` column would mean a LoRA adapter)
    assert set(pre) == {"fspo_row", "tokenized_prompt", "sampling_params"}
    assert pre["tokenized_prompt"] == [5, 6] and pre["sampling_params"] == {"temperature": 0.7, "max_tokens": 3}
    ok = restore_row({**vllm_postprocess({**pre, "generated_text": "ok", "num_generated_tokens": 1}), "__inference_error__": ""})
    request = {k: v for k, v in row.items() if k != "tokenized_prompt"}
    assert ok == {**request, "generated_text": "ok", "num_generated_tokens": 1, "engine_error": ""}
    failed = restore_row({**pre, "__inference_error__": "CUDA OOM", "generated_text": ""})  # bypassed postprocess
    assert failed == {**request, "generated_text": "", "num_generated_tokens": 0, "engine_error": "CUDA OOM"}


def test_replies_merge_into_rows_and_requests_stay_routed():
    """Between the engines layer's stage and the next task: a row a model answered comes back with its
    text, error and tokens; a request for another model keeps its routing and the reply columns it had."""
    import pyarrow as pa

    from fspo_ray.engines.ray_data import addressed, with_replies
    from fspo_ray.generation.rows import from_table, to_table

    rows = [
        {"shard_id": "s", "key": "k0", "engine": "gen-a", "messages": [{"role": "user", "content": "q0"}], "x": 0},
        {"shard_id": "s", "key": "k1", "engine": "gen-b", "messages": [{"role": "user", "content": "q1"}], "x": 1},
        {"shard_id": "s", "key": "k2", "engine": "gen-a", "messages": [{"role": "user", "content": "q2"}], "x": 2},
        {"shard_id": "s", "key": "k3", "x": 3, "drop": "too_few_views"},
    ]
    table = to_table(rows)
    assert addressed({"gen-a"}, True)(table).column("key").to_pylist() == ["k0", "k2"]
    assert addressed({"gen-a"}, False)(table).column("key").to_pylist() == ["k1", "k3"]
    replied = with_replies(table, {0: ("hello", 3, ""), 2: ("", 0, "CUDA OOM")})
    assert replied.column("generated_text").to_pylist() == ["hello", "", "", ""]
    # a later stage for gen-b writes its rows and keeps gen-a's replies
    again = with_replies(replied, {1: ("hi b", 2, "")})
    assert again.column("generated_text").to_pylist() == ["hello", "hi b", "", ""]
    assert again.column("num_generated_tokens").type == pa.int64()
    merged = from_table(again)
    assert [(r["key"], r["generated_text"], r["tokens"], r.get("engine_error")) for r in merged[:3]] == [
        ("k0", "hello", {"gen-a": 3}, None),
        ("k1", "hi b", {"gen-b": 2}, None),
        ("k2", "", {"gen-a": 0}, "CUDA OOM"),
    ]
    assert all("engine" not in r and "messages" not in r for r in merged)  # answered: off the routing
    assert merged[3] == {"shard_id": "s", "key": "k3", "x": 3, "drop": "too_few_views"}
    waiting = from_table(table)[1]  # before any stage: still a request to gen-b
    assert waiting["engine"] == "gen-b" and waiting["messages"][0]["content"] == "q1" and waiting["x"] == 1
