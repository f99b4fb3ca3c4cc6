"""The page's logic without a server: progress through the store, skips, what a person reads, the
`page:` config (paths, errors) and the app's build-time checks."""

import json
from pathlib import Path

import pytest

from fspo_ray.config import ConfigError
from fspo_ray.episodes import Preference
from fspo_ray.serving import world_text
from fspo_ray.serving.app import baseline_config
from fspo_ray.serving.config import load_serve_config
from fspo_ray.serving.page import PageConfig, PageService, build_pool
from fspo_ray.serving.pool import PoolError

RENDERING = "compact" if world_text.compact_question is not None else "text"


def service(**page) -> PageService:
    cfg = PageConfig.model_validate({"pairs": {"world": {"seed": 0, "rendering": RENDERING, "size": 30}}} | page)
    return PageService(cfg, max_chars=4000)


def stored_choice(pair: dict, side: int) -> Preference:
    """What the page POSTs to the profile API when the person picks answer `side`."""
    return Preference(pair["question"]["model"], pair["answers"][side]["model"], pair["answers"][1 - side]["model"])


def test_progress_comes_from_the_store_and_skips_are_not_asked_again():
    page = service(num_pairs=3)
    stored, skipped, asked = [], [], []
    first = page.next_pair("alice", stored, skipped)
    assert (first["answered"], first["target"], first["done"]) == (0, 3, False)
    skipped.append(first["pair"]["id"])  # skip the first pair
    while True:
        step = page.next_pair("alice", stored, skipped)
        if step["done"]:
            break
        asked.append(step["pair"]["id"])
        stored.append(stored_choice(step["pair"], len(stored) % 2))
    assert step["answered"] == 3 and len(asked) == 3 and first["pair"]["id"] not in asked
    assert step["pair"] is not None and step["pair"]["id"] not in asked + skipped  # "answer more" has more
    # Preferences that did not come from the pool (e.g. an API client's) do not count as answered.
    assert page.next_pair("alice", [Preference("q", "a", "b")], [])["answered"] == 0


def test_profile_and_display_give_a_person_sentences():
    page = service()
    pair = page.next_pair("bob", [], [])["pair"]
    profile = page.profile([stored_choice(pair, 1), Preference("free question", "yes", "no")])
    assert profile[0] == {"index": 0, "question": pair["question"]["text"], "chosen": pair["answers"][1]["text"],
                          "rejected": pair["answers"][0]["text"]}
    assert profile[1] == {"index": 1, "question": "free question", "chosen": "yes", "rejected": "no"}
    q = page.question(pair["question"]["text"])  # a suggestion typed or clicked
    assert q == {"model": pair["question"]["model"], "text": pair["question"]["text"], "known": True}
    assert page.question("  What is love?  ") == {"model": "What is love?", "text": "What is love?", "known": False}
    if RENDERING == "compact":
        assert pair["question"]["model"] != pair["question"]["text"]
        shown = page.display(pair["question"]["model"], "length: concise, tone: formal")
        assert ":" not in shown and shown.endswith((".", "!", "?"))  # sentences, not tokens
    assert page.display(pair["question"]["model"], "unreadable model output") == "unreadable model output"


@pytest.mark.skipif(RENDERING != "compact", reason="the installed world has no compact rendering")
def test_a_compact_persona_is_shown_as_the_worlds_description_sentences():
    from fspo_ray.world.axes import DESCRIPTION_SENTENCES

    shown = PageService.display_persona("length: concise, tone: formal")
    sentences = [s for key in (("length", "concise"), ("tone", "formal")) for s in DESCRIPTION_SENTENCES[key]]
    assert ":" not in shown and sum(s in shown for s in sentences) == 2  # one sentence per value
    assert PageService.display_persona("length: concise, tone: formal") == shown  # deterministic
    text = "They like concise answers."  # already sentences (a text-world model): as it is
    assert PageService.display_persona(text) == text
    assert PageService.display_persona("") == ""


def test_info_lists_suggestions_and_the_world():
    info = service(suggestions=4).info("fspo-rat", "the base model")
    assert info["world"] and info["domains"] == ["roleplay", "elix", "reviews"] and info["rendering"] == RENDERING
    assert len(info["suggestions"]) == 4 and len({s["text"] for s in info["suggestions"]}) == 4
    assert info["num_pairs"] == 4 and info["strategy"] == "active" and info["unpersonalized"] == "the base model"


