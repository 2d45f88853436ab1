"""Jacobi decoding: greedy fixed-point iteration over a block of guessed tokens, and its variants.

(~345 lines, one file on purpose: the Jacobi variants share one iteration loop and its helpers.)

One iteration is ONE causal forward over [tokens not yet in the KV cache] + [n guessed tokens]. Row i of
the output predicts guess position i from the committed prefix and the guesses before i; greedy Jacobi
replaces every guess by that prediction at once ("Accelerating Transformer Inference for Translation via
Parallel Decoding", teelinsan/parallel-decoding; CLLM's jacobi_forward).

Convergence and commit. The first prediction only depends on the committed prefix, so it is always right.
If the first m guesses equal their predictions, each of them was predicted from a correct prefix, so they
are the greedy tokens, and so is the prediction at position m: m + 1 tokens are committed per iteration
(at least one). The KV entries of the m accepted guesses are kept, everything after them is cropped, and
the prediction at m (not yet in the cache) is fed at the start of the next iteration.

Variants (the paper's three parallel decoders, adapted to open-ended generation):
- ``jacobi``: parallel Jacobi on a sliding window of ``block_size`` guesses. The still-unconverged
  predictions are carried to the next iteration and fresh guesses refill the window's tail. With
  ``block_size >= max_new_tokens`` the window is the whole output: the paper's PJ decoder.
- ``gauss_seidel``: the paper's GS-Jacobi (blockwise parallel): the output is cut into blocks of
  ``block_size``; each block is iterated until all its tokens are fixed before the next block starts.
- ``hybrid``: the paper's hybrid decoder: GS-Jacobi blocks for the first ``hybrid_length`` tokens (the paper
  sizes this part from the source length), then one token per forward (autoregressive) until the end.

Sampling (temperature > 0): speculative Jacobi decoding ("Accelerating Auto-regressive Text-to-Image
Generation with Training-free Speculative Jacobi Decoding"). Each guess carries the distribution q it was
drawn from in the previous iteration (a point mass for the initial guesses); guess x at position i is
accepted with probability min(1, p_i(x) / q_i(x)) where p_i is the current iteration's (warped)
distribution; at the first rejection a token is drawn from norm(max(0, p_i - q_i)) and the later positions
are re-drawn from the current iteration's distributions (they become the next guesses). This is
speculative sampling with the previous iteration as the drafter, so the output is distributed exactly as
sampling from the model.
"""
from __future__ import annotations

import random

import torch
from transformers import DynamicCache

from engine import kvcache
from engine import sampling as S
from engine.methods import MAX_NEW_TOKENS, Job, MethodError, register
from engine.options import Opt
from engine.trace import clean_float

VARIANTS = ("jacobi", "gauss_seidel", "hybrid")
INITS = ("pad", "repeat", "random")
MAX_BLOCK = 128


# ----------------------------------------------------------------------------------------- helpers
def pad_id(lm) -> int:
    t = lm.tokenizer.pad_token_id
    if t is None:
        t = lm.tokenizer.eos_token_id
    return int(t if t is not None else 0)


class Initialiser:
    """Fresh guesses for positions nobody has predicted yet: pad / repeat (last token) / random (context)."""

    def __init__(self, kind: str, lm, seed: int | None):
        self.kind = kind
        self.pad = pad_id(lm)
        self.rng = random.Random(0 if seed is None else int(seed))

    def __call__(self, k: int, context: list[int]) -> list[int]:
        if k <= 0:
            return []
        if self.kind == "pad":
            return [self.pad] * k
        if self.kind == "repeat":
            return [context[-1]] * k
        return [context[self.rng.randrange(len(context))] for _ in range(k)]


def texts(lm, ids) -> list[str]:
    return [lm.token_text(t) for t in ids]


def verify_greedy(guesses: list[int], logits: torch.Tensor) -> tuple[int, list[int]]:
    """Jacobi update + convergence test. logits: [n+1, V], row i predicts guess position i.

    Returns m (leading guesses equal to their prediction: converged) and the updated block (n+1 tokens).
    """
    pred = logits.argmax(-1).tolist()
    m = 0
    while m < len(guesses) and guesses[m] == pred[m]:
        m += 1
    return m, pred


