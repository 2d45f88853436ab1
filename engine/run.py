"""Drive a method: build the job and the trace, and iterate the method's steps into the trace."""
from __future__ import annotations

import time
from typing import Iterator

from engine import methods
from engine.methods import MAX_NEW_TOKENS, Job, MethodError
from engine.sampling import SamplingConfig
from engine.trace import Trace


def prepare(lm, method: str, prompt: str, max_new_tokens: int = 64, sampling: SamplingConfig | None = None,
            options: dict | None = None, record: bool = True, chat: bool | None = None) -> tuple[Trace, Iterator[dict]]:
    """Validate everything up front; return the (empty) trace and an iterator that fills it.

    Raises MethodError / PromptError / SamplingError before any model work when inputs are bad.
    """
    spec = methods.get(method)
    sampling = sampling or SamplingConfig()
    if not isinstance(max_new_tokens, int) or not (1 <= max_new_tokens <= MAX_NEW_TOKENS):
        raise MethodError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}.")
    opts = spec.defaults()
    unknown = set(options or {}) - set(opts)
    if unknown:
        raise MethodError(f"Unknown option(s) for {method}: {', '.join(sorted(unknown))}. "
                          f"Known: {', '.join(sorted(opts)) or 'none'}.")
    opts.update(options or {})
    input_ids = lm.encode(prompt, chat)
    job = Job(lm=lm, prompt=prompt, input_ids=input_ids, max_new_tokens=max_new_tokens, sampling=sampling,
              record=record)
    params = {"max_new_tokens": max_new_tokens, "sampling": sampling.as_dict(), **opts}
    trace = Trace.new(lm.name, method, _jsonable_params(params), prompt, sampling.seed)
    trace.meta["prompt_ids"] = input_ids[0].tolist()
    trace.meta["family"] = spec.family
    trace.meta["lossless"] = spec.lossless
    trace.meta["device"] = str(lm.device)
    trace.counters = job.counters
    trace.extra = job.extra
    gen = spec.fn(job, **opts)

    def steps() -> Iterator[dict]:
        # The model lock is held for one step at a time (never across a yield), so a paused
        # session does not block another session that shares the model.
        while True:
            with lm.lock:
                try:
                    rec = next(gen)
                except StopIteration:
                    break
            c = job.counters
            # running totals, so that any view can chart tokens against forwards and compute time
            rec["totals"] = {"tokens": len(job.output_ids), "target_forwards": c.target_forwards,
                             "draft_forwards": c.draft_forwards, "compute_s": round(c.compute_s, 6)}
            if rec.get("lossless") is False:  # e.g. speculative with Medusa's typical acceptance
                trace.meta["lossless"] = False
            trace.steps.append(rec)
            trace.final_ids = list(job.output_ids)
            yield rec
        with job.counters.recording():
            trace.final_text = lm.decode(job.output_ids)
            trace.meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")

    return trace, steps()


def run(lm, method: str, prompt: str, **kw) -> Trace:
    """Run to completion and return the trace."""
    trace, it = prepare(lm, method, prompt, **kw)
    for _ in it:
        pass
    return trace


def _jsonable_params(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _jsonable_params(v)
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[k] = str(v)
    return out
