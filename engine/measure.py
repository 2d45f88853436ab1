"""Measurements a view shows, defined once: a run against autoregressive decoding on the same prompt.

`vs_autoregressive(lm, trace)` re-runs the trace's method and autoregressive decoding with the same
prompt, token budget and sampling settings, neither recording step details, and compares their
compute-only speed (tokens / compute second) and outputs. Re-running both keeps the comparison fair:
a recorded run spends time building step records (counted apart, but it still disturbs caches).
"""
from __future__ import annotations

import time

from engine import methods, quality
from engine.sampling import SamplingConfig


def _row(name: str, trace) -> dict:
    c = trace.counters
    return {"method": name, "tokens": c.generated_tokens, "target forwards": c.target_forwards,
            "tokens / forward": round(c.generated_tokens / c.target_forwards, 3) if c.target_forwards else None,
            "compute s": round(c.compute_s, 3),
            "tokens/s": round(c.generated_tokens / c.compute_s, 2) if c.compute_s > 0 else None}


def speedup(method_trace, ar_trace) -> float | None:
    """(method tokens / compute s) / (AR tokens / compute s): the one definition of 'speedup vs AR'."""
    a, m = ar_trace.counters, method_trace.counters
    if not (a.compute_s > 0 and m.compute_s > 0 and a.generated_tokens and m.generated_tokens):
        return None
    return (m.generated_tokens / m.compute_s) / (a.generated_tokens / a.compute_s)


def vs_autoregressive(lm, meta: dict, final_ids: list[int]) -> dict:
    """Re-run a trace's method (its `meta`: method, prompt, params, chat) and AR, both unrecorded, on the
    same prompt; speed, forwards, identical output. `final_ids`: what the recorded run produced."""
    from engine import run
    params = dict(meta["params"])
    sampling = SamplingConfig(**params.pop("sampling"))
    max_new = int(params.pop("max_new_tokens"))
    ignore_eos = bool(params.pop("ignore_eos", False))
    spec = methods.get(meta["method"])
    options = {k: v for k, v in params.items() if k in spec.options}
    chat = meta.get("chat")
    ar = run.run(lm, "ar", meta["prompt"], max_new_tokens=max_new, sampling=sampling, record=False, chat=chat,
                 ignore_eos=ignore_eos)
    again = run.run(lm, meta["method"], meta["prompt"], max_new_tokens=max_new, sampling=sampling, options=options,
                    record=False, chat=chat, ignore_eos=ignore_eos)
    lossless = bool(meta.get("lossless")) and sampling.greedy
    sp = speedup(again, ar)
    rows = [_row(meta["method"], again), _row("autoregressive", ar)]
    rows[0]["speedup vs AR"], rows[1]["speedup vs AR"] = (round(sp, 3) if sp else None), 1.0
    return {
        "rows": rows,
        "speedup": round(sp, 3) if sp else None,
        "identical": (quality.first_divergence(again.final_ids, ar.final_ids) is None) if lossless else None,
        "same_as_recorded": again.final_ids == list(final_ids),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def comparison_row(trace, reference=None, finished: bool = True) -> dict:
    """One run's line in a side-by-side table: totals, tau, speedup against the autoregressive reference
    (both compute-only, as recorded), whether a lossless run equals greedy, and the judged perplexity
    once it is in trace.extra["judged_perplexity"] (quality.judged_perplexity, computed by the caller)."""
    c = trace.counters
    tps = c.generated_tokens / c.compute_s if c.compute_s > 0 else None
    ident = None
    ref_done = reference is not None and reference.meta.get("finished")
    if finished and ref_done and trace.meta.get("lossless"):
        ident = quality.first_divergence(trace.final_ids, reference.final_ids) is None
    sp = speedup(trace, reference) if (finished and ref_done) else None
    return {
        "tokens": c.generated_tokens, "target forwards": c.target_forwards, "draft forwards": c.draft_forwards,
        "tokens / forward (tau)": round(c.generated_tokens / c.target_forwards, 2) if c.target_forwards else None,
        "compute s": round(c.compute_s, 2), "tokens/s": (round(tps, 1) if tps >= 10 else float(f"{tps:.3g}")) if tps else None,
        "speedup vs AR": round(sp, 2) if sp else None,
        "identical to greedy": ("n/a (lossy)" if not trace.meta.get("lossless") else
                                ("yes" if ident else "NO" if ident is False else "…")),
        "judged perplexity": (round(trace.extra["judged_perplexity"], 2)
                              if finished and trace.extra.get("judged_perplexity") is not None else None),
    }