def verify_speculative(guesses: list[int], qs: list, p: torch.Tensor, gen: torch.Generator) -> dict:
    """Speculative Jacobi acceptance. p: [n+1, V] warped probabilities of this iteration; qs[i] the
    distribution guess i was drawn from (None: a fixed initial guess, i.e. a point mass).

    Returns accepted count m, the committed token at m, and the per-position tests for the record.
    """
    tests = []
    for i, x in enumerate(guesses):
        px = float(p[i, x])
        q = qs[i]
        qx = 1.0 if q is None else max(float(q[x]), 1e-30)
        a = min(1.0, px / qx)
        u = float(torch.rand((), generator=gen))
        tests.append({"pos": i, "p": clean_float(px), "q": clean_float(qx), "accept_prob": clean_float(a),
                      "u": clean_float(u), "accepted": u < a})
        if u < a:
            continue
        if q is None:
            resid = p[i].clone()
            resid[x] = 0.0
        else:
            resid = (p[i] - q).clamp_min(0.0)
        if float(resid.sum()) <= 0.0:  # p == q: a rejection cannot happen; guard against rounding
            resid = p[i]
        tok = int(S.sample(resid / resid.sum(), gen))
        return {"m": i, "token": tok, "tests": tests, "resampled": True}
    tok = int(S.sample(p[len(guesses)], gen))
    return {"m": len(guesses), "token": tok, "tests": tests, "resampled": False}


def forward_block(lm, cache: DynamicCache, pending: list[int], guesses: list[int]) -> torch.Tensor:
    """One causal forward over pending + guesses; returns the logits rows [n+1, V] that predict the guesses
    (row 0 comes from the last pending token) and the position after the last guess."""
    ids = torch.tensor([pending + guesses], device=lm.device)
    out = lm.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=len(guesses) + 1)
    return out.logits[0].float()


def forced_ranges(changed: list[bool], m: int, block_start: int, next_start: int, n_next: int,
                  carried: int) -> list[list[int]]:
    """Dependency-graph edges of one iteration: for each changed token at output position j that is an input
    of the next iteration, the range [first, last] of next-iteration positions computed from it.

    The token committed at m is fed first next iteration (position next_start - 1); the carried predictions
    sit at next_start .. next_start + carried - 1; the next iteration predicts next_start .. next_start + n_next.
    """
    out = []
    last = next_start + n_next
    for i, ch in enumerate(changed):
        if not ch or i < m:
            continue
        j = block_start + i
        if i > m and j >= next_start + carried:  # dropped, not fed to the next iteration
            continue
        first = max(j + 1, next_start)
        if first <= last:
            out.append([j, first, last])
    return out


# ----------------------------------------------------------------------------------------- method
def check(o: dict, ctx) -> None:
    ctx.need_positions(ctx.prompt_len + ctx.max_new_tokens + o["block_size"],
                       f"Jacobi with block_size {o['block_size']} after a {ctx.prompt_len}-token prompt")


@register(
    "jacobi", "jacobi",
    "Jacobi decoding: greedy fixed-point iteration over a block of guesses (variants jacobi / gauss_seidel / "
    "hybrid); speculative Jacobi acceptance when sampling.",
    options={
        "variant": Opt("jacobi", "jacobi (sliding window; block_size >= max_new_tokens is the paper's parallel "
                                 "Jacobi) | gauss_seidel (blockwise) | hybrid (blocks, then autoregressive)",
                       choices=VARIANTS),
        "block_size": Opt(8, "n: guessed tokens per iteration (block length)", min=1, max=MAX_BLOCK),
        "init": Opt("pad", "initial guesses: pad | repeat (the last token) | random (tokens from the context)",
                    choices=INITS),
        "hybrid_length": Opt(32, "hybrid: tokens decoded with Gauss-Seidel blocks before switching to one "
                                 "token per forward", min=0, max=MAX_NEW_TOKENS, when={"variant": ("hybrid",)}),
    }, check=check)
