"""Masked diffusion decoding: the registered method "diffusion" (kind "diffusion").

The model is picked by engine.diffusion.adapters.for_lm: the embedded SmolLM2 diffusion model
when the job's model is the embedded SmolLM2, LLaDA / Dream when such a model is loaded (remote
code), or an adapter attached to the LM (`lm.diffusion`, used by the tests' tiny models).
"""
from __future__ import annotations

import time

import torch

from engine.diffusion import adapters
from engine.diffusion import rules as R
from engine.diffusion import smol, variants
from engine.diffusion.sampler import check_resume, diffuse, validate
from engine.methods import Job, MethodError, register
from engine.options import Opt
from engine.trace import clean_float

def _f(v):
    v = float(v)
    return clean_float(v) if v == v and abs(v) != float("inf") else None


def step_record(lm, st, index: int, mask_id: int, t0: float) -> dict:
    N = st.x.shape[0]
    state, tokens, conf, score = [], [], [], []
    for i in range(N):
        if bool(st.committed[i]):
            state.append("new")
            tokens.append(int(st.x[i]))
        elif bool(st.was_masked[i]):
            state.append("mask")
            tokens.append(int(st.x0[i]))        # the ghost prediction
        else:
            state.append("committed")
            tokens.append(int(st.x[i]))
        conf.append(_f(st.conf[i]) if bool(st.was_masked[i]) else None)
        score.append(_f(st.score[i]) if bool(st.candidates[i]) else None)
    new_pos = st.committed.nonzero()[:, 0].tolist()
    new_ids = [int(st.x[i]) for i in new_pos]
    n_cand = int(st.candidates.sum())
    rec = {
        "kind": "diffusion", "index": index,
        "block": st.block, "block_range": list(st.block_range), "step_in_block": st.step_in_block,
        "state": state, "tokens": tokens, "texts": [lm.token_text(t) for t in tokens],
        "conf": conf, "score": score, "threshold": st.threshold, "k": st.k,
        "new_positions": new_pos, "new_ids": new_ids, "new_text": lm.decode(new_ids),
        "confidence": min((conf[i] for i in new_pos if conf[i] is not None), default=None),
        "nfe": st.nfe, "forwarded_tokens": st.forwarded, "remasked": n_cand - len(new_pos),
        # the event: a token committed at an earlier step is masked again (not a prediction left masked,
        # which "remasked" above counts, as LLaDA's remasking does)
        "events": ["remasked"] if bool((~st.was_masked & (st.x == mask_id)).any()) else [],
        "compute_s": clean_float(t0),
    }
    return rec


MAX_GEN = 1024


def adapter_choices() -> tuple[str, ...]:
    """auto, the embedded variants whose files exist (engine.diffusion.smol.VARIANTS), llada, dream."""
    return ("auto", *(smol.adapter_name(v) for v in smol.VARIANTS), "llada", "dream")


def adapter_unavailable(value) -> str | None:
    """A known embedded variant that is not in models/ (it no longer ships): the command that rebuilds it."""
    for v in variants.TABLE:
        if v.adapter == value and v.key not in smol.VARIANTS and v.rebuild:
            return variants.missing_message(v.key)
    return None


OPTIONS = {
    "rule": Opt("low_confidence", "remasking rule"),
    "steps": Opt(0, "denoising steps over the whole answer", min=1, max=MAX_GEN, special={0: "gen_length: one token per step"}),
    "gen_length": Opt(0, "answer length in tokens", min=1, max=MAX_GEN, special={0: "max_new_tokens"}),
    "block_length": Opt(0, "semi-autoregressive block length", min=1, max=MAX_GEN,
                        special={0: "gen_length: pure diffusion"}),
    "cfg_scale": Opt(0.0, "classifier-free guidance scale (0: off)", min=0.0, max=20.0),
    "prefix_cache": Opt(False, "Fast-dLLM prefix KV cache: reuse committed blocks' keys/values (changes outputs: "
                               "the cached prefix does not see the later positions)"),
    "stop_at_eos": Opt(True, "stop once an EOS is committed with nothing masked before it"),
    "adapter": Opt("auto", "model adapter: auto, the embedded deltas (models/smol-diffusion*), llada, dream",
                   choices=adapter_choices, unavailable=adapter_unavailable),
    "mask_id": Opt(-1, "mask token id", min=0, max=10_000_000, special={-1: "from the model config"}),
}


