"""Cold-start elicitation: does asking the pairs the `active` strategy picks, instead of random ones,
make a new user's K shots tell the trained FSPO model more about them?

    python -m bench.elicitation --run runs/fspo-world            # after bash scripts/demo.sh
    python -m bench.elicitation --run runs/x --users 40 --shots 2 4 8 --policy fspo
    python -m bench.elicitation --run runs/quick --train 150 1500    # no demo run: train base_sft + fspo here first

Held-out world users answer the page's pair pool (serve/config.yaml's world pool) by the world's
judge with their true persona (noiseless; a tie is a skip, as a person with no preference would
skip). Each strategy elicits until 8 answers; K = 2, 4, 8 are the first K. On the same held-out
pairs of each user (the world's own pairs, in the rendering the models were trained on):

- reward accuracy of the trained policy with the K elicited shots in its prompt: the implicit
  reward h = (log pi(y_w|p) - log ref(y_w|p)) - (log pi(y_l|p) - log ref(y_l|p)) > 0 (a tie is 1/2),
  tokenized by the training code's `encode_episode`, every held-out pair a query of one episode;
- the world's shot reader on the same shots (fspo_ray/world/reference.py): what the shots make knowable.

Both strategies run side by side in one process on the same users and pairs. Prints a table on
stderr and one JSON line on stdout. Without the policy or reference model, the model columns are
null and the shot reader still runs. `--train BASE PREF` first trains the two models in this
process with bench.learning_probe's trainer (the config's recipe: `base_sft` for BASE steps, then
`fspo` for PREF steps against it) and saves them under <run>/models/.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import sys
import time
from pathlib import Path

from fspo_ray.config import load_config
from fspo_ray.episodes import Episode, Preference, encode_episode
from fspo_ray.serving.elicitation import Elicitor
from fspo_ray.serving.page import RUN_CONFIG_NAMES
from fspo_ray.serving.pool import world_pool
from fspo_ray.world import world_from_config
from fspo_ray.world.reference import _score, evidence

STRATEGIES = ("random", "active")


def run_config(run: Path, config: str | None):
    if config is not None:
        return load_config(config, [])
    for name in RUN_CONFIG_NAMES:
        if (run / name).is_file():
            return load_config(str(run / name), [])
    return load_config("jobs/configs/world.yaml", [f"output_dir={run}"])


def elicit(world, pool, elicitor: Elicitor, persona, user_id: str, k: int) -> tuple[list[Preference], int]:
    """The user's first k answers to the strategy's pairs (model rendering), and how many they skipped."""
    answered, skipped, shots = [], set(), []
    rng = random.Random(0)
    while len(answered) < k:
        i = elicitor.next_pair(user_id, answered, skipped)
        if i is None:
            break
        p = pool.pairs[i]
        label = world.judge(persona, p.world_question, p.answers[0].person, p.answers[1].person, rng,
                            position_bias=0.0, noise=0.0)
        if label == "tie":
            skipped.add(i)
            continue
        side = 0 if label == "A" else 1
        answered.append((i, side))
        shots.append(Preference(p.question.model, p.answers[side].model, p.answers[1 - side].model))
    return shots, len(skipped)


class Scorer:
    """Summed completion log-probs of policy and reference for every held-out pair, given shots."""

    def __init__(self, policy: str, reference: str, cfg, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        from fspo_ray.modeling import load_tokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = load_tokenizer(policy)
        self.models = {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
                       for name, path in (("pi", policy), ("ref", reference))}
        ep = cfg.episodes
        self.kwargs = dict(eos_token=self.tok.eos_token, max_length=ep.max_length, min_shots=0,
                           template=ep.template)
        if "signed" in inspect.signature(encode_episode).parameters:
            self.kwargs["signed"] = getattr(ep, "signed_shots", False)
        if ep.template == "chat":  # rendered by episodes.apply_chat, with its fixed date_string
            self.kwargs["apply_chat_template"] = self.tok.apply_chat_template
        if "bos_ids" in inspect.signature(encode_episode).parameters:  # as training encodes (the model's BOS)
            from fspo_ray.modeling import bos_prefix_ids

            self.kwargs["bos_ids"] = bos_prefix_ids(self.tok)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def accuracy_terms(self, user_id: str, shots: list[Preference], held_out: list[Preference]) -> list[float]:
        enc = encode_episode(Episode(user_id, tuple(shots), tuple(held_out)), self._encode, **self.kwargs)
        seqs, spans = [], []
        for q in enc.queries:  # (prefix + question + completion), scoring the completion's tokens
            for completion in (q.chosen_ids, q.rejected_ids):
                head = list(enc.prefix_ids) + list(q.question_ids)
                seqs.append(head + list(completion))
                spans.append((len(head), len(head) + len(completion)))
        logps = {name: self._logps(model, seqs, spans) for name, model in self.models.items()}
        out = []
        for j in range(len(enc.queries)):
            h = (logps["pi"][2 * j] - logps["ref"][2 * j]) - (logps["pi"][2 * j + 1] - logps["ref"][2 * j + 1])
            out.append(1.0 if h > 0 else 0.5 if h == 0 else 0.0)
        return out

    def _logps(self, model, seqs: list[list[int]], spans: list[tuple[int, int]], batch: int = 32) -> list[float]:
        torch = self.torch
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: list[float] = []
        with torch.no_grad():
            for b in range(0, len(seqs), batch):
                chunk, chunk_spans = seqs[b:b + batch], spans[b:b + batch]
                width = max(map(len, chunk))
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, T) right-padded
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, s in enumerate(chunk):
                    ids[i, : len(s)] = torch.tensor(s)
                    mask[i, : len(s)] = 1
                logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
                logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
                for i, (start, end) in enumerate(chunk_spans):
                    out.append(float(logp[i, start - 1 : end - 1].sum()))  # token t is predicted at t-1
        return out


def model_path(run: Path, ref: str) -> Path:
    return Path(ref) if "/" in ref else run / "models" / ref


def reference_of(cfg, policy: str) -> str:
    """The policy stage's reference model: its `reference`, else the stage it starts from."""
    for st in cfg.train.stages:
        if st.name == policy:
            return getattr(st, "reference", None) or st.init_from or "base_sft"
    return "base_sft"


