"""Autoregressive decoding with a KV cache: the baseline every other method is compared with."""
from __future__ import annotations

import base64

import torch
from transformers import DynamicCache

from engine import sampling as S
from engine.errors import MethodError, OptionError
from engine.methods import Job, register
from engine.options import Opt
from engine.trace import clean_float


def candidates_record(lm, logits: torch.Tensor, cfg: S.SamplingConfig, chosen: int, k: int = 10) -> dict:
    """Top-k candidates of one position with probabilities before and after warping."""
    raw = logits.float().softmax(-1)
    warped = raw if cfg.greedy and cfg.top_k == 0 and cfg.top_p == 1 and cfg.min_p == 0 and cfg.typical_p == 1 \
        else S.warp(logits, cfg).softmax(-1)
    top = torch.topk(raw, k)
    ids = top.indices.tolist()
    if chosen not in ids:
        ids.append(chosen)
    cands = [{"id": int(t), "text": lm.token_text(t), "p_raw": clean_float(raw[t]),
              "p_warped": clean_float(warped[t])} for t in ids]
    return {
        "token_id": int(chosen),
        "token_text": lm.token_text(chosen),
        "prob": clean_float(raw[chosen]),
        "prob_warped": clean_float(warped[chosen]),
        "entropy": clean_float(S.entropy(raw)),
        "entropy_warped": clean_float(S.entropy(warped)),
        "candidates": cands,
    }


def encode_logits(logits: torch.Tensor) -> str:
    """A step's full logits as base64 float16 (what engine/rewarp.py decodes)."""
    return base64.b64encode(logits.detach().float().clamp(-6e4, 6e4).half().cpu().numpy().tobytes()).decode("ascii")


def prefill(lm, input_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Run the prompt through the model; return the last position's logits [1, V]."""
    out = lm.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def lens_record(lm, hidden_states, chosen: int) -> list[dict]:
    """Logit lens at the newest position: every layer's output read through the final norm and the LM head,
    first layer first: its top token, that token's probability and the probability of the token chosen.
    (The model's hidden_states are the embeddings, each layer's output, and the last layer's output already
    through the final norm, which is what the model's own logits read.)"""
    return lens_rows(lm, hidden_states, [-1], [chosen])[0]


def lens_rows(lm, hidden_states, positions: list[int], chosen: list[int]) -> list[list[dict]]:
    """The logit lens at several positions of one forward (batch row 0): per position, per layer, as lens_record."""
    m = lm.model
    idx = torch.tensor(positions, device=hidden_states[-1].device)
    x = hidden_states[-1][0, idx]                                         # [P, H], already through the norm
    inner = [m.model.norm(h[0, idx]) for h in hidden_states[1:-1]]        # layers 1..L-1, each [P, H]
    layers = torch.stack(inner + [x], 1) if inner else x[:, None]         # [P, L, H]
    p = m.lm_head(layers).float().softmax(-1)                             # [P, L, V]
    top_p, top = p.max(-1)
    ch = torch.tensor(chosen, device=p.device)
    p_ch = p.gather(-1, ch[:, None, None].expand(-1, p.shape[1], 1))[..., 0]
    return [[{"id": int(t), "text": lm.token_text(t), "p": clean_float(tp), "p_chosen": clean_float(pc)}
             for t, tp, pc in zip(top[j].tolist(), top_p[j].tolist(), p_ch[j].tolist())]
            for j in range(len(positions))]


def check_lens(lm) -> None:
    m = lm.model
    if not (hasattr(getattr(m, "model", None), "norm") and hasattr(m, "lm_head")):
        raise MethodError("logit_lens reads each layer through the model's final norm and LM head: it needs a "
                          "Llama-style model (model.norm, lm_head).")


MAX_LOGIT_STEPS = 512   # record_logits keeps ~2 bytes per vocabulary entry per step (100 KB for SmolLM2)


def check(o: dict, ctx) -> None:
    if o["logit_lens"]:
        check_lens(ctx.lm)
    if o["record_logits"] and ctx.max_new_tokens > MAX_LOGIT_STEPS:
        raise OptionError(f"record_logits keeps every step's full logits (~{2 * len(ctx.lm.tokenizer) // 1000} KB a "
                          f"step): at most {MAX_LOGIT_STEPS} new tokens with it, got {ctx.max_new_tokens}.")


@register("ar", "autoregressive", "One token per forward with a KV cache (greedy or sampled).",
          options={"top_candidates": Opt(10, "candidates recorded per step", min=1, max=100),
                   "record_logits": Opt(False, "also record each step's full logits (float16), so that other "
                                               "sampling settings can be applied to the recorded steps exactly "
                                               "(engine/rewarp.py); ~2 bytes per vocabulary entry per step"),
                   "logit_lens": Opt(False, "also record, per step, the top token after every layer read through "
                                            "the final norm and the LM head (a head projection per layer)")},
          check=check)
def generate(job: Job, top_candidates: int = 10, record_logits: bool = False, logit_lens: bool = False):
    lm, cfg, c = job.lm, job.sampling, job.counters
    lens = logit_lens and job.record
    hidden = None
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    cache = DynamicCache()
    with torch.inference_mode():
        with c.compute():
            if lens:
                out = lm.model(input_ids=job.input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
                               output_hidden_states=True)
                logits, hidden = out.logits[:, -1, :].float(), out.hidden_states
            else:
                logits = prefill(lm, job.input_ids, cache)
        c.target_forwards += 1
        step = 0
        while True:
            with c.compute():
                tok = int(S.choose(logits[0], cfg, gen))
            job.commit([tok])
            rec = {"kind": "ar", "index": step, "position": job.input_ids.shape[1] + step}
            if job.record:
                with c.recording():
                    rec.update(candidates_record(lm, logits[0], cfg, tok, top_candidates))
                    if record_logits:
                        rec["logits_f16"] = encode_logits(logits[0])
                    if lens:
                        rec["lens"] = lens_record(lm, hidden, tok)
                    rec["new_text"], rec["confidence"] = rec["token_text"], rec["prob"]
            else:
                rec["token_id"] = tok
            rec["new_ids"] = [tok]
            yield rec
            step += 1
            if job.finished([tok]):
                return
            with c.compute():
                out = lm.model(input_ids=torch.tensor([[tok]], device=lm.device), past_key_values=cache,
                               use_cache=True, output_hidden_states=lens)
                logits, hidden = out.logits[:, -1, :].float(), out.hidden_states
            c.target_forwards += 1