def generate(job: Job, variant: str = "jacobi", block_size: int = 8, init: str = "pad", hybrid_length: int = 32):
    """Options were checked by engine.run.prepare; return the iterations."""
    return _run(job, variant, block_size, init, hybrid_length)


def _run(job: Job, variant: str, n: int, init: str, hybrid_length: int):
    """The iteration loop of every Jacobi variant, kept whole: one forward, verify, commit, carry the
    guesses over, record; the variants differ in a few lines inside it, which read best side by side (issue 29)."""
    lm, cfg, c = job.lm, job.sampling, job.counters
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    fresh = Initialiser(init, lm, cfg.seed)
    cache = DynamicCache()
    context = job.input_ids[0].tolist()          # prompt + committed output (the random initialiser draws here)
    pending = list(context)                      # tokens whose KV is not cached yet
    out = job.output_ids

    # per-block bookkeeping (gauss_seidel / hybrid); the sliding window has no blocks
    st = {"block_index": -1, "block_end": 0, "blocks": [], "accepted": 0, "tests": 0, "tests_accepted": 0}

    def new_block(start: int) -> tuple[list[int], str]:
        remaining = job.max_new_tokens - start
        if variant == "hybrid" and start >= hybrid_length:
            size, phase = 0, "ar"
        else:
            size = min(n, remaining - 1)
            if variant == "hybrid":
                size = min(size, hybrid_length - start)
            phase = "jacobi"
        size = max(size, 0)
        st["block_index"] += 1
        st["block_end"] = start + size
        st["blocks"].append([phase, 0])  # [phase, iterations]
        return fresh(size, context), phase

    guesses, phase = new_block(0)
    sources = ["init"] * len(guesses)
    edited = resume_guesses(job, len(guesses))
    if edited is not None:   # a fork's edited guesses for its first iteration (engine.fork guesses=...)
        guesses[:len(edited)] = edited
        sources[:len(edited)] = ["edited"] * len(edited)
    qs: list = [None] * len(guesses)
    step = 0
    with torch.inference_mode():
        while True:
            block_start = len(out)
            cache_len = cache.get_seq_length()
            with c.compute():
                logits = forward_block(lm, cache, pending, guesses)
                if cfg.greedy:
                    m, pred = verify_greedy(guesses, logits)
                    tok, info = pred[m], None
                else:
                    p = S.warp(logits, cfg).softmax(-1)
                    info = verify_speculative(guesses, qs, p, gen)
                    m, tok = info["m"], info["token"]
                    redraw = S.sample(p[m + 1:], gen).tolist() if m + 1 <= len(guesses) else []
                    pred = guesses[:m] + [tok] + redraw
                kvcache.crop(cache, cache_len + len(pending) + m)  # keep the accepted guesses' KV only
            c.target_forwards += 1
            st["blocks"][-1][1] += 1
            cur_block, cur_iter = st["block_index"], st["blocks"][-1][1]
            st["accepted"] += m
            committed = guesses[:m] + [tok]
            kept = job.commit(committed)
            context.extend(kept)
            n_pending, pending = len(pending), [tok]
            finished = job.finished(kept)

            # plan the next iteration: carried predictions + fresh guesses
            next_start = len(out)
            remaining = job.max_new_tokens - next_start
            next_guesses, next_qs, next_sources, next_phase = [], [], [], phase
            if not finished:
                if variant == "jacobi":
                    size = min(n, remaining - 1)
                    carry = pred[m + 1:][:size]
                    next_guesses = carry + fresh(size - len(carry), context)
                    if not cfg.greedy:
                        next_qs = [p[m + 1 + i] for i in range(len(carry))] + [None] * (size - len(carry))
                elif st["block_end"] - next_start > 0:
                    carry = pred[m + 1: m + 1 + st["block_end"] - next_start]
                    next_guesses = carry
                    if not cfg.greedy:
                        next_qs = [p[m + 1 + i] for i in range(len(carry))]
                else:
                    carry = []
                    next_guesses, next_phase = new_block(next_start)
                    next_qs = [None] * len(next_guesses)
                next_sources = ["carried"] * len(carry) + ["init"] * (len(next_guesses) - len(carry))
                if cfg.greedy:
                    next_qs = [None] * len(next_guesses)
            else:
                carry = []

            if info is not None:
                st["tests"] += len(info["tests"])
                st["tests_accepted"] += sum(t["accepted"] for t in info["tests"])
            rec = {"kind": "jacobi", "index": step, "variant": variant, "phase": phase,
                   "block_start": block_start, "accepted": m, "front": block_start + m,
                   "new_ids": kept, "committed": len(kept), "committed_total": len(out)}
            if job.record:
                with c.recording():
                    changed = [i >= len(guesses) or pred[i] != guesses[i] for i in range(len(pred))]
                    rec.update({
                        "block_index": cur_block if variant != "jacobi" else None,
                        "iteration_in_block": cur_iter if variant != "jacobi" else None,
                        "pending_len": n_pending,
                        "guess_ids": list(guesses), "guess_text": texts(lm, guesses), "guess_source": sources,
                        "pred_ids": list(pred), "pred_text": texts(lm, pred),
                        "changed": changed,
                        "fixed": [i < m for i in range(len(guesses))],
                        "next_start": next_start, "next_guess_ids": list(next_guesses), "carried": len(carry),
                        "forced": forced_ranges(changed, m, block_start, next_start, len(next_guesses), len(carry))
                        if not finished else [],
                        "new_text": lm.decode(kept),
                        "confidence": _confidence(logits, committed[:len(kept)]),
                        "events": ["changed"] if any(changed[:len(guesses)]) else [],
                    })
                    if info is not None:
                        rec["tests"] = info["tests"]
                        rec["resampled"] = info["resampled"]
            job.extra["summary"] = _summary(job, st, variant, n, init)
            yield rec
            step += 1
            if finished:
                return
            guesses, qs, sources, phase = next_guesses, next_qs, next_sources, next_phase


