"""Learning probe: does the tiny world model learn FSPO's in-context reward inference, and how fast?

    python -m bench.learning_probe                                   # jobs/configs/world.yaml's recipe, world seed 0
    python -m bench.learning_probe --world-seeds 1 2 3 --pref-steps 1500
    python -m bench.learning_probe --out runs/probe episodes.signed_shots=false   # any config override
    python -m bench.learning_probe --device cuda world.rendering=text tiny_model.tokenizer=bpe --pref-steps 20000

One process, no Ray or DeepSpeed, the library's own pieces on the config's recipe: the world's
rows from the generation stages in-process (judge noise, swap-consistency filter and refinement
included), the config's tokenizer and tiny model, multi-query episodes (training/batches.py),
the tree-layout forward and `losses.step_loss`. Stages: `base_sft` (its step count), then the
`fspo` preference stage with `base_sft` as reference, scored on held-out users every
`--eval-every` steps (implicit-reward accuracy on the same pairs the train job scores), with the
world's shot reader and no-context prior on those pairs. Writes `<out>/learning_probe.json`
(every curve and the figures) and `<out>/learning_probe.png`; the last stdout line is a RESULT
JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from fspo_ray.collate import collate_tree
from fspo_ray.config import load_config
from fspo_ray.data import UserData
from fspo_ray.episodes import Preference
from fspo_ray.forward import tree_forward
from fspo_ray.losses import step_loss
from fspo_ray.training.batches import (
    attach_reference,
    encode_examples,
    eval_episodes,
    reward_correct,
    score,
    stage_episodes,
)
from fspo_ray.training.loop import lr_factor
from fspo_ray.training.plan import make_plan
from fspo_ray.world.reference import population_prior_accuracy, shot_reader_accuracy

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "world.yaml"


def world_users(cfg) -> dict[str, UserData]:
    """Every split's users from the generation stages run in this process (the rows jobs.generate writes)."""
    from fspo_ray.generation.providers import make_provider
    from fspo_ray.generation.sources import plan_shards
    from fspo_ray.generation.stages import run_shard_in_process

    provider = make_provider(cfg)
    refiner = provider.open_refiner()
    out = {s: UserData({}, {}) for s in ("train", "held_out", "interpolated")}
    for shard in plan_shards(provider.users_per_split(), cfg.generate.users_per_shard):
        result = run_shard_in_process(shard.as_row(), provider, refiner, entropy_repeats=1)
        for r in result.rows:
            users = out[r["split"]]
            users.prefs.setdefault(r["user_id"], []).append(Preference(r["question"], r["chosen"], r["rejected"]))
            users.descriptions[r["user_id"]] = r["user_description"]
    return out


def first(users: UserData, n: int) -> UserData:
    keep = sorted(users.prefs)[:n]
    return UserData({u: users.prefs[u] for u in keep}, {u: users.descriptions[u] for u in keep if u in users.descriptions})


class Probe:
    def __init__(self, cfg, args):
        self.cfg, self.args = cfg, args
        self.plan = make_plan(cfg)
        self.device = torch.device(args.device)

    def build(self):
        from fspo_ray.modeling import build_tiny_from_config, load_model_and_tokenizer

        path = build_tiny_from_config(self.cfg)
        self.model, self.tok = load_model_and_tokenizer(str(path), dtype="float32", device=str(self.device))
        return sum(p.numel() for p in self.model.parameters())

    def examples(self, users: UserData, stage, epoch: int | None) -> list[dict]:
        eps = eval_episodes(users, stage, self.plan) if epoch is None else stage_episodes(users, stage, self.plan, epoch)
        return encode_examples(eps, self.tok, stage, self.plan)[0]

    def train(self, stage, users: UserData, steps: int, evals: dict | None, reference=None) -> list[dict]:
        """`steps` optimizer steps of `stage` (episodes resampled every epoch); the curve when scored."""
        model, a = self.model, self.args
        batch = stage.micro_batch * stage.accum
        opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(stage, steps))
        curve, step, epoch, t0, spent = [], 0, 0, time.perf_counter(), 0.0
        if evals:
            curve.append(self.point(evals, 0, 0.0))
        while step < steps:
            rows = self.examples(users, stage, epoch)
            random.Random(epoch).shuffle(rows)
            if reference is not None:
                attach_reference(rows, *score(reference, rows, pad_token_id=self.tok.pad_token_id, micro_batch=64,
                                              device=self.device))
            for start in range(0, len(rows) - batch + 1, batch):
                t = time.perf_counter()
                b = {k: v.to(self.device) for k, v in collate_tree(rows[start : start + batch], self.tok.pad_token_id).items()}
                loss, _ = step_loss(tree_forward(model, b), b, kind=stage.kind, loss_type=stage.loss_type, beta=stage.beta,
                                    label_smoothing=stage.label_smoothing, rpo_alpha=stage.rpo_alpha)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
                opt.step()
                opt.zero_grad()
                sched.step()
                step += 1
                spent += time.perf_counter() - t
                if evals and (step % a.eval_every == 0 or step == steps):
                    curve.append(self.point(evals, step, spent))
                    print(f"  {stage.name} step {step} ({spent:.0f} s) loss {loss.item():.3f} "
                          + " ".join(f"{k} {v:.3f}" for k, v in curve[-1].items() if k not in ("step", "seconds")),
                          flush=True)
                if step == steps:
                    break
            epoch += 1
        print(f"{stage.name}: {step} steps, {spent:.0f} s of steps, {time.perf_counter() - t0:.0f} s in all", flush=True)
        return curve

    def point(self, evals: dict, step: int, seconds: float) -> dict:
        out = {"step": step, "seconds": round(seconds, 1)}
        for key, rows in evals.items():
            c, r = score(self.model, rows, pad_token_id=self.tok.pad_token_id, micro_batch=64, device=self.device)
            correct, n = reward_correct(rows, c, r)
            out[key] = round(correct / n, 4)
        return out