def test_page_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="page.pairs: Value error, source 'jsonl' needs path"):
        load_serve_config({"page": {"pairs": {"source": "jsonl"}}})
    with pytest.raises(ConfigError, match="page.strategy"):
        load_serve_config({"page": {"strategy": "greedy"}})
    with pytest.raises(ConfigError, match="page.num_pairs"):
        load_serve_config({"page": {"num_pairs": 0}})
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"question": "q", "answer_a": "a", "answer_b": "b"}) + "\n")
    cfg = load_serve_config({"page": {"pairs": {"source": "jsonl", "path": str(rows)}}})
    with pytest.raises(PoolError, match="page.strategy 'active' needs features_a/features_b on every pair; "
                                        "pair 'line-1' has none"):
        build_pool(cfg.page, 4000)
    assert len(build_pool(cfg.page.model_copy(update={"strategy": "random"}), 4000)) == 1
    with pytest.raises(ConfigError, match="run_config: .* holds none of"):
        build_pool(PageConfig.model_validate({"pairs": {"world": {"run_config": str(tmp_path)}}}), 4000)


def test_output_dir_and_relative_paths_of_the_page_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_serve_config({
        "output_dir": "runs/x",
        "page": {"unpersonalized_model": "{output_dir}/models/base_sft", "pairs": {"world": {"run_config": "{output_dir}"}}},
    })
    # '{output_dir}' replaced; relative to the directory the app is built in
    assert Path(cfg.page.unpersonalized_model).resolve() == tmp_path / "runs/x/models/base_sft"
    assert Path(cfg.page.pairs.world.run_config).resolve() == tmp_path / "runs/x"
    base = baseline_config(cfg)
    assert base.personalize.answer.model == cfg.page.unpersonalized_model
    assert base.personalize.persona == cfg.personalize.persona and cfg.personalize.answer.model.endswith("fspo_rat")
    assert base.deployments.answer == cfg.deployments.baseline


def test_run_config_gives_the_pool_the_runs_world(tmp_path):
    from fspo_ray.config import build_config, save_resolved

    run = build_config({"output_dir": str(tmp_path), "world": {"seed": 5, "domains": ["elix"]}})
    save_resolved(run, tmp_path, name="resolved_config.train.yaml")
    pool = build_pool(PageConfig.model_validate({"pairs": {"world": {"run_config": str(tmp_path), "size": 10}}}), 4000)
    assert {p.world_question.domain for p in pool.pairs} == {"elix"}
    assert all(p.pair_id.startswith("elix-5-") for p in pool.pairs)
    assert pool.rendering == getattr(run.world, "rendering", "text")


# --------------------------------------------------------------------------- deleting one preference


@pytest.mark.parametrize("kind", ["sqlite", "memory", "custom"])
def test_delete_one_preference_removes_exactly_it(tmp_path, kind):
    from fspo_ray.serving.store import (
        InMemoryProfileStore,
        delete_one_preference,
        make_store,
        user_key,
    )

    class Minimal(InMemoryProfileStore):  # a custom store with only the protocol's methods
        delete_preference = property(lambda self: (_ for _ in ()).throw(AttributeError))

    store = Minimal() if kind == "custom" else make_store(kind, str(tmp_path / "p.sqlite3"))
    assert hasattr(store, "delete_preference") == (kind != "custom")
    marker = "ZQX-one-preference-4242"
    prefs = [Preference(f"q{i}", f"good{i} {marker if i == 1 else ''}", f"bad{i}") for i in range(3)]
    store.add_preferences("alice", prefs, max_keep=10)
    store.add_preferences("bob", prefs[:1], max_keep=10)
    seq, _ = store.deletions_since(0, retain_s=60)
    assert delete_one_preference(store, "alice", 1, max_keep=10) is True
    assert [p.question for p in store.get_preferences("alice")] == ["q0", "q2"]  # order kept
    assert len(store.get_preferences("bob")) == 1
    assert store.deletions_since(seq, retain_s=60)[1] == [user_key("alice")]  # other replicas drop its personas
    assert delete_one_preference(store, "alice", 2, max_keep=10) is False  # only 2 left
    assert delete_one_preference(store, "nobody", 0, max_keep=10) is False
    if kind == "sqlite":
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert marker.encode() not in on_disk and b"good0" in on_disk
    store.close()