def check(o: dict, ctx) -> None:
    gen_length = o["gen_length"] or ctx.max_new_tokens
    validate(gen_length, o["block_length"], o["steps"], o["rule"], ctx.prompt_len, o["cfg_scale"], o["prefix_cache"])
    if o["rule"] == "local_leap" and o["relaxed"] > o["anchor"]:
        raise MethodError(f"local_leap: relaxed ({o['relaxed']}) must be <= anchor ({o['anchor']}).")
    ctx.need_positions(ctx.prompt_len + gen_length, f"A {ctx.prompt_len}-token prompt + gen_length {gen_length}")


@register("diffusion", "diffusion",
          "Masked diffusion LM: iterative unmasking with a remasking rule (LLaDA, Dream, Fast-dLLM ...).",
          options=OPTIONS, lossless=False, check=check, components={"rule": R.RULES})
def generate(job: Job, **o):
    """Options were checked by engine.run.prepare; pick the adapter (merging an embedded delta the first
    time, a few seconds) and return the steps."""
    gen_length = int(o["gen_length"]) or job.max_new_tokens
    params = {k: o[k] for k in R.RULES.get(o["rule"]).options}
    ad = adapters.for_lm(job.lm, o["adapter"], int(o["mask_id"]))
    if o["prefix_cache"] and not ad.supports_prefix_cache():
        raise MethodError(f"The prefix cache is not available for {ad.name}.")
    resume = None
    if job.resume is not None:      # engine.fork: the canvas of a recorded step (checked before any forward)
        cfg = getattr(ad.model, "config", None)
        vocab = int(getattr(cfg, "vocab_size", 0) or getattr(job.lm.model.config, "vocab_size", 0))
        resume = check_resume(job.resume, gen_length, int(o["block_length"]), int(o["steps"]), ad.mask_id, vocab,
                              bool(o["prefix_cache"]))
    return _steps(job, ad, o["rule"], params, gen_length, o["block_length"], o["steps"], o["cfg_scale"],
                  o["prefix_cache"], o["stop_at_eos"], resume)


def _steps(job, ad, rule, params, gen_length, block_length, steps, cfg_scale, prefix_cache, stop_at_eos,
           resume=None):
    lm, c = job.lm, job.counters
    it = diffuse(ad, job.input_ids, gen_length=gen_length, block_length=int(block_length), steps=int(steps),
                 rule=rule, rule_params=params, sampling=job.sampling, cfg_scale=float(cfg_scale),
                 prefix_cache=bool(prefix_cache), stop_at_eos=bool(stop_at_eos), resume=resume)
    index, forwarded, per_step = 0, 0, []
    while True:
        t = time.perf_counter()
        with c.compute(), torch.inference_mode():
            st = next(it, None)
        if st is None:
            break
        dt = time.perf_counter() - t
        c.target_forwards += 1
        forwarded += st.forwarded
        per_step.append(int(st.committed.sum()))
        if st.done:
            final = [int(t) for t in st.x.tolist() if t != ad.mask_id]
            job.commit(final)
            job.extra["summary"] = {
                "model": ad.name, "rule": rule, "steps": index + 1, "nfe": st.nfe,
                "nfe_per_token": clean_float(st.nfe / max(len(job.output_ids), 1)),
                "tokens_per_step": clean_float(sum(per_step) / len(per_step)),
                "forwarded_tokens": forwarded, "prefix_cache": bool(prefix_cache),
            }
        if job.record:
            with c.recording():
                rec = step_record(lm, st, index, ad.mask_id, dt)
        else:
            rec = {"kind": "diffusion", "index": index, "new_ids": [int(st.x[i]) for i in
                                                                  st.committed.nonzero()[:, 0].tolist()],
                   "nfe": st.nfe}
        yield rec
        index += 1
        if st.done:
            return
