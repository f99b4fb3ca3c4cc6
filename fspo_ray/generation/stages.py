"""The generation stages as plain functions over lists of row dicts (no Ray here).

    plan_slots          1-2  personas of a shard's users, then question slots per user
    provider.views      3    views per question (ops from the provider)
    response_requests        one request per view
    provider.responses  4    one response per view, the generator ensemble taking turns
    pair_responses      5    two responses of a slot -> a pair
    judge_requests           the pair in both orders
    provider.judge      6    one label per order
    refine_shard        7    swap-consistency filter, then iterative persona refinement,
                             sequential within a user, batched across the shard's users
    preference_rows     8    rows in the data contract (written by `shards`)

A row that cannot go on is not removed: it carries `drop` (its reason) to the end of
the shard, which counts it. Every random choice comes from a stream seeded by the row's
key and the stage (`rows.rng_for`), so rows do not depend on batching.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

from fspo_ray.generation.parsers import Drop
from fspo_ray.generation.providers import combine_orders
from fspo_ray.generation.rows import add_tokens, drop, pair_id, rng_for, slot_key

# --- stages 1-2: personas and questions ------------------------------------------------


def plan_slots(shards: list[dict], provider) -> list[dict]:
    """Each shard's users (stage 1), then `provider.n_slots` question slots per user (stage 2)."""
    out = []
    gen = provider.gen
    for shard in shards:
        for user in provider.personas(shard):
            for i in range(provider.n_slots):
                key = slot_key(user["user_id"], i)
                qid, text = provider.draw_question(user, rng_for("question", provider.seed, key))
                out.append(
                    {
                        "shard_id": shard["shard_id"],
                        "key": key,
                        "user_id": user["user_id"],
                        "split": user["split"],
                        "domain": user["domain"],
                        "slot": i,
                        "strategy": gen.strategy,
                        "n_views": gen.views_per_question,
                        "question_id": qid,
                        "question": text,
                        "description": user["description"],
                        "profile": user["profile"],
                    }
                )
    return out


# --- explode views into response requests ----------------------------------------------


def response_requests(slots: list[dict]) -> list[dict]:
    """One request per (slot, view): k, view and generator; dropped slots pass as they are."""
    out = []
    for s in slots:
        if s.get("drop"):
            out.append(s)
            continue
        base = {k: v for k, v in s.items() if k not in ("views", "generators", "tokens")}
        for k, (view, gen) in enumerate(zip(s["views"], s["generators"], strict=True)):
            # the slot's view-listing tokens travel with its first request only
            out.append({**base, "k": k, "view": view, "generator": gen, "tokens": s.get("tokens", {}) if k == 0 else {}})
    return out


# --- stage 5: pairing --------------------------------------------------------------------


def _group(rows: list[dict], name: str = "key") -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[name], []).append(r)
    return groups


def pair_responses(requests: list[dict], seed: int) -> list[dict]:
    """The responses of each slot -> one pair (text_a, text_b). With more than two views,
    two responses with different text are picked at random."""
    out = []
    for key, group in _group(requests).items():
        group.sort(key=lambda r: r.get("k", -1))
        generated = [r for r in group if "k" in r]  # requests that reached the generators
        valid = [r for r in generated if not r.get("drop")]
        base = {k: v for k, v in group[0].items() if k not in ("k", "view", "generator", "response", "drop")}
        base["gen_calls"] = len(generated)
        base["tokens"] = add_tokens(*(r.get("tokens", {}) for r in group))
        early = [r["drop"] for r in group if r.get("drop") and "k" not in r]
        if early:
            out.append(drop(base, early[0]))
            continue
        if len(valid) > 2:
            rng = rng_for("pair", seed, key)
            rng.shuffle(valid)
        picked = []
        for r in valid:
            if all(r["response"] != p["response"] for p in picked):
                picked.append(r)
            if len(picked) == 2:
                break
        if len(picked) < 2:
            reasons = [r["drop"] for r in generated if r.get("drop")]
            out.append(drop(base, reasons[0] if reasons else "identical_responses"))
            continue
        a, b = sorted(picked, key=lambda r: r["k"])
        out.append(
            {
                **base,
                "text_a": a["response"],
                "text_b": b["response"],
                "view_a": a["view"],
                "view_b": b["view"],
                "gen_a": a["generator"],
                "gen_b": b["generator"],
            }
        )
    return out


def judge_requests(pairs: list[dict]) -> list[dict]:
    """Each pair twice: order 0 shows (a, b), order 1 shows (b, a)."""
    out = []
    for p in pairs:
        if p.get("drop"):
            out.append(p)
        else:
            out.append({**p, "order": 0})
            out.append({**p, "order": 1, "gen_calls": 0, "tokens": {}})  # count the slot's calls once
    return out


# --- stage 7: swap-consistency filter and iterative persona refinement -----------------


@dataclass
class Kept:
    pair: dict
    label: str  # "A": text_a is chosen; "B": text_b
    version: int  # persona version the label was last checked against
    refined: bool  # the label came from a refinement (a side picked at random)