def save(probe, stage, out: Path) -> None:
    """A HF directory with the training job's prompt contract, so serving prompts it as it was trained."""
    from fspo_ray.modeling import PROMPT_CONTRACT
    from fspo_ray.training.loop import prompt_contract

    probe.model.save_pretrained(out)
    probe.tok.save_pretrained(out)
    (out / PROMPT_CONTRACT).write_text(json.dumps(prompt_contract(probe.plan, stage, probe.tok), indent=2))


def train(run: Path, config: str | None, base_steps: int, pref_steps: int, threads: int) -> None:
    """base_sft, then fspo against it, in this process (bench.learning_probe's trainer); saved as HF dirs."""
    from types import SimpleNamespace

    import torch

    from bench.learning_probe import Probe, world_users
    from fspo_ray.config import save_resolved

    torch.set_num_threads(threads)
    cfg = load_config(config or "jobs/configs/world.yaml",
                      [f"output_dir={run.resolve()}", f"tiny_model.output={run.resolve()}/models/tiny"])
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    users = world_users(cfg)
    print(f"[elicitation] world rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    probe = Probe(cfg, SimpleNamespace(device="cpu", eval_every=10**9))
    probe.build()
    stages = {s.name: s for s in probe.plan.stages}
    probe.train(stages["base_sft"], users["train"], base_steps, None)
    save(probe, stages["base_sft"], run / "models" / "base_sft")
    reference = type(probe.model)(probe.model.config)
    reference.load_state_dict(probe.model.state_dict())
    reference.eval()
    probe.train(stages["fspo"], users["train"], pref_steps, None, reference=reference)
    save(probe, stages["fspo"], run / "models" / "fspo")
    save_resolved(cfg, run, name="resolved_config.train.yaml")
    print(f"[elicitation] trained base_sft ({base_steps} steps) and fspo ({pref_steps} steps) in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/fspo-world", help="a run directory (models/, resolved_config.*.yaml)")
    ap.add_argument("--config", default=None, help="run config (default: the run's resolved config, else world.yaml)")
    ap.add_argument("--policy", default="fspo", help="stage name under <run>/models, or a model directory")
    ap.add_argument("--reference", default=None, help="the policy's reference, name or directory (default: the "
                    "policy stage's reference or init_from in the run config)")
    ap.add_argument("--users", type=int, default=40, help="held-out world users")
    ap.add_argument("--held-out-pairs", type=int, default=16, help="held-out pairs scored per user")
    ap.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--pool-size", type=int, default=200, help="pairs in the pool (as page.pairs.world.size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", type=int, nargs=2, metavar=("BASE", "PREF"), default=None,
                    help="first train base_sft for BASE steps and fspo for PREF steps into <run>/models")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    run = Path(a.run)
    if a.train is not None:
        train(run, a.config, *a.train, a.threads)
    cfg = run_config(run, a.config)
    world = world_from_config(cfg.world)
    rendering = getattr(cfg.world, "rendering", "text")
    pool = world_pool(world, rendering, a.pool_size)
    elicitors = {s: Elicitor(pool, s) for s in STRATEGIES}
    policy, reference = model_path(run, a.policy), model_path(run, a.reference or reference_of(cfg, a.policy))
    have_models = (policy / "config.json").is_file() and (reference / "config.json").is_file()
    if not have_models:
        print(f"[elicitation] no models at {policy} and {reference}: shot reader only "
              "(train first: bash scripts/demo.sh)", file=sys.stderr)
    scorer = Scorer(str(policy), str(reference), cfg, a.threads) if have_models else None

    kmax = max(a.shots)
    reader = {s: {k: [] for k in a.shots} for s in STRATEGIES}
    model = {s: {k: [] for k in a.shots} for s in STRATEGIES}
    skips = {s: 0 for s in STRATEGIES}
    users = world.user_ids("held_out", a.users)
    for uid in users:
        # The user's own pairs, labelled by the world with their (refined) persona: the held-out set.
        rows, persona = world.user_preferences_with_persona(uid, a.held_out_pairs, seed=cfg.seed + 7919)
        held_out = [Preference(r["question"], r["chosen"], r["rejected"]) for r in rows]
        for s in STRATEGIES:
            shots, skipped = elicit(world, pool, elicitors[s], persona, uid, kmax)
            skips[s] += skipped
            for k in a.shots:
                ev = evidence(shots[:k])
                reader[s][k].extend(_score(ev, p) for p in held_out)
                if scorer is not None:
                    model[s][k].extend(scorer.accuracy_terms(uid, shots[:k], held_out))

    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    result = {
        "reward_accuracy": {s: {str(k): mean(model[s][k]) for k in a.shots} for s in STRATEGIES},
        "shot_reader": {s: {str(k): mean(reader[s][k]) for k in a.shots} for s in STRATEGIES},
        "skipped_per_user": {s: round(skips[s] / len(users), 2) for s in STRATEGIES},
        "users": len(users), "held_out_pairs": len(users) * a.held_out_pairs, "pool_size": len(pool),
        "rendering": rendering, "world_seed": world.seed,
        "policy": str(policy) if have_models else None, "reference": str(reference) if have_models else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print("| K | strategy | reward accuracy | shot reader |", file=sys.stderr)
    print("|---|---|---:|---:|", file=sys.stderr)
    for k in a.shots:
        for s in STRATEGIES:
            print(f"| {k} | {s} | {result['reward_accuracy'][s][str(k)]} | {result['shot_reader'][s][str(k)]} |",
                  file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
