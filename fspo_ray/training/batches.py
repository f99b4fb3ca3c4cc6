"""A worker's share of a stage: episodes sampled and tokenized to the multi-query layout, the
reference pass, and the scoring pass of held-out pairs. Plain Python + torch (no Ray), so it
is tested in milliseconds.

Every rank samples and tokenizes the same episodes (deterministic per seed, epoch and user),
then keeps its own rows: rank r of W takes micro-batch a of global step s at rows
`[s*G + (a*W + r)*M, ... + M)` with G = M * accum * W, so the position in the data is the
global step alone, and a resumed run replays exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fspo_ray.collate import collate_tree
from fspo_ray.data import UserData
from fspo_ray.episodes import Episode, Preference, build_episodes, encode_episode
from fspo_ray.errors import FspoError
from fspo_ray.forward import tree_forward
from fspo_ray.losses import implicit_reward_correct
from fspo_ray.modeling import bos_prefix_ids

EVAL_EPOCH = 10_000  # the held-out episodes' sampling epoch: never one that trains


def describe_task(episodes: Sequence[Episode]) -> list[Episode]:
    """RAT's describe task: one query per episode whose completions are the gold description
    (SFT; describe_preference replaces them with sampled ones)."""
    out = []
    for e in episodes:
        if not e.user_description:
            raise FspoError(f"user {e.user_id} has no user_description; RAT describe stages need one per user")
        gold = Preference("", e.user_description, e.user_description)
        out.append(Episode(e.user_id, e.shots, (gold,), e.user_description, e.domain))
    return out


def stage_episodes(users: UserData, stage, plan, epoch: int) -> list[Episode]:
    """The episodes one epoch of `stage` trains on: all, or the first `max_episodes` of the
    epoch's shuffled order (a different subset every epoch)."""
    episodes, _ = build_episodes(
        users.prefs, num_shots=stage.num_shots, min_shots=stage.min_shots, seed=plan.seed, epoch=epoch,
        repeats=1 if stage.kind == "base_sft" else plan.repeats_per_epoch, queries_per_episode=stage.queries,
        descriptions=users.descriptions,
    )
    if stage.max_episodes is not None:
        episodes = episodes[: stage.max_episodes]
    return describe_task(episodes) if stage.task == "describe" else episodes


def eval_episodes(users: UserData, stage, plan) -> list[Episode]:
    """A split's held-out episodes for scoring (fixed sampling epoch, the stage's shots and queries)."""
    episodes, _ = build_episodes(users.prefs, num_shots=stage.num_shots, min_shots=stage.min_shots,
                                 seed=plan.seed, epoch=EVAL_EPOCH, queries_per_episode=stage.queries,
                                 descriptions=users.descriptions)
    return episodes


def encode_examples(episodes: Sequence[Episode], tokenizer, stage, plan,
                    cache: dict[str, list[int]] | None = None) -> tuple[list[dict], int]:
    """Tree-layout examples of the episodes that fit `max_length`, and how many did not.

    Questions and completions recur across a user's episodes (and, in the compact world, across
    users), so each distinct string is tokenized once (`cache`, shareable across calls)."""
    cache = {} if cache is None else cache

    def encode(text: str) -> list[int]:
        ids = cache.get(text)
        if ids is None:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(text) <= 2000:  # a prefix (the shots) rarely recurs; long prompts would fill memory
                cache[text] = ids
        return ids

    # Rendered by episodes.apply_chat (a fixed date_string), started by the model's BOS when it uses one.
    chat = tokenizer.apply_chat_template if plan.template == "chat" else None
    bos_ids = bos_prefix_ids(tokenizer)
    out, dropped = [], 0
    for index, e in enumerate(episodes):
        enc = encode_episode(e, encode, eos_token=tokenizer.eos_token, max_length=plan.max_length,
                             min_shots=stage.min_shots, template=plan.template, rat=stage.rat,
                             apply_chat_template=chat, task=stage.task, signed=plan.signed_shots, bos_ids=bos_ids)
        if enc is None:
            dropped += 1
            continue
        example = enc.as_tree_example()
        example["user_id"], example["episode"] = e.user_id, index
        out.append(example)
    return out, dropped


def steps_of(n_rows: int, *, rank: int, world_size: int, micro_batch: int, accum: int) -> list[list[list[int]]]:
    """This rank's row indices per optimizer step and micro-batch: steps[s][a] = rows. Every rank
    gets the same number of steps; the remainder under one global batch is left out."""
    g = micro_batch * accum * world_size
    steps = []
    for s in range(n_rows // g):
        steps.append([list(range(s * g + (a * world_size + rank) * micro_batch,
                                 s * g + (a * world_size + rank + 1) * micro_batch)) for a in range(accum)])
    return steps


def tokens_in(examples: Sequence[dict]) -> int:
    """Real tokens the model runs for these examples (prefix once, every query block)."""
    return sum(len(e["prefix_ids"]) + sum(len(q["question_ids"]) + len(q["chosen_ids"]) + len(q["rejected_ids"])
                                         for q in e["queries"]) for e in examples)


@torch.inference_mode()
def score(model, examples: Sequence[dict], *, pad_token_id: int, micro_batch: int, device) -> tuple[list[float], list[float]]:
    """Summed completion log-probs of every query of `examples` (example-major), in eval mode.
    Rows are batched in length order (less padding), results returned in the examples' order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: tokens_in(examples[i : i + 1]))
    per_example: dict[int, tuple[list[float], list[float]]] = {}
    try:
        for start in range(0, len(order), micro_batch):
            idx = order[start : start + micro_batch]
            rows = [examples[i] for i in idx]
            batch = {k: v.to(device) for k, v in collate_tree(rows, pad_token_id).items()}
            out = tree_forward(model, batch)
            chosen, rejected = out.chosen_logps.double().cpu().tolist(), out.rejected_logps.double().cpu().tolist()
            at = 0
            for i, row in zip(idx, rows, strict=True):
                n = len(row["queries"])
                per_example[i] = (chosen[at : at + n], rejected[at : at + n])
                at += n
    finally:
        model.train(was_training)
    chosen_all: list[float] = []
    rejected_all: list[float] = []
    for i in range(len(examples)):
        chosen_all += per_example[i][0]
        rejected_all += per_example[i][1]
    return chosen_all, rejected_all


def attach_reference(examples: Sequence[dict], chosen: Sequence[float], rejected: Sequence[float]) -> None:
    """Store the reference log-probs with each query (what collate_tree passes to the loss)."""
    i = 0
    for e in examples:
        for q in e["queries"]:
            q["ref_chosen_logps"], q["ref_rejected_logps"] = chosen[i], rejected[i]
            i += 1
    if i != len(chosen):
        raise ValueError(f"{len(chosen)} reference log-probs for {i} queries")


def reward_correct(examples: Sequence[dict], chosen: Sequence[float], rejected: Sequence[float]) -> tuple[float, int]:
    """(correct, pairs) of the implicit reward on these examples' queries (ties count half)."""
    ref_c = torch.tensor([q["ref_chosen_logps"] for e in examples for q in e["queries"]], dtype=torch.float64)
    ref_r = torch.tensor([q["ref_rejected_logps"] for e in examples for q in e["queries"]], dtype=torch.float64)
    pol_c, pol_r = torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)
    return float(implicit_reward_correct(pol_c, pol_r, ref_c, ref_r).sum()), len(chosen)