def resume_guesses(job: Job, size: int) -> list[int] | None:
    """job.resume of a fork (engine.fork guesses=...): {"guesses": token ids} that replace the first
    iteration's initial guesses (at most `size`, the block; fewer: the initialiser fills the rest). Checked
    before any forward; greedy output is unchanged by any guesses (only the iterations it takes)."""
    r = job.resume
    if r is None:
        return None
    g = r.get("guesses") if isinstance(r, dict) else None
    vocab = int(getattr(job.lm.model.config, "vocab_size", 0) or len(job.lm.tokenizer))
    if not isinstance(g, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                          for t in g):
        raise MethodError(f"resume: guesses must be a list of token ids in 0..{vocab - 1}.")
    if set(r) - {"guesses"}:
        raise MethodError(f"resume: unknown keys {sorted(set(r) - {'guesses'})} (a Jacobi run resumes with guesses).")
    return list(g[:size])


def _confidence(logits: torch.Tensor, committed: list[int]) -> float | None:
    """Lowest model probability among the tokens committed this iteration (row i predicts position i)."""
    if not committed:
        return None
    pr = logits[: len(committed)].softmax(-1)
    idx = torch.tensor(committed, device=logits.device)
    return clean_float(pr.gather(-1, idx[:, None]).min())


def _summary(job: Job, st: dict, variant: str, n: int, init: str) -> dict:
    c = job.counters
    iters = c.target_forwards
    tpf = c.generated_tokens / iters if iters else None
    if variant == "jacobi":
        per_block = iters * n / c.generated_tokens if c.generated_tokens else None  # iterations per n tokens
    else:  # Jacobi-phase blocks only (hybrid's autoregressive tail is one token per forward)
        blocks = [it for phase, it in st["blocks"] if phase == "jacobi" and it]
        per_block = sum(blocks) / len(blocks) if blocks else None
    s = {"variant": variant, "init": init, "block_size": n, "forwards": iters,
         "compression_ratio": clean_float(tpf, 4), "iterations_per_block": clean_float(per_block, 4),
         "mean_accepted_guesses": clean_float(st["accepted"] / iters, 4) if iters else None}
    if st["tests"]:
        s["guess_acceptance_rate"] = clean_float(st["tests_accepted"] / st["tests"], 4)
    return s
