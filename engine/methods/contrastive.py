"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

At every step the k likeliest next tokens v of p(. | x_<t) are candidates, and the one chosen maximises

    (1 - alpha) * p(v | x_<t)  -  alpha * max_j cos(h_v, h_j)

where h_v is the last layer's hidden state at the candidate (the model run one token further with v) and h_j
the last layer's hidden states of every earlier position, the prompt's included (as Hugging Face's
implementation). The second term, the degeneration penalty, is high for a token whose representation is close
to something already said: it pushes away from the repetition loops of greedy decoding. alpha = 0 is greedy.

The k candidates go through the model in ONE forward over the shared KV cache: k tokens at the same position,
each seeing the prefix and itself only (a tree of k leaves: engine/methods/speculative/trees.py). The chosen
candidate's cache entry is kept (engine.kvcache.keep), its hidden state joins the context, and its logits are
the next step's: one forward per token, as in Hugging Face's implementation.

The option `num_candidates` is Hugging Face's `top_k` for contrastive search (the paper's k); it has its own
name here because `--top-k` is the sampling flag of the CLI.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from engine import kvcache
from engine.methods import Job, MethodError, register
from engine.methods.ar import candidates_record
from engine.methods.speculative.trees import tree_mask
from engine.options import Opt
from engine.trace import clean_float

MAX_CANDIDATES = 64
EPS = 1e-12


def check(o: dict, ctx) -> None:
    if not ctx.sampling.greedy:
        raise MethodError("Contrastive search is deterministic: set temperature to 0 (it scores the top "
                          "candidates and takes the best; there is nothing to sample).")
    vocab = len(ctx.lm.tokenizer)
    if o["num_candidates"] > vocab:
        raise MethodError(f"num_candidates ({o['num_candidates']}) is more than the vocabulary ({vocab} tokens).")


def _lazy_head(lm) -> bool:
    """Llama-style models: run the body, apply the LM head to the rows needed (the last prompt position, the
    chosen candidate) instead of every row."""
    base, head = getattr(lm.model, "model", None), getattr(lm.model, "lm_head", None)
    return base is not None and head is not None and hasattr(base, "layers") and hasattr(base, "norm") \
        and getattr(lm.model.config, "final_logit_softcapping", None) is None \
        and getattr(lm.model.config, "logit_scale", None) is None


def _forward(lm, lazy: bool, **kw):
    """(last-layer hidden states [T, d], a function row -> logits [V] float32)."""
    if lazy:
        h = lm.model.model(**kw).last_hidden_state[0]
        return h, lambda i: lm.model.lm_head(h[i:i + 1])[0].float()
    out = lm.model(**kw, output_hidden_states=True)
    return out.hidden_states[-1][0], lambda i: out.logits[0, i].float()


def _unit(h: torch.Tensor) -> torch.Tensor:
    h = h.float()
    return h / h.norm(dim=-1, keepdim=True).clamp_min(EPS)


def scores(probs_k: torch.Tensor, cand_unit: torch.Tensor, context_unit: torch.Tensor, alpha: float):
    """The contrastive scores of k candidates: (1 - alpha) * p - alpha * (max cosine with the context).
    Returns (scores [k], penalties [k])."""
    penalty = (cand_unit @ context_unit.T).max(-1).values
    return (1.0 - alpha) * probs_k - alpha * penalty, penalty


@register("contrastive", "search", "Contrastive search: of the k likeliest tokens, the one that best trades the "
          "model's confidence against similarity to what is already there (Su et al. 2022).",
          options={
              "penalty_alpha": Opt(0.6, "weight of the degeneration penalty (max cosine similarity of the "
                                        "candidate's last hidden state with every earlier position's); 0: greedy",
                                   min=0.0, max=1.0, slider=True, step=0.05),
              "num_candidates": Opt(4, "the k likeliest tokens scored each step (Hugging Face's top_k for "
                                       "contrastive search); 1: greedy", min=1, max=MAX_CANDIDATES),
          }, check=check, lossless=False)
def generate(job: Job, penalty_alpha: float = 0.6, num_candidates: int = 4):
    lm, c = job.lm, job.counters
    alpha, k = float(penalty_alpha), int(num_candidates)
    lazy = _lazy_head(lm)
    dev = lm.device
    L = job.input_ids.shape[1]
    cache = DynamicCache()
    not_likeliest = 0
    with torch.inference_mode():
        with c.compute():
            hidden, logits_of = _forward(lm, lazy, input_ids=job.input_ids, past_key_values=cache, use_cache=True)
            context = _unit(hidden)                                    # [L, d]: the prompt's positions
            logits = logits_of(hidden.shape[0] - 1)
        c.target_forwards += 1
        step = 0
        while True:
            n = L + step                                               # entries in the cache
            with c.compute():
                probs = logits.softmax(-1)
                top_p, top_i = torch.topk(probs, k)
                mask = tree_mask([-1] * k, n, lm.dtype, dev)
                pos = torch.full((1, k), n, device=dev, dtype=torch.long)
                hidden, logits_of = _forward(lm, lazy, input_ids=top_i[None], attention_mask=mask, position_ids=pos,
                                             past_key_values=cache, use_cache=True)
                cand = _unit(hidden)                                   # [k, d]
                score, penalty = scores(top_p, cand, context.to(cand.device), alpha)
                j = int(torch.argmax(score))
                tok = int(top_i[j])
                kvcache.keep(cache, n, [j])
                context = torch.cat([context, cand[j:j + 1].to(context.device)])
                next_logits = logits_of(j)
            c.target_forwards += 1
            job.commit([tok])
            not_likeliest += j != 0
            rec = {"kind": "ar", "index": step, "position": n}
            if job.record:
                with c.recording():
                    rec.update(candidates_record(lm, logits, job.sampling, tok))
                    rec["new_text"], rec["confidence"] = rec["token_text"], rec["prob"]
                    rec["contrastive"] = _record(lm, alpha, top_i, top_p, penalty, score, j)
            else:
                rec["token_id"] = tok
            rec["new_ids"] = [tok]
            job.extra["summary"] = {"penalty_alpha": alpha, "num_candidates": k, "not_likeliest": not_likeliest,
                                    "forwarded_tokens": L + k * (step + 1)}
            yield rec
            step += 1
            if job.finished([tok]):
                return
            logits = next_logits


def _clamp(x: float) -> float:
    return max(-1.0, min(1.0, float(x)))


def _record(lm, alpha, top_i, top_p, penalty, score, j) -> dict:
    ids = top_i.tolist()
    return {"alpha": clean_float(alpha), "argmax_prob_id": int(ids[0]), "candidates": [
        {"id": int(t), "text": lm.token_text(t), "p": clean_float(min(1.0, max(0.0, p))),
         "penalty": clean_float(_clamp(pen)), "score": clean_float(_clamp(s)), "chosen": i == j}
        for i, (t, p, pen, s) in enumerate(zip(ids, top_p.tolist(), penalty.tolist(), score.tolist()))]}
