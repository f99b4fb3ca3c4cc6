"""Episodes: user as task, no wasted pair, deterministic sampling, truncation by whole shots."""

from collections import Counter

import pytest

from fspo_ray.episodes import (
    Episode,
    EpisodeError,
    Preference,
    build_episodes,
    encode_episode,
    render_completion,
    render_describe_prompt,
    render_prompt,
)


def _users(sizes):
    return {
        f"u{i}": [Preference(f"q{i}-{j}", f"good{i}-{j}", f"bad{i}-{j}") for j in range(n)]
        for i, n in enumerate(sizes)
    }


def test_every_pair_is_held_out_once_per_repeat_with_disjoint_shots():
    users = _users([10, 10])
    eps, stats = build_episodes(users, num_shots=4, min_shots=2, seed=0, repeats=3)
    assert stats.episodes == len(eps) == 2 * 10 * 3  # no wasted pair: P episodes per repeat
    held = Counter((e.user_id, e.held_out) for e in eps)
    assert set(held.values()) == {3}
    for e in eps:
        assert len(e.shots) == 4
        assert e.held_out not in e.shots
        assert len(set(e.shots)) == 4
        assert all(s in users[e.user_id] for s in e.shots)  # shots come from the same user


def test_repeats_and_epochs_sample_different_contexts_deterministically():
    users = _users([12])
    a, _ = build_episodes(users, num_shots=4, min_shots=2, seed=0, epoch=0)
    b, _ = build_episodes(users, num_shots=4, min_shots=2, seed=0, epoch=0)
    c, _ = build_episodes(users, num_shots=4, min_shots=2, seed=0, epoch=1)
    assert a == b
    ctx = lambda eps: {e.held_out: e.shots for e in eps}  # noqa: E731
    assert ctx(a) != ctx(c)


def test_small_users_use_what_they_have_down_to_min_shots():
    users = _users([9, 4, 2])  # N=8: u0 full, u1 gets 3 shots, u2 has only 1 shot < min 2
    eps, stats = build_episodes(users, num_shots=8, min_shots=2, seed=0)
    by_user = Counter(e.user_id for e in eps)
    assert by_user == {"u0": 9, "u1": 4}
    assert {len(e.shots) for e in eps if e.user_id == "u1"} == {3}
    assert stats.skipped_users == {"fewer than min_shots+1=3 preferences": 1}


def test_n_larger_than_any_user_is_a_clear_error():
    with pytest.raises(EpisodeError, match=r"episodes\.num_shots=8 is larger than any user can serve: the largest user has 5 preferences, so at most num_shots=4"):
        build_episodes(_users([5, 3]), num_shots=8, min_shots=2, seed=0)


def test_official_markdown_template():
    shots = [Preference("Q1", "W1", "L1")]
    prompt = render_prompt(shots, "Q")
    assert prompt == (
        "# Example 1\n## Question \nQ1\n## Preferred Response \nW1\n## Dispreferred Response \nL1\n\n"
        "# Task\nGiven the examples above, generate a preferred response to the following question.\n"
        "## Question \nQ\n"
    )
    assert render_completion("Y", "</s>") == "## Preferred Response \nY\n</s>"
    # RAT: the description closes the prefix, before the task, so one prefix serves every question
    assert render_prompt(shots, "Q", "likes cats").endswith(
        "\n\n## User Description\nlikes cats\n# Task\nGiven the examples above, generate a preferred response "
        "to the following question.\n## Question \nQ\n")
    assert render_describe_prompt(shots).endswith("describe the user's preferences.\n## User Description\n")


def _char_encode(text):
    return [ord(c) for c in text]


def test_truncation_drops_oldest_whole_shots_and_keeps_question_and_completions():
    shots = tuple(Preference(f"question {i}", "w" * 20, "l" * 20) for i in range(6))
    ep = Episode("u", shots, Preference("HELD OUT QUESTION", "chosen!", "rejected!"))
    full = encode_episode(ep, _char_encode, eos_token="<e>", max_length=10_000, min_shots=1)
    assert full.num_shots == 6
    one_shot = len(render_prompt(shots[:1], "HELD OUT QUESTION"))
    budget = len(render_prompt(shots[:3], "HELD OUT QUESTION")) + len(render_completion("rejected!", "<e>"))
    enc = encode_episode(ep, _char_encode, eos_token="<e>", max_length=budget, min_shots=1)
    assert enc.num_shots == 3
    text = "".join(map(chr, enc.prompt_ids))
    assert "question 3" in text and "question 2" not in text  # the oldest three went first
    assert text.endswith("## Question \nHELD OUT QUESTION\n")
    assert "".join(map(chr, enc.chosen_ids)) == render_completion("chosen!", "<e>")
    assert len(enc.prompt_ids) + max(len(enc.chosen_ids), len(enc.rejected_ids)) <= budget
    # Below min_shots it does not fit: None (the caller counts it), never a cut question.
    assert encode_episode(ep, _char_encode, eos_token="<e>", max_length=one_shot, min_shots=1) is None