@dataclass
class ShardResult:
    """What refinement made of one shard: rows to write and the counts for the report."""

    rows: list[dict] = field(default_factory=list)
    users: set = field(default_factory=set)
    users_short: int = 0
    drops: Counter = field(default_factory=Counter)
    pairs_judged: int = 0
    position_inconsistent: int = 0
    undecided_before: int = 0
    refinements: int = 0
    gen_calls: int = 0
    tokens: dict = field(default_factory=dict)
    entropy_before_sum: float = 0.0
    entropy_after_sum: float = 0.0

    def stats(self) -> dict:
        return {
            "rows": len(self.rows),
            "users": len(self.users),
            "users_short": self.users_short,
            "drops": dict(sorted(self.drops.items())),
            "pairs_judged": self.pairs_judged,
            "position_inconsistent": self.position_inconsistent,
            "undecided_before": self.undecided_before,
            "refinements": self.refinements,
            "refined_rows": sum(1 for r in self.rows if r["refined"]),
            "generator_calls": self.gen_calls,
            "generated_tokens": dict(sorted(self.tokens.items())),
            "entropy_before_sum": self.entropy_before_sum,
            "entropy_after_sum": self.entropy_after_sum,
        }


def _refine_user(state, pairs: list[dict], target: int, rng, drops: Counter, counts: Counter):
    """One user's refinement, as a generator: it yields judge calls ("judge", items) and
    refinement calls ("refine", item) and receives their results, so calls of many users
    can be batched while each user's own sequence stays sequential. Returns (final state,
    kept pairs).

    Walk the pairs in slot order until `target` are kept. A pair decided by the initial
    description keeps its label. An undecided one (tie in both orders) is judged again if
    the description has been refined since; if still undecided, a side is picked at random
    and that preference appended to the description (refinement). Afterwards every kept
    pair whose label predates the latest description is judged again with it, and dropped
    if the label no longer holds; more pairs are then drawn to refill.
    """
    version = 0
    kept: list[Kept] = []
    seen: set = set()
    pos = 0
    while True:
        while len(kept) < target and pos < len(pairs):
            pair = pairs[pos]
            pos += 1
            dedup = (pair["question_id"], frozenset((pair["text_a"], pair["text_b"])))
            if dedup in seen:
                drops["duplicate_pair"] += 1
                continue
            verdict = pair["verdict"]
            if verdict in ("A", "B"):
                kept.append(Kept(pair, verdict, 0, False))
                seen.add(dedup)
                continue
            if version > 0:
                (verdict,) = yield ("judge", [(state, pair, f"v{version}")])
                if isinstance(verdict, Drop):
                    drops[f"{verdict.reason}_rejudged"] += 1
                    continue
                if verdict in ("A", "B"):
                    kept.append(Kept(pair, verdict, version, False))
                    seen.add(dedup)
                    continue
                if verdict == "inconsistent":
                    drops["position_inconsistent_rejudged"] += 1
                    continue
            result = yield ("refine", (state, pair, rng))
            if isinstance(result, Drop):
                drops[result.reason] += 1
                continue
            state, side = result
            version += 1
            counts["refinements"] += 1
            kept.append(Kept(pair, side, version, True))
            seen.add(dedup)
        stale = [k for k in kept if k.version < version]
        if not stale:
            break
        verdicts = yield ("judge", [(state, k.pair, f"v{version}") for k in stale])
        removed = 0
        for k, verdict in zip(stale, verdicts, strict=True):
            if verdict == k.label:
                k.version = version
            else:
                kept.remove(k)
                seen.discard((k.pair["question_id"], frozenset((k.pair["text_a"], k.pair["text_b"]))))
                drops["inconsistent_after_refinement"] += 1
                removed += 1
        if removed == 0 or pos >= len(pairs):
            break
    return state, kept


def _run_machines(machines: dict, refiner) -> dict:
    """Advance every user's refinement generator, batching their calls per round."""
    results = {}
    pending = {}
    for uid, m in machines.items():
        try:
            pending[uid] = next(m)
        except StopIteration as stop:
            results[uid] = stop.value
    while pending:
        judge_items, judge_owner, refine_items, refine_owner = [], [], [], []
        for uid, (kind, payload) in pending.items():
            if kind == "judge":
                judge_owner.append((uid, len(judge_items), len(payload)))
                judge_items.extend(payload)
            else:
                refine_owner.append(uid)
                refine_items.append(payload)
        answers = {}
        if judge_items:
            labels = refiner.judge_both(judge_items)
            for uid, start, n in judge_owner:
                answers[uid] = labels[start : start + n]
        if refine_items:
            for uid, res in zip(refine_owner, refiner.refine(refine_items), strict=True):
                answers[uid] = res
        nxt = {}
        for uid in pending:
            try:
                nxt[uid] = machines[uid].send(answers[uid])
            except StopIteration as stop:
                results[uid] = stop.value
        pending = nxt
    return results


