"""The simulated user world: reader, judge, splits, refinement and reproducibility."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import pytest

from fspo_ray.world import (
    AXES,
    FRAGMENTS,
    GENERATOR_IDS,
    STRATEGIES,
    World,
    WorldParams,
    all_views,
    decides,
    judge,
    normalize,
    read,
    read_description,
    read_evidence,
    refine,
    respond,
    sample_views,
    score,
    world_from_config,
)
from fspo_ray.world.axes import DESCRIPTION_SENTENCES
from fspo_ray.world.users import holds_forbidden


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldParams(seed=0))


def _find(world: World, want) -> tuple:
    """First (persona, question) of the train split for which `want(persona, question)`."""
    for persona in world.make_users("train", 60):
        for q in world.questions(persona.domain):
            if want(persona, q):
                return persona, q
    raise AssertionError("no such persona/question")


def test_axes_are_at_least_ten_with_two_to_four_values():
    assert len(AXES) >= 10
    assert all(2 <= len(values) <= 4 for values in AXES.values())
    assert set(FRAGMENTS) == {(a, v) for a, vs in AXES.items() for v in vs}
    assert all(len(f) == 4 for f in FRAGMENTS.values())


def test_reader_round_trips_every_fragment_in_any_case_and_punctuation():
    for (axis, value), fragments in FRAGMENTS.items():
        for fragment in fragments:
            assert read(fragment) == {axis: value}, fragment
            assert read(f"  {fragment.upper().replace(' ', '-- ')}!! ") == {axis: value}
            assert read_evidence(f"{fragment}. {fragment}") == {axis: {value: 2}}


def test_no_fragment_contains_a_fragment_of_another_value():
    frags = [(key, tuple(normalize(f))) for key, fs in FRAGMENTS.items() for f in fs]
    for key_a, a in frags:
        for key_b, b in frags:
            if key_a != key_b:
                inside = any(a[i : i + len(b)] == b for i in range(len(a) - len(b) + 1))
                assert not inside, (a, b)


def test_reader_picks_the_value_with_more_evidence_and_drops_ties():
    text = "Step by step. One step at a time. Point by point."
    assert read_evidence(text) == {"format": {"steps": 2, "bullets": 1}}
    assert read(text) == {"format": "steps"}
    assert read("Step by step, point by point.") == {}


def test_questions_filler_and_descriptions_reveal_no_axis(world):
    rng = random.Random(0)
    for domain in world.params.domains:
        for q in world.questions(domain):
            assert read(q.text) == {}
            for g in GENERATOR_IDS:
                assert read(respond(q, {}, g, rng)) == {}
    for sentences in DESCRIPTION_SENTENCES.values():
        for s in sentences:
            assert read(s) == {}, s


def test_every_generator_reveals_exactly_the_view_in_10_to_40_words(world):
    rng = random.Random(1)
    lengths = []
    for domain in world.params.domains:
        for q in world.questions(domain)[:60]:
            assert 2 <= len(q.relevant_axes) <= 3
            for view in all_views(q.relevant_axes)[:6]:
                for g in GENERATOR_IDS:
                    text = respond(q, dict(view), g, rng)
                    assert read(text) == dict(view), text
                    lengths.append(len(text.split()))
    assert min(lengths) >= 10 and max(lengths) <= 40


def test_generators_phrase_the_same_view_differently(world):
    q = world.questions("roleplay")[0]
    view = dict(all_views(q.relevant_axes)[0])
    texts = {g: {respond(q, view, g, random.Random(s)) for s in range(20)} for g in GENERATOR_IDS}
    for g, h in [(GENERATOR_IDS[0], GENERATOR_IDS[1]), (GENERATOR_IDS[1], GENERATOR_IDS[2])]:
        assert not texts[g] & texts[h]


def test_judge_prefers_the_matching_response_and_is_swap_symmetric(world):
    persona, q = _find(world, lambda p, q: all(p.value(a) for a in q.relevant_axes))
    k = len(q.relevant_axes)
    match = {a: persona.value(a) for a in q.relevant_axes}
    contra = {a: next(v for v in AXES[a] if v != match[a]) for a in q.relevant_axes}
    rng = random.Random(0)
    good, bad = respond(q, match, "world-gen-a", rng), respond(q, contra, "world-gen-b", rng)
    assert score(persona, q, good) == k and score(persona, q, bad) == -k
    assert judge(persona, q, good, bad, rng) == "A"
    assert judge(persona, q, bad, good, rng) == "B"
    assert decides(persona, q, good, bad)


def test_open_axes_and_length_per_se_do_not_count(world):
    persona, q = _find(
        world, lambda p, q: any(p.value(a) is None and a != "length" for a in q.relevant_axes)
    )
    axis = next(a for a in q.relevant_axes if persona.value(a) is None and a != "length")
    base = {a: persona.value(a) or AXES[a][0] for a in q.relevant_axes}
    other = dict(base, **{axis: AXES[axis][1]})
    a, b = (
        respond(q, base, "world-gen-a", random.Random(0)),
        respond(q, other, "world-gen-a", random.Random(0)),
    )
    assert judge(persona, q, a, b, random.Random(0)) == "tie"
    assert not decides(persona, q, a, b)
    padded = a + " Hope this helps. Have a great time. Enjoy it." * 3
    assert score(persona, q, padded) == score(persona, q, a)


def test_position_bias_one_always_says_a_and_noise_one_is_a_coin(world):
    persona, q = _find(world, lambda p, q: all(p.value(a) for a in q.relevant_axes))
    match = {a: persona.value(a) for a in q.relevant_axes}
    contra = {a: next(v for v in AXES[a] if v != match[a]) for a in q.relevant_axes}
    good, bad = (
        respond(q, match, "world-gen-a", random.Random(0)),
        respond(q, contra, "world-gen-a", random.Random(0)),
    )
    rng = random.Random(0)
    assert {judge(persona, q, bad, good, rng, position_bias=1.0) for _ in range(200)} == {"A"}
    votes = Counter(judge(persona, q, good, bad, rng, noise=1.0) for _ in range(2000))
    assert set(votes) == {"A", "B"} and 900 < votes["A"] < 1100


def test_same_seed_reproduces_and_other_seed_differs():
    w0, w0b, w1 = World(WorldParams(seed=0)), World(WorldParams(seed=0)), World(WorldParams(seed=1))
    assert w0.make_users("train", 20) == w0b.make_users("train", 20)
    assert [q.text for q in w0.questions("elix")] == [q.text for q in w0b.questions("elix")]
    assert w0.user_preferences("train-0-000003", 8) == w0b.user_preferences("train-0-000003", 8)
    profiles0 = [p.values for p in w0.make_users("train", 20)]
    profiles1 = [p.values for p in w1.make_users("train", 20)]
    assert sum(a != b for a, b in zip(profiles0, profiles1, strict=True)) >= 18
    for domain in ("roleplay", "elix", "reviews"):
        q0, q1 = w0.questions(domain)[:20], w1.questions(domain)[:20]
        assert sum(a.text != b.text for a, b in zip(q0, q1, strict=True)) >= 18
        assert [q.relevant_axes for q in q0] != [q.relevant_axes for q in q1]
    assert w0.forbidden_pairs != w1.forbidden_pairs


def test_interpolated_users_hold_a_forbidden_pair_and_training_users_never_do(world):
    pairs = world.forbidden_pairs
    assert len(pairs) >= len(world.params.domains)
    train = world.make_users("train", 600)
    held_out = world.make_users("held_out", 300)
    interpolated = world.make_users("interpolated", 300)
    assert not any(holds_forbidden(p.profile, pairs) for p in train + held_out)
    assert all(holds_forbidden(p.profile, pairs) for p in interpolated)
    seen_in_training = {av for p in train for av in p.values}
    for pair in pairs:
        assert set(pair) <= seen_in_training  # each value alone does occur in training
    assert {p.domain for p in interpolated} == set(world.params.domains)


def test_personas_set_four_to_six_axes_including_the_domain_required_ones(world):
    for p in world.make_users("train", 300):
        assert 4 <= len(p.values) <= 6
        if p.domain == "elix":
            assert p.value("expertise") is not None
        if p.domain == "reviews":
            assert p.value("sentiment") is not None and p.value("length") is not None


def test_descriptions_mention_each_determined_value(world):
    for split in ("train", "held_out", "interpolated"):
        for p in world.make_users(split, 100):
            text = p.description.lower()
            assert all(value in text for _, value in p.values), p.description
            assert read_description(p.description) == p.profile
    descriptions = {p.description for p in world.make_users("train", 100)}
    assert len(descriptions) == 100


def test_persona_and_question_rebuilt_from_their_ids(world):
    users = world.make_users("held_out", 5, start=120)
    assert users[3].user_id == "held_out-0-000123"
    fresh = World(WorldParams(seed=0))
    assert fresh.user("held_out-0-000123") == users[3]
    q = world.questions("reviews")[17]
    assert q.question_id == "reviews-0-000017"
    assert fresh.question("reviews-0-000017") == q
    shipped = pickle.loads(pickle.dumps(world))  # as Ray ships it to a worker
    assert shipped.params == world.params and shipped.user("held_out-0-000123") == users[3]
    with pytest.raises(ValueError, match="seed 5"):
        fresh.user("train-5-000001")


def test_refinement_makes_an_undecided_pair_decided_consistently(world):
    persona, q = _find(world, lambda p, q: any(p.value(a) is None for a in q.relevant_axes))
    axis = next(a for a in q.relevant_axes if persona.value(a) is None)
    base = {a: persona.value(a) or AXES[a][0] for a in q.relevant_axes}
    other = dict(base, **{axis: AXES[axis][1]})
    a, b = (
        respond(q, base, "world-gen-a", random.Random(0)),
        respond(q, other, "world-gen-b", random.Random(0)),
    )
    assert not decides(persona, q, a, b)
    refined, side = refine(persona, q, a, b, random.Random(3))
    assert refined.refined == (axis,) and persona.value(axis) is None
    assert refined.value(axis) == (base if side == "A" else other)[axis]
    assert refined.description.startswith(persona.description)
    assert refined.description.endswith(".") and "They also prefer" in refined.description
    assert decides(refined, q, a, b)
    assert judge(refined, q, a, b, random.Random(0)) == side
    assert judge(refined, q, b, a, random.Random(0)) == ("B" if side == "A" else "A")
    # Nothing separates a text from itself, so there is nothing to refine.
    assert refine(persona, q, a, a, random.Random(0)) is None


def test_user_preferences_are_labelled_by_the_final_persona(world):
    uid = "train-0-000004"
    rows, persona = world.user_preferences_with_persona(uid, 40)
    assert len(rows) == 40
    base = world.user(uid)
    on_persona = 0
    for r in rows:
        q = world.question(r["question_id"])
        assert q.text == r["question"] and r["domain"] == base.domain
        assert score(persona, q, r["chosen"]) > score(persona, q, r["rejected"])
        assert read(r["chosen"]) == r["view_chosen"] and read(r["rejected"]) == r["view_rejected"]
        assert r["user_description"] == persona.description
        on_persona += any(base.value(a) for a in q.relevant_axes)
    assert on_persona >= 30
    # Each refinement labels one pair (a later recheck may redraw it); the rest are decided
    # by the persona's own axes.
    assert (
        persona.refined == ("medium",)
        and persona.values == base.extend("medium", persona.value("medium")).values
    )
    assert 1 <= sum(r["refined"] for r in rows) <= len(persona.refined)
    assert len({r["generator_chosen"] for r in rows} | {r["generator_rejected"] for r in rows}) == 3


def test_sampling_strategies_order_diversity(world):
    qs = [q for q in world.questions("roleplay") if len(q.relevant_axes) == 3][:30]
    rng = random.Random(0)

    def distinct(strategy: str) -> float:
        return sum(
            len({tuple(v.items()) for v, _ in sample_views(q, strategy, 8, rng)}) for q in qs
        ) / len(qs)

    low, high, steer, views = (distinct(s) for s in STRATEGIES[:4])
    assert low < 2.5 < high
    assert low < steer < views
    assert views == 8.0  # every 3-axis question has >= 8 distinct views
    ensemble = sample_views(qs[0], "ensemble_view_conditioning", 6, rng)
    assert Counter(g for _, g in ensemble) == {g: 2 for g in GENERATOR_IDS}
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        sample_views(qs[0], "beam", 2, rng)


def test_corpus_is_reproducible_and_varied():
    a, b = (
        World(WorldParams(seed=2)).corpus(300, seed=1),
        World(WorldParams(seed=2)).corpus(300, seed=1),
    )
    assert a == b and len(a) == 300
    assert len(set(a)) > 250
    assert any(s.startswith("They ") for s in a) and any(s.endswith("?") for s in a)
    assert sum(bool(read(s)) for s in a) > 100  # responses reveal views


def test_params_are_checked():
    with pytest.raises(ValueError, match="axes_min"):
        WorldParams(axes_min=7, axes_max=5)
    with pytest.raises(ValueError, match="domains"):
        WorldParams(domains=("poetry",))
    with pytest.raises(ValueError, match="judge_noise"):
        WorldParams(judge_noise=1.5)
    assert WorldParams(domains=["elix"]).domains == ("elix",)


def _infer_profile(shots: list[dict]) -> dict[str, str]:
    # Per axis, the value seen more often on the chosen than on the rejected side.
    votes: dict[str, Counter] = {}
    for r in shots:
        for axis, value in read(r["chosen"]).items():
            votes.setdefault(axis, Counter())[value] += 1
        for axis, value in read(r["rejected"]).items():
            votes.setdefault(axis, Counter())[value] -= 1
    return {a: c.most_common(1)[0][0] for a, c in votes.items() if c.most_common(1)[0][1] > 0}


def _accuracy(profile: dict[str, str], row: dict) -> float:
    def s(text: str) -> int:
        shown = read(text)
        return sum(1 if shown[a] == v else -1 for a, v in profile.items() if a in shown)

    sc, sr = s(row["chosen"]), s(row["rejected"])
    return 1.0 if sc > sr else 0.5 if sc == sr else 0.0


def test_few_shot_inference_personalizes_where_population_preferences_cannot(world):
    """The world is a test bed for FSPO: reading a held-out user's 8 shots predicts their
    held-out pair far better than one profile for everyone (seed 0: ~0.88 vs ~0.50)."""
    users = world.user_ids("held_out", 150)
    episodes = [world.user_preferences(uid, 9) for uid in users]
    few_shot = sum(_accuracy(_infer_profile(rows[:8]), rows[8]) for rows in episodes) / len(users)
    population = _infer_profile(
        [r for uid in world.user_ids("train", 150) for r in world.user_preferences(uid, 8)]
    )
    no_context = sum(_accuracy(population, rows[8]) for rows in episodes) / len(users)
    assert few_shot > 0.8
    assert no_context < 0.65


def test_world_from_config_maps_the_project_config():
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        seed=4,
        domains=["elix", "reviews"],
        min_axes_per_persona=3,
        max_axes_per_persona=5,
        questions_per_domain=50,
        judge_position_bias=0.1,
        judge_noise=0.05,
        spread=1.5,
        users_train=10,  # not a world parameter: ignored
    )
    params = world_from_config(cfg).params
    assert params == WorldParams(
        seed=4,
        domains=("elix", "reviews"),
        axes_min=3,
        axes_max=5,
        questions_per_domain=50,
        judge_position_bias=0.1,
        judge_noise=0.05,
        high_spread=1.5,
    )