def test_chat_template_option_keeps_user_text_out_of_system_role():
    calls = []

    def apply(messages, tokenize, add_generation_prompt, **template_kwargs):
        calls.append(messages)
        return "<u>" + messages[0]["content"] + "</u><a>"

    ep = Episode("u", (Preference("q", "w", "l"),), Preference("Q", "C", "R"))
    enc = encode_episode(ep, _char_encode, eos_token="<e>", max_length=10_000, min_shots=1, template="chat", apply_chat_template=apply)
    assert [m["role"] for m in calls[0]] == ["user"]
    assert "".join(map(chr, enc.prompt_ids)).endswith("</u><a>")


def test_rat_adds_description_block():
    ep = Episode("u", (Preference("q", "w", "l"),), Preference("Q", "C", "R"), user_description="likes bullets")
    with_rat = encode_episode(ep, _char_encode, eos_token="<e>", max_length=10_000, min_shots=1, rat=True)
    without = encode_episode(ep, _char_encode, eos_token="<e>", max_length=10_000, min_shots=1)
    assert "".join(map(chr, with_rat.prefix_ids)).endswith("## User Description\nlikes bullets\n")
    assert "User Description" not in "".join(map(chr, without.prompt_ids))


def test_query_sets_cover_every_pair_once_per_repeat_with_disjoint_shots():
    users = _users([24, 10, 5])
    eps, stats = build_episodes(users, num_shots=4, min_shots=2, seed=0, repeats=2, queries_per_episode=8)
    queries = Counter((e.user_id, q) for e in eps for q in e.queries)
    assert set(queries.values()) == {2} and len(queries) == 24 + 10 + 5  # each pair a query once per repeat
    for e in eps:
        assert not set(e.queries) & set(e.shots)  # shots are never among the queries
        assert len(set(e.queries)) == len(e.queries)  # no duplicated query
        assert all(q in users[e.user_id] for q in e.queries + e.shots)
    sizes = Counter((e.user_id, len(e.queries)) for e in eps)
    # 24 pairs -> 3 sets of 8 per repeat; 10 pairs with 4 shots -> sets of at most 6, balanced: 5 + 5;
    # 5 pairs with 4 shots -> sets of 1
    assert sizes[("u0", 8)] == 6 and {n for (u, n) in sizes if u == "u1"} == {5}
    assert {n for (u, n) in sizes if u == "u2"} == {1} and {len(e.shots) for e in eps} == {4}
    again, _ = build_episodes(users, num_shots=4, min_shots=2, seed=0, repeats=2, queries_per_episode=8)
    other, _ = build_episodes(users, num_shots=4, min_shots=2, seed=0, epoch=1, repeats=2, queries_per_episode=8)
    assert again == eps and other != eps


def test_multi_query_encoding_shares_the_prefix_and_fits_each_query():
    shots = tuple(Preference(f"question {i}", "w" * 20, "l" * 20) for i in range(6))
    queries = (Preference("QA", "ca", "ra"), Preference("QUESTION B", "chosen b", "r"))
    ep = Episode("u", shots, queries)
    full = encode_episode(ep, _char_encode, eos_token="<e>", max_length=10_000, min_shots=1)
    assert full.num_shots == 6 and len(full.queries) == 2
    assert "".join(map(chr, full.prefix_ids)) == "".join(render_prompt(shots, "x").split("# Task")[0])
    assert "".join(map(chr, full.queries[1].question_ids)).endswith("## Question \nQUESTION B\n")
    # the budget is per query: prefix + question + its longer completion
    longest = len(render_prompt(shots[:2], "QUESTION B")) + len(render_completion("chosen b", "<e>"))
    enc = encode_episode(ep, _char_encode, eos_token="<e>", max_length=longest, min_shots=1)
    assert enc.num_shots == 2 and len(enc.queries) == 2
    for q in enc.queries:
        assert len(enc.prefix_ids) + len(q.question_ids) + max(len(q.chosen_ids), len(q.rejected_ids)) <= longest
