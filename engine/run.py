"""Drive a method: validate everything, build the job and the trace, iterate the steps into the trace."""
from __future__ import annotations

import inspect
import time
from typing import Iterator

import torch

from engine import methods
from engine.errors import MethodError, PromptError, SamplingError
from engine.methods import MAX_NEW_TOKENS, CheckContext, Job
from engine.options import Opt
from engine.sampling import SamplingConfig
from engine.trace import Trace

RESUMABLE = ("diffusion", "kv", "jacobi", "lookahead")   # methods that start from a recorded run's state (run.prepare(resume=...); jacobi / lookahead: edited first guesses)
MAX_NEW = Opt(64, "tokens to generate at most", min=1, max=MAX_NEW_TOKENS, label="max new tokens")
IGNORE_EOS = Opt(False, "keep decoding after an end-of-text token: exactly max_new_tokens (benchmarks of long runs)",
                 label="ignore end-of-text")


def prepare(lm, method: str, prompt: str, max_new_tokens: int = 64, sampling: SamplingConfig | None = None,
            options: dict | None = None, record: bool = True, chat: bool | None = None,
            ignore_eos: bool = False, prompt_ids: list[int] | None = None,
            resume: dict | None = None) -> tuple[Trace, Iterator[dict]]:
    """Validate everything up front; return the (empty) trace and an iterator that fills it.

    Raises MethodError / OptionError / PromptError / SamplingError before any model work when an input
    is bad: the method and every option (typed specs), the prompt (text, length against the model's
    context), prompt + output against the context, then the method's own cross-option check.
    `resume` (methods in RESUMABLE only; engine.fork builds it): the state of a recorded run to start from,
    checked by the method before any forward (diffusion: a canvas and a schedule position; kv: forced tokens
    and policy switches).
    """
    spec = methods.get(method)
    if sampling is None:
        sampling = SamplingConfig()
    if not isinstance(sampling, SamplingConfig):
        raise SamplingError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}.")
    max_new_tokens = MAX_NEW.coerce("max_new_tokens", max_new_tokens)
    ignore_eos = IGNORE_EOS.coerce("ignore_eos", ignore_eos)
    if options is not None and not isinstance(options, dict):
        raise MethodError(f"options must be a dict of option name -> value, got {type(options).__name__}.")
    opts = spec.values(options)
    if resume is not None and (method not in RESUMABLE or not isinstance(resume, dict)):
        raise MethodError(f"resume is a dict, for {', '.join(RESUMABLE)} only (got {type(resume).__name__} for "
                          f"{method!r}).")
    if prompt_ids is None:
        input_ids = lm.encode(prompt, chat)          # PromptError: empty, not text, longer than the context
    else:
        input_ids = _checked_ids(lm, prompt_ids)
    ctx = CheckContext(lm, sampling, int(input_ids.shape[1]), max_new_tokens, lm.context_length)
    ctx.need_positions(ctx.prompt_len + max_new_tokens, f"A prompt of {ctx.prompt_len} tokens + {max_new_tokens} new tokens")
    if spec.check is not None:
        spec.check(opts, ctx)
    job = Job(lm=lm, prompt=prompt, input_ids=input_ids, max_new_tokens=max_new_tokens, sampling=sampling,
              record=record, ignore_eos=ignore_eos, resume=resume)
    params = {"max_new_tokens": max_new_tokens, "sampling": sampling.as_dict(), **opts}
    if ignore_eos:
        params["ignore_eos"] = True
    trace = Trace.new(lm.name, method, _jsonable_params(params), prompt, sampling.seed)
    trace.meta["prompt_ids"] = input_ids[0].tolist()
    trace.meta["family"] = spec.family
    trace.meta["lossless"] = spec.lossless
    trace.meta["device"] = str(lm.device)
    trace.meta["chat"] = chat
    unused = spec.ignored(options, opts)
    if unused:  # e.g. exit_layer with drafter=prompt_lookup: accepted, recorded, and said
        trace.meta["ignored_options"] = unused
    trace.counters = job.counters
    trace.extra = job.extra
    gen = spec.fn(job, **opts)
    if not inspect.isgenerator(gen) and not hasattr(gen, "__next__"):
        raise TypeError(f"method {method} must return a generator of step records")

    def steps() -> Iterator[dict]:
        # The model lock is held for one step at a time (never across a yield), so a paused
        # session does not block another session that shares the model.
        try:
            yield from _locked_steps()
        finally:
            gen.close()   # here, in the thread that ran it (see Runner._close_steps)
        with job.counters.recording():
            trace.final_text = lm.decode(job.output_ids)
            trace.meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")

    def _locked_steps() -> Iterator[dict]:
        while True:
            with lm.lock:
                try:
                    rec = next(gen)
                except StopIteration:
                    break
            c = job.counters
            # running totals, so that any view can chart tokens against forwards and compute time
            rec["totals"] = {"tokens": len(job.output_ids), "target_forwards": c.target_forwards,
                             "draft_forwards": c.draft_forwards, "compute_s": round(c.compute_s, 6),
                             "wall": round(time.time(), 3)}   # when the step was computed (live-view latency)
            if rec.get("lossless") is False:  # e.g. speculative with Medusa's typical acceptance
                trace.meta["lossless"] = False
            trace.steps.append(rec)
            trace.final_ids = list(job.output_ids)
            yield rec

    return trace, steps()


def _checked_ids(lm, ids) -> torch.Tensor:
    if not isinstance(ids, (list, tuple)) or not ids or len(ids) > 1_000_000:
        raise PromptError("prompt_ids must be a non-empty list of token ids.")
    vocab = int(getattr(lm.model.config, "vocab_size", 0) or len(lm.tokenizer))
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        raise PromptError(f"prompt_ids must be token ids in 0..{vocab - 1}.")
    if lm.context_length and len(ids) >= lm.context_length:
        raise PromptError(f"The input is {len(ids)} tokens; the model's context is {lm.context_length}.")
    return torch.tensor([list(ids)], device=lm.device)


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
