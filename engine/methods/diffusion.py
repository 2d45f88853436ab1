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
from engine.diffusion import smol
from engine.diffusion.sampler import diffuse, validate
from engine.methods import Job, MethodError, register
from engine.trace import clean_float

RULE_PARAMS = {
    "threshold": ("threshold",),
    "credit": ("threshold", "decay", "alpha"),
    "local_leap": ("anchor", "relaxed", "radius"),
    "eos_ascending": ("eos_gamma",),
}


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
        "events": ["remasked"] if n_cand > len(new_pos) else [],
        "compute_s": clean_float(t0),
    }
    return rec


@register("diffusion", "diffusion",
          "Masked diffusion LM: iterative unmasking with a remasking rule (LLaDA, Dream, Fast-dLLM ...).",
          options={
              "rule": ("low_confidence", "remasking rule: " + ", ".join(R.RULES)),
              "steps": (0, "denoising steps over the whole answer (0: gen_length, one token per step)"),
              "gen_length": (0, "answer length in tokens (0: max_new_tokens)"),
              "block_length": (0, "semi-autoregressive block length (0: gen_length, pure diffusion)"),
              "threshold": (0.9, "confidence threshold (threshold / credit rules)"),
              "cfg_scale": (0.0, "classifier-free guidance scale (0: off)"),
              "prefix_cache": (False, "Fast-dLLM prefix KV cache: reuse committed blocks' keys/values"),
              "stop_at_eos": (True, "stop once an EOS is committed with nothing masked before it"),
              "adapter": ("auto", "model adapter: auto, "
                          + ", ".join(smol.adapter_name(v) for v in smol.VARIANTS)
                          + " (the embedded deltas, models/smol-diffusion*), llada, dream"),
              "mask_id": (-1, "mask token id (-1: from the model config)"),
              "anchor": (0.9, "LocalLeap anchor confidence"),
              "relaxed": (0.6, "LocalLeap relaxed confidence near anchors"),
              "radius": (2, "LocalLeap neighbourhood radius"),
              "decay": (0.7, "CreditDecoding credit decay per step"),
              "alpha": (0.6, "CreditDecoding credit weight"),
              "eos_gamma": (3.0, "EOS early rejection strength"),
          }, lossless=False)
def generate(job: Job, rule="low_confidence", steps=0, gen_length=0, block_length=0, threshold=0.9,
             cfg_scale=0.0, prefix_cache=False, stop_at_eos=True, adapter="auto", mask_id=-1,
             anchor=0.9, relaxed=0.6, radius=2, decay=0.7, alpha=0.6, eos_gamma=3.0):
    lm = job.lm
    gen_length = int(gen_length) or job.max_new_tokens
    if rule not in R.RULES:
        raise MethodError(f"Unknown rule '{rule}'. Known: {', '.join(R.RULES)}.")
    if rule in ("threshold", "credit") and not (0.0 < threshold <= 1.0):
        raise MethodError(f"threshold must be in (0, 1], got {threshold}.")
    if rule == "local_leap" and not (0.0 < relaxed <= anchor <= 1.0 and radius >= 0):
        raise MethodError("LocalLeap needs 0 < relaxed <= anchor <= 1 and radius >= 0.")
    if rule == "credit" and not (0.0 <= decay <= 1.0 and alpha >= 0):
        raise MethodError("CreditDecoding needs 0 <= decay <= 1 and alpha >= 0.")
    all_params = {"threshold": threshold, "decay": decay, "alpha": alpha, "anchor": anchor, "relaxed": relaxed,
                  "radius": int(radius), "eos_gamma": eos_gamma}
    params = {k: all_params[k] for k in RULE_PARAMS.get(rule, ())}
    # everything checkable is checked here, before the first step: run.prepare raises it to the caller
    validate(gen_length, int(block_length), int(steps), rule, job.input_ids.shape[1], float(cfg_scale),
             bool(prefix_cache))
    ad = adapters.for_lm(lm, adapter, int(mask_id))
    if prefix_cache and not ad.supports_prefix_cache():
        raise MethodError(f"The prefix cache is not available for {ad.name}.")
    return _steps(job, ad, rule, params, gen_length, block_length, steps, cfg_scale, prefix_cache, stop_at_eos)


def _steps(job, ad, rule, params, gen_length, block_length, steps, cfg_scale, prefix_cache, stop_at_eos):
    lm, c = job.lm, job.counters
    it = diffuse(ad, job.input_ids, gen_length=gen_length, block_length=int(block_length), steps=int(steps),
                 rule=rule, rule_params=params, sampling=job.sampling, cfg_scale=float(cfg_scale),
                 prefix_cache=bool(prefix_cache), stop_at_eos=bool(stop_at_eos))
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
