"""Reference predictors for held-out pairs: what the shots make knowable, and what they do not.

Two hand-written predictors read texts with the world's reader (never the persona):

- `shot_reader`: from the user's N shots, count +1 for every (axis, value) fragment read in a
  chosen text and -1 in a rejected one; the held-out text with the higher total wins. It is
  what a model that has learned to read the world's fragments could infer from the shots, so
  it sets a practical ceiling for an N-shot model's reward accuracy.
- `population_prior`: the same count over every training pair of every user, no shots: the
  best a model without user context (IPO without few-shot context) can hope to learn.

Both are scored on the same episodes as the trained models (`build_episodes`), a tie counts
half. They put the learned accuracies in context: labels carry judge noise and position bias,
and a held-out pair may turn on an axis none of the N shots reveal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from fspo_ray.episodes import Episode, Preference
from fspo_ray.world.reader import read_evidence


def fragments(text: str) -> frozenset[tuple[str, str]]:
    """The (axis, value) pairs the reader finds in `text`."""
    return frozenset((a, v) for a, vs in read_evidence(text).items() for v in vs)


def evidence(prefs: Iterable[Preference]) -> Counter:
    """+1 per (axis, value) read in a chosen text, -1 per one read in a rejected text."""
    ev: Counter = Counter()
    for p in prefs:
        ev.update(fragments(p.chosen))
        ev.subtract(fragments(p.rejected))
    return ev


def _score(ev: Mapping[tuple[str, str], float], pair: Preference) -> float:
    """1 when the evidence ranks chosen above rejected, 0.5 on a tie, else 0."""
    c = sum(ev.get(f, 0) for f in fragments(pair.chosen))
    r = sum(ev.get(f, 0) for f in fragments(pair.rejected))
    return 1.0 if c > r else 0.5 if c == r else 0.0


def shot_reader_accuracy(episodes: Sequence[Episode]) -> float:
    """Mean accuracy over every held-out pair (query) of ranking it by the evidence of its own shots."""
    scores = [_score(evidence(ep.shots), q) for ep in episodes for q in ep.queries]
    if not scores:
        raise ValueError("no episodes to score")
    return sum(scores) / len(scores)


def population_prior_accuracy(train_prefs: Mapping[str, Sequence[Preference]], episodes: Sequence[Episode]) -> float:
    """Mean accuracy over every held-out pair of ranking it by the evidence of all training users' pairs."""
    prior = evidence(p for prefs in train_prefs.values() for p in prefs)
    scores = [_score(prior, q) for ep in episodes for q in ep.queries]
    if not scores:
        raise ValueError("no episodes to score")
    return sum(scores) / len(scores)


def main(argv: list[str] | None = None) -> None:
    """`python -m fspo_ray.world.reference <output_dir>/prefs [--shots 2 4 8]`: both predictors per
    split and N on the same held-out episodes the training job's reward accuracy uses."""
    import argparse

    from fspo_ray.data import load_users
    from fspo_ray.episodes import build_episodes

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("prefs", help="a preference directory written by jobs.generate")
    p.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--users-per-split", type=int, default=None, help="first users by id (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (episode sampling)")
    args = p.parse_args(argv)
    train = load_users(args.prefs, "train").prefs
    print("| split | " + " | ".join(f"shot reader N={n}" for n in args.shots) + " | no-context prior |")
    print("|---|" + "---:|" * (len(args.shots) + 1))
    for split in ("train", "held_out", "interpolated"):
        users = load_users(args.prefs, split, max_users=args.users_per_split).prefs
        if not users:
            continue
        cells = []
        for n in args.shots:
            episodes, _ = build_episodes(users, num_shots=n, min_shots=1, seed=args.seed, epoch=10_000)
            cells.append(f"{shot_reader_accuracy(episodes):.3f}")
        episodes, _ = build_episodes(users, num_shots=args.shots[0], min_shots=1, seed=args.seed, epoch=10_000)
        cells.append(f"{population_prior_accuracy(train, episodes):.3f}")
        print(f"| {split} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
