"""Cautious next-token prediction (Wang et al. 2025, "Cautious Next Token Prediction", CNTP).

At every step the entropy H of the next-token distribution (after the sampling warpers) sets a number of
trials

    N = floor(1 + (max_trials - 1) * clamp((H - entropy_low) / (entropy_high - entropy_low), 0, 1))

(the paper's schedule: the less sure the model, the more trials). With N = 1 the step is one ordinary token.
With N > 1 the decoder runs N trials from the same state, each until it produces a punctuation token (or an
end-of-text token, or `max_trial_tokens`, or the token budget), scores each by its perplexity
exp(-mean log p) under the distributions its tokens were drawn from, and commits the whole trial with the
lowest perplexity.

Sampling (the paper's setting): the N trials are independent draws. Greedy (temperature 0; deterministic,
for teaching and tests): the trials start with the N likeliest distinct first tokens and continue greedily.
The N trials run as one batch (one forward per trial token for all trials, one KV-cache row each, dropped
afterwards); the chosen trial is then written into the run's cache in one forward.

"Punctuation" here is any token whose text, with trailing spaces removed, ends with one of . , ? ! : ; ) ] }
or contains a newline: the paper's ten single tokens, and the merged tokens a BPE vocabulary has for them
(".\\n", "),", ...).
"""
from __future__ import annotations

import copy
import math
import weakref

import torch
from transformers import DynamicCache

from engine import sampling as S
from engine.errors import OptionError
from engine.methods import Job, register
from engine.methods.ar import candidates_record, prefill
from engine.options import Opt
from engine.trace import clean_float

PUNCTUATION = ".,?!:;)]}"
MAX_TRIALS = 32
_STOPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # tokenizer -> its punctuation token ids


def stop_ids(tokenizer) -> frozenset:
    """The punctuation token ids of a tokenizer (decoded once per tokenizer, then kept while it lives)."""
    if tokenizer not in _STOPS:
        out = set()
        for t in range(len(tokenizer)):
            s = tokenizer.decode([t], skip_special_tokens=False)
            r = s.rstrip(" ")
            if "\n" in s or (r and r[-1] in PUNCTUATION):
                out.add(t)
        _STOPS[tokenizer] = frozenset(out)
    return _STOPS[tokenizer]


def n_trials(h: float, low: float, high: float, max_trials: int) -> int:
    x = min(1.0, max(0.0, (h - low) / (high - low)))
    return int(1 + (max_trials - 1) * x)


def check(o: dict, ctx) -> None:
    if o["entropy_high"] <= o["entropy_low"]:
        raise OptionError(f"entropy_high must be > entropy_low (the entropy between them sets the number of trials), "
                          f"got {o['entropy_low']:g} and {o['entropy_high']:g}.")


@register("cautious", "search", "Cautious next-token prediction: where the model is unsure (high entropy), several "
          "trials run to the next punctuation and the one with the lowest perplexity is kept.",
          options={
              "max_trials": Opt(10, "trials at the most uncertain steps (1: ordinary decoding)", min=1,
                                max=MAX_TRIALS),
              "entropy_low": Opt(0.01, "entropy (nats) at or below which a step is one token", min=0.0, max=20.0),
              "entropy_high": Opt(1.5, "entropy (nats) at or above which a step runs max_trials trials", min=0.0,
                                  max=20.0),
              "max_trial_tokens": Opt(32, "tokens a trial runs at most when it meets no punctuation", min=1,
                                      max=256),
              "top_candidates": Opt(10, "candidates recorded per step (at its first position)", min=1, max=100),
          }, check=check, lossless=False)