def label_entropy(p: float) -> float:
    """Entropy in nats of a binary label distribution (p, 1 - p)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def refine_shard(rows: list[dict], provider, refiner, *, entropy_repeats: int = 1) -> ShardResult:
    """Stage 7 for one shard: combine the two orders of each pair (swap-consistency
    filter), refine each user's persona over their pairs, measure label entropy before and
    after, and build the output rows (stage 8's input)."""
    res = ShardResult()
    by_key: dict[str, dict] = {}
    for r in rows:
        res.users.add(r["user_id"])
        res.gen_calls += r.get("gen_calls", 0)
        if r.get("tokens"):
            res.tokens = add_tokens(res.tokens, r["tokens"])
        entry = by_key.setdefault(r["key"], {"orders": {}, "drop": None, "row": r})
        if r.get("drop"):
            entry["drop"] = entry["drop"] or r["drop"]
        else:
            entry["orders"][r["order"]] = r["label"]
    per_user: dict[str, list[dict]] = {}
    for key in sorted(by_key):
        entry = by_key[key]
        if entry["drop"]:
            res.drops[entry["drop"]] += 1
            continue
        pair = {k: v for k, v in entry["row"].items() if k not in ("order", "label", "drop")}
        res.pairs_judged += 1
        verdict = combine_orders(entry["orders"][0], entry["orders"][1])
        pair["votes"] = f"{entry['orders'][0]}|{entry['orders'][1]}"
        if verdict == "inconsistent":
            res.position_inconsistent += 1
            res.drops["position_inconsistent"] += 1
            continue
        res.undecided_before += verdict == "tie"
        pair["verdict"] = verdict
        per_user.setdefault(pair["user_id"], []).append(pair)

    target = provider.target
    counts: Counter = Counter()
    initial, machines = {}, {}
    for uid in sorted(per_user):
        pairs = per_user[uid]  # slot order (keys sort by slot)
        initial[uid] = refiner.initial_state(pairs[0])
        machines[uid] = _refine_user(
            initial[uid], pairs, target, rng_for("refine", provider.seed, uid), res.drops, counts
        )
    finals = _run_machines(machines, refiner)
    res.refinements = counts["refinements"]
    res.users_short = sum(1 for uid in res.users if len(finals.get(uid, (None, []))[1]) < target)

    # Label entropy of the written pairs under the initial and the final description.
    before_items, after_items = [], []
    for uid in sorted(finals):
        final, kept = finals[uid]
        for k in kept:
            before_items.append((initial[uid], k.pair, k.label))
            after_items.append((final, k.pair, k.label))
    res.entropy_before_sum = sum(label_entropy(p) for p in refiner.votes(before_items, entropy_repeats))
    res.entropy_after_sum = sum(label_entropy(p) for p in refiner.votes(after_items, entropy_repeats))

    for uid in sorted(finals):
        final, kept = finals[uid]
        description = refiner.description(final)
        profile = refiner.profile(final)
        for k in kept:
            res.rows.append(preference_row(k, description, profile, provider))
    return res


def preference_row(k: Kept, description: str, profile: dict | None, provider) -> dict:
    """A kept pair -> a row of the data contract (fspo_ray.data.PREFERENCE_SCHEMA)."""
    p = k.pair
    a_wins = k.label == "A"
    chosen, rejected = (p["text_a"], p["text_b"]) if a_wins else (p["text_b"], p["text_a"])
    view_c, view_r = (p["view_a"], p["view_b"]) if a_wins else (p["view_b"], p["view_a"])
    gen_c, gen_r = (p["gen_a"], p["gen_b"]) if a_wins else (p["gen_b"], p["gen_a"])
    return {
        "user_id": p["user_id"],
        "question": p["question"],
        "chosen": chosen,
        "rejected": rejected,
        "domain": p["domain"],
        "split": p["split"],
        "user_description": description,
        "user_profile": json.dumps(profile, sort_keys=True) if profile is not None else None,
        "pair_id": pair_id(p["user_id"], p["question_id"], chosen, rejected),
        "question_id": p["question_id"],
        "generator_chosen": gen_c,
        "generator_rejected": gen_r,
        "view_chosen": json.dumps(view_c, sort_keys=True),
        "view_rejected": json.dumps(view_r, sort_keys=True),
        "judge_votes": p["votes"],
        "refined": k.refined,
        "source": provider.source,
        "seed": provider.seed,
    }


# --- the whole chain in one process (the world's fused path; tests) --------------------


def run_ops(ops: list[tuple], rows: list[dict]) -> list[dict]:
    """Apply a provider's ops in process; only task ops can run here."""
    for op in ops:
        if op[0] != "task":
            raise ValueError(f"op {op[0]!r} needs an engine; run it through the Ray pipeline")
        rows = op[1](rows)
    return rows


def run_shard_in_process(shard: dict, provider, refiner, *, entropy_repeats: int) -> ShardResult:
    """Every stage of one shard in this process: the same functions the Ray graph runs."""
    slots = plan_slots([shard], provider)
    slots = run_ops(provider.views_ops(), slots)
    requests = run_ops(provider.responses_ops(), response_requests(slots))
    pairs = pair_responses(requests, provider.seed)
    labelled = run_ops(provider.judge_ops(), judge_requests(pairs))
    return refine_shard(labelled, provider, refiner, entropy_repeats=entropy_repeats)