def run_seed(base_cfg, overrides: list[str], seed: int, args) -> dict:
    cfg = load_config(str(args.config), [*overrides, f"world.seed={seed}", f"tiny_model.output={args.out}/model-{seed}",
                                         f"output_dir={args.out}/run-{seed}"])
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    users = world_users(cfg)
    print(f"world seed {seed}: {sum(len(v) for v in users['train'].prefs.values())} training pairs of "
          f"{len(users['train'].prefs)} users in {time.perf_counter() - t0:.0f} s", flush=True)
    probe = Probe(cfg, args)
    params = probe.build()
    stages = {s.name: s for s in probe.plan.stages}
    fspo = stages["fspo"]
    held = first(users["held_out"], cfg.train.eval_users_per_split)
    interp = first(users["interpolated"], cfg.train.eval_users_per_split)
    sweep = [n for n in args.eval_shots if n != fspo.num_shots]
    evals_spec = {"held_out": (held, fspo), "interpolated": (interp, fspo)}
    evals_spec |= {f"held_out@{n}": (held, replace(fspo, num_shots=n, min_shots=min(fspo.min_shots, n),
                                                   queries=fspo.queries if n else 1)) for n in sweep}
    base_curve = probe.train(stages["base_sft"], users["train"], args.base_steps, None) if args.base_steps else []
    reference = type(probe.model)(probe.model.config).to(probe.device)
    reference.load_state_dict(probe.model.state_dict())
    reference.eval()
    evals = {}
    for key, (us, st) in evals_spec.items():
        rows = probe.examples(us, st, None)
        attach_reference(rows, *score(reference, rows, pad_token_id=probe.tok.pad_token_id, micro_batch=64,
                                      device=probe.device))
        evals[key] = rows
    curve = probe.train(fspo, users["train"], args.pref_steps, evals, reference=reference)
    readers = {}
    for key, (us, st) in evals_spec.items():
        eps = eval_episodes(us, st, probe.plan)
        readers[key] = {"shot_reader": shot_reader_accuracy(eps) if st.num_shots else 0.5,
                        "population_prior": population_prior_accuracy(users["train"].prefs, eps)}
    best = max(curve, key=lambda p: p["held_out"])
    first_70 = next((p for p in curve if p["held_out"] >= 0.70), None)
    return {"world_seed": seed, "params": params, "base_steps": args.base_steps, "curve": curve, "base_curve": base_curve,
            "final": curve[-1], "best": best, "first_at_0.70": first_70, "reference": readers}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        line, = ax.plot([p["step"] for p in r["curve"]], [p["held_out"] for p in r["curve"]], marker=".",
                        label=f"world seed {r['world_seed']}")
        ax.axhline(r["reference"]["held_out"]["shot_reader"], color=line.get_color(), ls="--", lw=0.8)
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set_xlabel("preference optimizer step")
    ax.set_ylabel("held-out users' reward accuracy")
    ax.set_title("FSPO on the world (dashed: the shot reader on the same pairs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--world-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base-steps", type=int, default=150, help="base_sft steps before the preference stage")
    ap.add_argument("--pref-steps", type=int, default=1500, help="fspo (preference) steps")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-shots", type=int, nargs="*", default=[0, 2, 4], help="extra N scored on held-out users")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (fp32 either way)")
    ap.add_argument("--out", type=Path, default=Path("runs/learning_probe"))
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = [run_seed(None, args.overrides, s, args) for s in args.world_seeds]
    summary = {"config": str(args.config), "overrides": args.overrides, "base_steps": args.base_steps,
               "pref_steps": args.pref_steps, "device": args.device, "threads": args.threads,
               "seconds": round(time.perf_counter() - t0), "seeds": results}
    (args.out / "learning_probe.json").write_text(json.dumps(summary, indent=2))
    try:
        plot(results, args.out / "learning_probe.png")
    except ImportError:
        pass
    print("RESULT " + json.dumps({
        "overrides": args.overrides, "pref_steps": args.pref_steps,
        "by_seed": {r["world_seed"]: {"final": r["final"]["held_out"], "best": r["best"]["held_out"],
                                      "shot_reader": round(r["reference"]["held_out"]["shot_reader"], 4),
                                      "steps_per_s": round(r["final"]["step"] / max(r["final"]["seconds"], 1e-9), 2)}
                    for r in results},
        "mean_final": round(math.fsum(r["final"]["held_out"] for r in results) / len(results), 4),
    }), flush=True)


if __name__ == "__main__":
    main()
