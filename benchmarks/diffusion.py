"""Remasking rules on the embedded diffusion model: steps, NFE per token, tokens/s, judged perplexity.

Every rule decodes the same held-out instructions (gen_length 64, block_length 16, greedy); the
one-token-per-step low_confidence run (steps = 64) is the reference the parallel rules are
compared with. Tokens/s is compute only (model forwards + rule arithmetic), measured in this run.
Also: Fast-dLLM threshold with and without the prefix KV cache (NFE is the same; fewer tokens go
through the model per step).

Prompt sets (`--prompts`): `heldout` open-ended held-out instructions whose answers fill the 64
tokens; `short` held-out one-line instructions (the answer ends early, the tail is EOS, as in
LLaDA's EOS-padded SFT regime); `mixed` half of each (the default); `formulaic` low-entropy ones
(lists, counting, copying). Every run stops once an EOS is committed with nothing masked before it,
so the EOS tail is not counted against the 1-token/step reference; the "answer tokens / answer step"
column counts only steps that committed a token of the answer (before its first EOS), so the
parallelism inside the answer is shown apart from the EOS tail.

    python benchmarks/diffusion.py [--n 6] [--gen-length 64] [--block-length 16] [--prompts mixed] [--weights cf|sd|cal] [--delta DIR] [--only 0,5] [--thresholds 0.95,0.8] [--offset 12]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from benchmarks.diffusion_quality import answer_len, distinct2, heldout_prompts, judge_perplexity
from engine import models, run
from engine.diffusion import adapters, smol

CONFIGS = [
    ("low_confidence, 1 token/step", {"rule": "low_confidence"}, "full"),
    ("low_confidence, 2 tokens/step", {"rule": "low_confidence"}, "half"),
    ("random, 1 token/step", {"rule": "random"}, "full"),
    ("topk_margin, 1 token/step", {"rule": "topk_margin"}, "full"),
    ("entropy, 1 token/step", {"rule": "entropy"}, "full"),
    ("threshold 0.9 (Fast-dLLM)", {"rule": "threshold", "threshold": 0.9}, "full"),
    ("threshold 0.9 + prefix cache", {"rule": "threshold", "threshold": 0.9, "prefix_cache": True}, "full"),
    ("threshold 0.7", {"rule": "threshold", "threshold": 0.7}, "full"),
    ("prophet", {"rule": "prophet"}, "full"),
    ("eos_ascending, 2 tokens/step avg", {"rule": "eos_ascending"}, "half"),
    ("credit (CreditDecoding) 0.9", {"rule": "credit", "threshold": 0.9}, "full"),
    ("local_leap 0.9 / 0.6", {"rule": "local_leap", "anchor": 0.9, "relaxed": 0.6}, "full"),
]


FORMULAIC = [
    "List the days of the week, separated by commas.",
    "Count from 1 to 30, separated by commas.",
    "List the months of the year, separated by commas.",
    "Write the letters of the English alphabet in order, separated by spaces.",
    "Repeat this sentence three times: The quick brown fox jumps over the lazy dog.",
    "List the numbers from 10 to 40, one per line.",
]


def neighbour_confidence(traces):
    """Why parallel rules stall on a shifted model: the confidence of a masked position whose left
    neighbour is already text vs. one whose left neighbour is still [MASK] (recorded steps)."""
    groups = {"after_text": [], "after_mask": []}
    for tr in traces:
        for s in tr.steps:
            for i, c in enumerate(s["conf"]):
                if c is None or s["score"][i] is None:  # committed before this step, or outside the block
                    continue
                left_text = i == 0 or s["state"][i - 1] == "committed"  # text when this step's forward ran
                groups["after_text" if left_text else "after_mask"].append(c)
    return {k: (statistics.median(xs) if xs else float("nan"), sum(x >= 0.9 for x in xs) / max(len(xs), 1), len(xs))
            for k, xs in groups.items()}


def answer_steps(tr, eos_ids):
    """(answer tokens, steps that committed at least one of them): the answer ends at its first EOS."""
    n = answer_len(tr.final_ids, eos_ids)
    k = sum(any(st == "new" and i < n for i, st in enumerate(s["state"])) for s in tr.steps)
    return n, k


def parallel_repeats(tr, eos_ids, n: int = 5):
    """(answer tokens committed by steps that committed two or more answer tokens, how many of those tokens
    repeat an earlier n-gram of the final answer): how much of a rule's parallelism is a loop being copied."""
    from training.train_diffusion import repeated_ngrams
    L = answer_len(tr.final_ids, eos_ids)  # up to and including the first EOS, so no EOS is needed below
    marks = repeated_ngrams(list(tr.final_ids[:L]), n, eos=-1)
    par = rep = 0
    for s in tr.steps:
        new = [i for i, st in enumerate(s["state"]) if st == "new" and i < L]
        if len(new) >= 2:
            par += len(new)
            rep += sum(marks[i] for i in new)
    return par, rep


