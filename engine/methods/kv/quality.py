"""Quality of an evicting cache against the full cache, measured honestly.

Teacher forcing on a text of N tokens with a decode budget B: the first B tokens go in one
forward (no eviction is needed yet, and every policy's state accumulates exactly as it would
token by token), then every later token is fed alone and each layer/head is evicted back to B
entries after each forward. The prediction of token t+1 made after feeding token t is compared
with the full cache's (an uncompressed run over the same text): top-1 agreement of the argmax
and the NLL of the true next token. Only predictions made after the first eviction count
(t >= B + 1), so no policy is credited for steps where it equals the full cache by construction.

All policies run together, one per batch row, with the same budget (one forward per token for
all of them), so the comparison is on exactly the same tokens.
"""
from __future__ import annotations

import math
import time

import torch
from transformers import DynamicCache

from engine.methods import MethodError


def full_cache_predictions(lm, ids: torch.Tensor, chunk: int = 256):
    """Argmax and NLL of the next token at every position of ids [N] with the full cache."""
    cache = DynamicCache(config=lm.model.config)
    argmax, nll = [], []
    n = ids.shape[0]
    for s in range(0, n - 1, chunk):
        e = min(n - 1, s + chunk)
        x = ids[s:e][None].to(lm.device)
        pos = torch.arange(s, e, device=lm.device)[None]
        logits = lm.model(input_ids=x, past_key_values=cache, position_ids=pos, use_cache=True).logits[0].float()
        lp = logits.log_softmax(-1)
        argmax.append(logits.argmax(-1).cpu())
        nll.append(-lp.gather(-1, ids[s + 1:e + 1, None].to(lm.device))[:, 0].cpu())
    return torch.cat(argmax), torch.cat(nll)


def teacher_forced(lm, ids, policies: list[str], budget: int, positions: str = "original", full=None,
                   progress=None, prefill_len: int | None = None, **policy_kw) -> dict:
    """Per policy: top-1 agreement with the full cache, mean NLL / perplexity, KV bytes, seconds.

    ids: 1-D token ids (list or tensor). full: optional precomputed full_cache_predictions(ids).
    prefill_len: None (default) feeds every token after the first `budget` one at a time, evicting
    after each. An integer P > budget instead prefills the first P tokens in one forward and
    compresses them to the budget with each policy's prefill scores (SnapKV's observation window,
    H2O's accumulated prompt attention, TOVA's last query...), then feeds the rest one token at a
    time with decode eviction; every prediction from position P on counts (all follow the
    compression). The second protocol is the one kvpress evaluates (compress a long context, then
    decode), and costs N - P forwards instead of N - budget.
    Returns {"n_eval", "budget", "full": {...}, "<policy>": {...}}.
    """
    from engine.methods.kv import build_cache
    ids = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
    n = ids.shape[0]
    if "full" in policies:
        raise MethodError("'full' is the reference of teacher_forced (reported under 'full'), not a row to evict.")
    if not 1 <= budget < n - 2:
        raise MethodError(f"budget {budget} must be between 1 and the text length minus 3 ({n - 3}).")
    if prefill_len is not None and not budget < prefill_len < n - 1:
        raise MethodError(f"prefill_len {prefill_len} must be larger than the budget ({budget}) and below {n - 1}.")
    start = budget if prefill_len is None else prefill_len
    first_eval = budget + 1 if prefill_len is None else prefill_len
    with lm.lock, torch.inference_mode():
        if full is None:
            full = full_cache_predictions(lm, ids)
        full_argmax, full_nll = full
        b = len(policies)
        ec = build_cache(lm, list(policies), positions=positions, **policy_kw)
        t0 = time.perf_counter()
        ec.forward(ids[:start][None].to(lm.device), broadcast=b)
        ec.evict_to(budget)
        agree = torch.zeros(b)
        nll = torch.zeros(b)
        count = 0
        for t in range(start, n - 1):
            logits = ec.forward(ids[t:t + 1][None].expand(b, 1).to(lm.device))[:, -1].float()
            ec.evict_to(budget)
            if t >= first_eval:
                agree += (logits.argmax(-1).cpu() == full_argmax[t]).float()
                nll += -logits.log_softmax(-1)[:, ids[t + 1]].cpu()
                count += 1
            if progress and (t - start) % 50 == 0:
                progress(t - start, n - 1 - start)
        secs = time.perf_counter() - t0
        kv_bytes = sum(ec.bytes_per_layer()) // b
    full_nll_eval = float(full_nll[first_eval:n - 1].mean())
    per_tok = lm.kv_bytes_per_token()
    out = {"n_eval": count, "budget": budget, "n_tokens": n, "seconds": secs, "prefill_len": prefill_len,
           "full": {"nll": full_nll_eval, "ppl": math.exp(full_nll_eval), "kv_bytes": n * per_tok}}
    for i, name in enumerate(policies):
        m = float(nll[i]) / count
        out[name] = {"agreement": float(agree[i]) / count, "nll": m, "ppl": math.exp(m),
                     "delta_nll": m - full_nll_eval, "kv_bytes": kv_bytes}
    return out


def quality_curve(lm, ids, policies: list[str], fractions=(0.1, 0.25, 0.5), **kw) -> list[dict]:
    """teacher_forced at budgets = fraction x text length; one row per (policy, fraction)."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
    with lm.lock, torch.inference_mode():
        full = full_cache_predictions(lm, ids)
    rows = []
    for f in fractions:
        budget = max(2, int(len(ids) * f))
        res = teacher_forced(lm, ids, policies, budget, full=full, **kw)
        for name in policies:
            rows.append({"policy": name, "fraction": f, "budget": budget, **res[name],
                         "ppl_full": res["full"]["ppl"], "n_eval": res["n_eval"]})
    return rows


def prompt_quality_curve(lm, prompt: str, policies: list[str], fractions: list[float], options: dict) -> list[dict]:
    """The KV page's "measure on this prompt": quality_curve on the prompt's tokens, with the knobs of the
    page's kv options (engine.methods kv specs); the window sizes scale with the smallest budget."""
    from engine import methods
    from engine.methods.kv.policies import POLICIES
    if not policies or len(policies) > len(POLICIES) or any(p not in POLICIES or p == "full" for p in policies):
        raise MethodError("Choose one or more eviction policies (not 'full', the reference).")
    if not fractions or len(fractions) > 8 or not all(isinstance(f, float) and 0 < f < 1 for f in fractions):
        raise MethodError("Budgets must be 1 to 8 fractions strictly between 0 and 1, e.g. 0.25,0.5.")
    o = methods.get("kv").values(options)
    ids = lm.encode(prompt)[0].tolist()
    if len(ids) < 24:
        raise MethodError(f"The prompt is only {len(ids)} tokens: give a longer text (at least 24 tokens).")
    smallest = int(len(ids) * min(fractions))
    return quality_curve(lm, ids, list(policies), fractions=list(fractions), n_sink=o["n_sink"],
                         window=max(1, smallest // 2), window_size=max(1, min(o["window_size"], smallest // 4)),
                         kernel_size=o["kernel_size"], hit_threshold=o["hit_threshold"], positions=o["positions"])
