"""Learning probe: does the tiny world model learn FSPO's in-context reward inference?

    python -m bench.learning_probe                              # IPO beta 0.1, lr 3e-4, 1 epoch each
    python -m bench.learning_probe --loss dpo --lr-pref 1e-4 --pref-epochs 2
    python -m bench.learning_probe --save-sft /tmp/sft.pt ...   # then --load-sft /tmp/sft.pt to skip SFT

One process, no Ray or DeepSpeed, the library's own pieces: world users (World.user_preferences),
episodes (build_episodes / encode_episode), collate_packed + shared_prefix_forward, and
preference_loss. Stages: base SFT without context, Pref-FT on N-shot episodes, then the
preference stage with the Pref-FT model as reference. Prints the running reward accuracy of
the training batches (before each update) and ends with a RESULT line: the implicit reward's
accuracy on held-out pairs of trained, held-out and interpolated users (docs/training.md).
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from fspo_ray.collate import collator_for
from fspo_ray.config import load_config
from fspo_ray.episodes import Preference, build_episodes, encode_episode
from fspo_ray.forward import forward_for
from fspo_ray.losses import preference_loss
from fspo_ray.modeling import build_tiny_from_config, load_tokenizer
from fspo_ray.world import world_from_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--corpus-sentences", type=int, default=20000, help="tokenizer corpus size")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--users", type=int, default=120)
    ap.add_argument("--prefs", type=int, default=24)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--base-epochs", type=int, default=1)
    ap.add_argument("--sft-epochs", type=int, default=1)
    ap.add_argument("--pref-epochs", type=int, default=1)
    ap.add_argument("--lr-base", type=float, default=2e-3)
    ap.add_argument("--lr-sft", type=float, default=1e-3)
    ap.add_argument("--lr-pref", type=float, default=3e-4)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--no-context", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (fp32 either way)")
    ap.add_argument("--eval-users", type=int, default=40)
    ap.add_argument("--loss", default="ipo")
    ap.add_argument("--skip-sft", action="store_true")
    ap.add_argument("--save-sft")
    ap.add_argument("--workdir", default=tempfile.mkdtemp(prefix="fspo-probe-"))
    ap.add_argument("--load-sft")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(
        str(Path(__file__).resolve().parents[1] / "jobs/configs/world.yaml"),
        [
            f"tiny_model.hidden_size={a.hidden}",
            f"tiny_model.intermediate_size={int(a.hidden * 2.6875)}",
            f"tiny_model.num_layers={a.layers}",
            f"tiny_model.output={a.workdir}/model",
            f"tiny_model.corpus_sentences={a.corpus_sentences}",
            f"world.users_train={a.users}",
        ],
    )
    mdir = build_tiny_from_config(cfg)
    tok = load_tokenizer(str(mdir))

    model = AutoModelForCausalLM.from_pretrained(
        str(mdir), attn_implementation="sdpa", dtype=torch.float32
    )
    dev = torch.device(a.device)
    model.to(dev)

    def to_dev(batch):
        return {k: v.to(dev) for k, v in batch.items()}

    print("params", sum(p.numel() for p in model.parameters()), flush=True)
    world = world_from_config(cfg.world)

    def users(split, n):
        return {
            u: [
                Preference(r["question"], r["chosen"], r["rejected"])
                for r in world.user_preferences(u, a.prefs, seed=0)
            ]
            for u in world.user_ids(split, n)
        }

    T0 = time.time()
    train_u = users("train", a.users)
    held_u = users("held_out", a.eval_users)
    interp_u = users("interpolated", a.eval_users)
    print("data", round(time.time() - T0, 1), flush=True)

    def enc(t):
        return tok(t, add_special_tokens=False)["input_ids"]

    def encode(us, shots, epoch):
        eps, _ = build_episodes(us, num_shots=max(shots, 1), min_shots=1, seed=0, epoch=epoch)
        out = []
        for e in eps:
            if shots == 0:
                e = type(e)(user_id=e.user_id, shots=(), held_out=e.held_out)
            x = encode_episode(
                e, enc, eos_token=tok.eos_token, max_length=1024, min_shots=0 if shots == 0 else 1
            )
            if x is not None:
                out.append(
                    {
                        "prompt_ids": x.prompt_ids,
                        "chosen_ids": x.chosen_ids,
                        "rejected_ids": x.rejected_ids,
                    }
                )
        return out

    coll, fwd = collator_for("shared_prefix"), forward_for("shared_prefix")
    pad = tok.pad_token_id

    def batches(recs, bs, shuffle_seed):
        recs = list(recs)
        random.Random(shuffle_seed).shuffle(recs)
        return [recs[i : i + bs] for i in range(0, len(recs), bs)]

    @torch.no_grad()
    def add_ref(recs):
        model.eval()
        for b in batches(recs, 32, 0):
            o = fwd(model, to_dev(coll(b, pad)))
            for e, c, r in zip(b, o.chosen_logps.tolist(), o.rejected_logps.tolist(), strict=True):
                e["ref_c"], e["ref_r"] = c, r
        model.train()

    def run(name, shots, epochs, lr, kind, users_=train_u):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        step = 0
        t0 = time.time()
        ntok = 0
        hacc = [0.5]
        for ep in range(epochs):
            recs = encode(users_, shots, ep)
            if kind == "pref":
                add_ref(recs)
            for b in batches(recs, a.bs, ep):
                batch = to_dev(coll(b, pad))
                o = fwd(model, batch)
                if kind == "sft":
                    tokens = (o.chosen_tokens + o.rejected_tokens).sum()
                    loss = -(o.chosen_logps.sum() + o.rejected_logps.sum()) / tokens
                else:
                    rc = torch.tensor([e["ref_c"] for e in b], device=dev)
                    rr = torch.tensor([e["ref_r"] for e in b], device=dev)
                    losses, cr, rj = preference_loss(
                        o.chosen_logps, o.rejected_logps, rc, rr, loss_type=a.loss, beta=a.beta
                    )
                    loss = losses.mean()
                warm = min(1.0, (step + 1) / 10)
                for g in opt.param_groups:
                    g["lr"] = lr * warm
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                opt.zero_grad()
                ntok += batch["input_ids"].numel()
                step += 1
                if kind == "pref":
                    hacc.append((cr > rj).float().mean().item())
                if step % 25 == 0:
                    print(
                        f"  {name} ep{ep} step {step} loss {loss.item():.4f} acc25 {sum(hacc[-25:]) / len(hacc[-25:]):.3f} {ntok / (time.time() - t0):.0f} tok/s",
                        flush=True,
                    )
        print(f"{name}: {step} steps {time.time() - t0:.0f}s", flush=True)

    @torch.no_grad()
    def reward_acc(us, shots, ref_state):
        recs = encode(us, shots, 10000)
        cur = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ref_state)
        add_ref(recs)
        model.load_state_dict(cur)
        model.eval()
        acc = 0.0
        for b in batches(recs, 32, 0):
            o = fwd(model, to_dev(coll(b, pad)))
            for e, c, r in zip(b, o.chosen_logps.tolist(), o.rejected_logps.tolist(), strict=True):
                h = (c - e["ref_c"]) - (r - e["ref_r"])
                acc += 1.0 if h > 0 else 0.5 if h == 0 else 0
        model.train()
        return acc / len(recs)

    if a.load_sft:
        model.load_state_dict(torch.load(a.load_sft, map_location=dev))
    else:
        run("base_sft", 0, a.base_epochs, a.lr_base, "sft")
        if not a.skip_sft:
            run("sft", 0 if a.no_context else a.shots, a.sft_epochs, a.lr_sft, "sft")
        if a.save_sft:
            torch.save(model.state_dict(), a.save_sft)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    s = 0 if a.no_context else a.shots
    run("pref", s, a.pref_epochs, a.lr_pref, "pref")
    res = {
        sp: round(reward_acc(u, s, ref), 3)
        for sp, u in (
            ("train", dict(list(train_u.items())[: a.eval_users])),
            ("held_out", held_u),
            ("interpolated", interp_u),
        )
    }
    print(
        "RESULT "
        + json.dumps({"args": vars(a), "reward_accuracy": res, "seconds": round(time.time() - T0)}),
        flush=True,
    )


if __name__ == "__main__":
    main()