def pick_prompts(kind: str, n: int, offset: int = 0) -> list[str]:
    """n instructions of a set, after the first `offset` (so --offset 12 --n 12 gives 12 prompts disjoint
    from the default --n 12: a fresh check of a checkpoint chosen on the first ones)."""
    if offset:
        return pick_prompts(kind, offset + n)[offset:]
    if kind == "formulaic":
        return FORMULAIC[:n]
    if kind == "mixed":  # long, one-line, long, ...
        k = (n + 1) // 2
        return [p for pair in zip(heldout_prompts(k, seed=23), heldout_prompts(k, seed=23, short=True)) for p in pair][:n]
    return heldout_prompts(n, seed=23, short=kind == "short")


def pick_configs(only: str = "", thresholds: str = "") -> list:
    """The rows to run: CONFIGS (or the `only` indices of it) plus one Fast-dLLM threshold row per
    value in `thresholds` (comma-separated, each in (0, 1])."""
    configs = CONFIGS if not only else [CONFIGS[int(i)] for i in only.split(",")]
    extra = []
    for t in (x.strip() for x in thresholds.split(",")):
        if not t:
            continue
        v = float(t)
        if not 0.0 < v <= 1.0:
            raise ValueError(f"threshold {t} is outside (0, 1]")
        extra.append((f"threshold {v:g}", {"rule": "threshold", "threshold": v}, "full"))
    return configs + extra


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6, help="held-out instructions")
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--offset", type=int, default=0,
                    help="skip the set's first OFFSET instructions (fresh prompts for a checkpoint chosen on the first ones)")
    ap.add_argument("--only", default="", help="comma-separated config indices (debug)")
    ap.add_argument("--prompts", choices=("mixed", "heldout", "short", "formulaic"), default="mixed",
                    help="held-out long-answer instructions, one-line ones, half of each (mixed), or low-entropy "
                         "ones (lists, counting, copying)")
    ap.add_argument("--weights", choices=list(smol.VARIANTS), default="default",
                    help="the embedded delta: " + "; ".join(f"{k}: {d}" for k, (_, d) in smol.VARIANTS.items()))
    ap.add_argument("--thresholds", default="",
                    help="comma-separated extra Fast-dLLM thresholds to add as rows (a speed / perplexity sweep), e.g. 0.95,0.8")
    ap.add_argument("--delta", default=None,
                    help="evaluate this delta directory (e.g. a training checkpoint) instead of --weights")
    a = ap.parse_args(argv)
    if a.delta:
        a.weights = smol.register_checkpoint(a.delta)
    torch.set_num_threads(a.threads)
    lm = models.load(models.EMBEDDED, device="cpu")
    ad = adapters.embedded(lm, a.weights)
    adapter = smol.adapter_name(a.weights)
    eos = lm.eos_ids
    prompts = pick_prompts(a.prompts, a.n, a.offset)
    configs = pick_configs(a.only, a.thresholds)
    print(f"# Diffusion rules on {ad.name} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    kind = {"heldout": "held-out long-answer instructions", "short": "held-out one-line instructions",
            "mixed": "held-out instructions (half long-answer, half one-line)",
            "formulaic": "formulaic instructions (lists, counting, copying)"}[a.prompts]
    after = f" after the first {a.offset}" if a.offset else ""
    print(f"{len(prompts)} {kind}{after}, gen_length {a.gen_length}, block_length {a.block_length}, greedy, "
          f"torch threads {a.threads}\n")
    print("| rule | steps | NFE / token | tokens / step | answer tokens / answer step | tokens forwarded / sample "
          "| tokens/s (compute) | median judged ppl | distinct-2 | steps vs 1-token/step | ppl vs 1-token/step "
          "| parallel answer commits: share / of them repeating a 5-gram |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ref, ref_traces = None, None
    for name, opts, budget in configs:
        steps = a.gen_length if budget == "full" else a.gen_length // 2
        o = {"gen_length": a.gen_length, "block_length": a.block_length, "steps": steps, "adapter": adapter, **opts}
        n_steps, nfe, toks, comp, fwd, samples, ans_toks, ans_steps, par, rep = 0, 0, 0, 0.0, 0, [], 0, 0, 0, 0
        is_ref = opts == {"rule": "low_confidence"} and budget == "full"
        traces = []
        for p in prompts:
            # recorded (outside the compute clock): which positions each step committed
            tr = run.run(lm, "diffusion", p, max_new_tokens=a.gen_length, options=o, record=True)
            at, ast = answer_steps(tr, eos)
            ans_toks += at
            ans_steps += ast
            pr, rp = parallel_repeats(tr, eos)
            par, rep = par + pr, rep + rp
            traces.append(tr)
            n_steps += len(tr.steps)
            nfe += tr.counters.target_forwards
            toks += tr.counters.generated_tokens
            comp += tr.counters.compute_s
            fwd += tr.extra["summary"]["forwarded_tokens"]
            samples.append((tr.meta["prompt_ids"], tr.final_ids))
        ppl = statistics.median(judge_perplexity(lm, pi, x, eos) for pi, x in samples)
        d2 = distinct2([x for _, x in samples], eos)
        st = n_steps / len(prompts)
        if ref is None:
            ref = (st, ppl)
        if is_ref:
            ref_traces = traces
        print(f"| {name} | {st:.1f} | {nfe / max(toks, 1):.2f} | {toks / max(n_steps, 1):.2f} "
              f"| {ans_toks / max(ans_steps, 1):.2f} | {fwd / len(prompts):.0f} "
              f"| {toks / max(comp, 1e-9):.1f} | {ppl:.1f} | {d2:.2f} | {ref[0] / st:.2f}x fewer | "
              f"{(ppl / ref[1] - 1) * 100:+.0f}% | {par / max(ans_toks, 1):.0%} / {rep / max(par, 1):.0%} |", flush=True)
        if name.startswith("threshold 0.9 (") or name.startswith("low_confidence, 1"):
            x = samples[0][1]
            print(f"|  ↳ e.g. {prompts[0]!r}: {lm.decode(x[:answer_len(x, eos)])!r} |||||||||||", flush=True)
    if ref_traces is None:  # --only left the 1-token/step run out
        o = {"gen_length": a.gen_length, "block_length": a.block_length, "steps": a.gen_length, "rule": "low_confidence",
             "adapter": adapter}
        ref_traces = [run.run(lm, "diffusion", p, max_new_tokens=a.gen_length, options=o, record=True) for p in prompts]
    nc = neighbour_confidence(ref_traces)
    print("\nConfidence of still-masked positions in the current block over the low_confidence 1-token/step run "
          "(the model predicts position i from the hidden state at i-1):\n")
    print("| left neighbour | median confidence | share >= 0.9 | position-steps |")
    print("|---|---|---|---|")
    for k, label in (("after_text", "text (prompt or committed)"), ("after_mask", "[MASK]")):
        med, sh, n = nc[k]
        print(f"| {label} | {med:.3f} | {sh:.1%} | {n} |", flush=True)


if __name__ == "__main__":
    main()