def generate(job: Job, max_trials: int = 10, entropy_low: float = 0.01, entropy_high: float = 1.5,
             max_trial_tokens: int = 32, top_candidates: int = 10):
    lm, cfg, c = job.lm, job.sampling, job.counters
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    stops = stop_ids(lm.tokenizer)
    eos = job.eos_ids
    cache = DynamicCache()
    dev = lm.device
    summary = job.extra.setdefault("summary", {"branching_steps": 0, "trials": 0, "trial_tokens": 0})
    with torch.inference_mode():
        with c.compute():
            logits = prefill(lm, job.input_ids, cache)[0]
        c.target_forwards += 1
        step = 0
        while True:
            start = job.input_ids.shape[1] + len(job.output_ids)
            with c.compute():
                p = torch.softmax(logits, -1) if cfg.greedy else S.warp(logits, cfg).softmax(-1)
                h = float(S.entropy(p))
                n = n_trials(h, entropy_low, entropy_high, max_trials)
                n = min(n, int((p > 0).sum()))           # greedy starts need distinct first tokens
                budget = min(max_trial_tokens, job.max_new_tokens - len(job.output_ids))
                if n <= 1:
                    tok = int(S.choose(logits, cfg, gen))
                    trials = [([tok], [float(p[tok])], "single")]
                    best = 0
                else:
                    trials = _trials(lm, cache, p, n, budget, cfg, gen, stops, eos, c)
                    best = min(range(n), key=lambda i: _ppl(trials[i][1]))
            ids = trials[best][0]
            kept = job.commit(ids)
            rec = {"kind": "cautious", "index": step, "position": start, "new_ids": kept, "entropy": clean_float(h),
                   "n_trials": n, "chosen": best, "branched": n > 1}
            if n > 1:
                summary["branching_steps"] += 1
                summary["trials"] += n
                summary["trial_tokens"] += sum(len(t[0]) for t in trials)
                rec["events"] = ["changed"] if trials[best][0][0] != int(logits.argmax()) else []
            if job.record:
                with c.recording():
                    first = candidates_record(lm, logits, cfg, kept[0] if kept else ids[0], top_candidates)
                    rec["candidates"] = first["candidates"]
                    rec["token_id"], rec["token_text"] = first["token_id"], first["token_text"]
                    rec["new_text"] = lm.decode(kept)
                    rec["confidence"] = clean_float(min(trials[best][1][: max(1, len(kept))]))
                    rec["trials"] = [{"ids": t, "text": lm.decode(t), "p": [clean_float(x) for x in ps],
                                      "ppl": clean_float(min(_ppl(ps), 1e9)), "stop": why}
                                     for t, ps, why in trials]
            yield rec
            step += 1
            if job.finished(kept) or not kept:
                return
            with c.compute():
                out = lm.model(input_ids=torch.tensor([kept], device=dev), past_key_values=cache, use_cache=True,
                               logits_to_keep=1)
                logits = out.logits[0, -1].float()
            c.target_forwards += 1


def _ppl(ps: list[float]) -> float:
    return math.exp(-sum(math.log(max(x, 1e-30)) for x in ps) / len(ps))


def _trials(lm, cache, p, n, budget, cfg, gen, stops, eos, counters):
    """n trials from the cache's state, one batch row each (the cache itself is left as it is):
    [(ids, the probability each token was drawn with, why the trial stopped)]."""
    first = torch.topk(p, n).indices if cfg.greedy else S.sample(p.expand(n, -1), gen)
    ids = [[int(t)] for t in first.tolist()]
    ps = [[float(p[t])] for t in first.tolist()]
    why: list[str | None] = [None] * n

    def stopped(i: int) -> None:
        t = ids[i][-1]
        if t in eos:
            why[i] = "eos"
        elif t in stops:
            why[i] = "punctuation"
        elif len(ids[i]) >= budget:
            why[i] = "length"
    for i in range(n):
        stopped(i)
    rows = copy.deepcopy(cache)
    rows.batch_repeat_interleave(n)
    while any(w is None for w in why):
        feed = torch.tensor([[t[-1]] for t in ids], device=lm.device)   # a stopped row repeats its last token
        nxt = lm.model(input_ids=feed, past_key_values=rows, use_cache=True).logits[:, -1].float()
        counters.target_forwards += 1
        q = torch.softmax(nxt, -1) if cfg.greedy else S.warp(nxt, cfg).softmax(-1)
        toks = nxt.argmax(-1) if cfg.greedy else S.sample(q, gen)
        for i in range(n):
            if why[i] is None:
                t = int(toks[i])
                ids[i].append(t)
                ps[i].append(float(q[i, t]))
                stopped(i)
    return [(ids[i], ps[i], why[i]) for i in range(n)]
