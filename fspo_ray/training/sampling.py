"""RAT stage 2's pairs, sampled inside the training worker: K user descriptions per episode
drawn on-policy from the stage's start model, ranked by embedding similarity to the gold
description (all-MiniLM-L6-v2 by default); the closest is chosen, the farthest rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fspo_ray.episodes import Episode, Preference, apply_chat, render_describe_prompt
from fspo_ray.modeling import bos_prefix_ids, prompt_batch, stop_token_ids


def describe_prompts(episodes: Sequence[Episode], tokenizer, template: str, signed: bool = False) -> list[str]:
    prompts = [render_describe_prompt(e.shots, signed) for e in episodes]
    if template == "chat":
        prompts = [apply_chat(p, tokenizer.apply_chat_template) for p in prompts]
    return prompts


@torch.no_grad()
def sample_texts(model, tokenizer, prompts: Sequence[str], *, k: int, temperature: float, max_new_tokens: int,
                 seed: int, device, batch_size: int = 32) -> list[list[str]]:
    """k sampled continuations per prompt (first line, stripped), deterministic for a seed."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    out: list[list[str]] = []
    bos_ids, stop_ids = bos_prefix_ids(tokenizer), stop_token_ids(model, tokenizer)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = prompt_batch(tokenizer, chunk, bos_ids).to(device)  # as training encodes the prefix; left-padded
            # transformers' default top_k=50 stays on here (unlike HFEngine): the RAT figures in docs were
            # measured with it.
            gen = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, num_return_sequences=k,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=stop_ids)
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            texts = [t.strip().split("\n")[0].strip() for t in texts]
            out.extend(texts[i * k : (i + 1) * k] for i in range(len(chunk)))
    finally:
        tokenizer.padding_side = side
        torch.set_rng_state(generator_state)
        model.train(was_training)
    return out


class DescriptionRanker:
    """Cosine similarity of texts to a gold description with a sentence embedder (offline path)."""

    def __init__(self, embedder_path: str, device: str = "cpu"):
        from fspo_ray.engines.embedder import load_sentence_model

        self.model = load_sentence_model(embedder_path, device=device)

    def similarities(self, samples: Sequence[Sequence[str]], gold: Sequence[str]) -> list[list[float]]:
        flat = [t or "-" for group in samples for t in group]
        emb = self.model.encode(flat, normalize_embeddings=True, convert_to_tensor=True)  # (n*K, d)
        ref = self.model.encode(list(gold), normalize_embeddings=True, convert_to_tensor=True)  # (n, d)
        k = len(samples[0]) if samples else 0
        sims = (emb.view(len(gold), k, -1) @ ref.unsqueeze(-1)).squeeze(-1)  # (n, K)
        return sims.cpu().tolist()


def rank_pairs(episodes: Sequence[Episode], samples: Sequence[Sequence[str]], sims: Sequence[Sequence[float]]
               ) -> tuple[list[Episode], dict]:
    """Episodes whose query is (closest, farthest) sampled description, and the quality figures."""
    out, kept = [], 0
    best_sum = worst_sum = mean_sum = 0.0
    for e, group, s in zip(episodes, samples, sims, strict=True):
        best = max(range(len(group)), key=s.__getitem__)
        worst = min(range(len(group)), key=s.__getitem__)
        chosen, rejected = group[best] or "-", group[worst] or "-"
        kept += chosen != rejected
        best_sum, worst_sum, mean_sum = best_sum + s[best], worst_sum + s[worst], mean_sum + sum(s) / len(s)
        out.append(Episode(e.user_id, e.shots, (Preference("", chosen, rejected),), e.user_description, e.domain))
    n = max(1, len(episodes))
    return out, {"episodes": len(episodes), "pairs_distinct": kept, "mean_similarity_to_gold": mean_sum / n,
                 "mean_best_similarity": best_sum / n, "mean_worst_similarity": worst_sum / n}
