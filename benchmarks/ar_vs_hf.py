"""Our autoregressive method vs HF `model.generate`, greedy, same model and prompts, interleaved.

Prints tokens/s of each and the ratio, and the ratio with trace recording on vs off.
    python benchmarks/ar_vs_hf.py [--tokens 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time


import torch

from engine import cpu_linear, models, run

PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Summarise: The committee met on Monday. The committee discussed the budget and the committee agreed to "
    "meet again on Friday to finalise the budget.",
    "Give three tips for learning a new language.",
]


def hf_generate(lm, prompt, n):
    ids = lm.encode(prompt)
    t = time.perf_counter()
    with torch.inference_mode(), cpu_linear.stock(lm.model):   # HF as it ships: plain nn.Linear
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                pad_token_id=lm.tokenizer.eos_token_id)
    dt = time.perf_counter() - t
    return out[0, ids.shape[1]:].tolist(), dt


def ours(lm, prompt, n, record):
    t = time.perf_counter()
    tr = run.run(lm, "ar", prompt, max_new_tokens=n, record=record)
    return tr.final_ids, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    lm = models.load(models.EMBEDDED, device="cpu")
    ours(lm, "warm up", 8, True)
    hf_generate(lm, "warm up", 8)
    tot = {"hf": [0, 0.0], "ours_rec": [0, 0.0], "ours_norec": [0, 0.0]}
    ratios, rec_ratios = [], []
    identical = True
    for r in range(a.repeats):
        for p in PROMPTS:  # interleaved: each prompt runs all three back to back
            ids_hf, t_hf = hf_generate(lm, p, a.tokens)
            ids_rec, t_rec = ours(lm, p, a.tokens, True)
            ids_nr, t_nr = ours(lm, p, a.tokens, False)
            identical &= ids_hf == ids_rec == ids_nr
            for k, ids, t in (("hf", ids_hf, t_hf), ("ours_rec", ids_rec, t_rec), ("ours_norec", ids_nr, t_nr)):
                tot[k][0] += len(ids)
                tot[k][1] += t
            ratios.append((len(ids_rec) / t_rec) / (len(ids_hf) / t_hf))
            rec_ratios.append(t_rec / t_nr)
    tps = {k: n / t for k, (n, t) in tot.items()}
    print(f"model {lm.name} on {lm.device}, greedy, {a.tokens} new tokens, {len(PROMPTS)} prompts x {a.repeats} "
          f"repeats, torch threads {torch.get_num_threads()}")
    print(f"{'run':<32}{'tokens/s':>10}")
    print(f"{'HF model.generate':<32}{tps['hf']:>10.2f}")
    print(f"{'engine ar, recording on':<32}{tps['ours_rec']:>10.2f}")
    print(f"{'engine ar, recording off':<32}{tps['ours_norec']:>10.2f}")
    print(f"engine (recording on) / HF tokens/s: {tps['ours_rec'] / tps['hf']:.3f} "
          f"(median of per-run ratios {statistics.median(ratios):.3f})")
    print(f"engine (recording off) / HF tokens/s: {tps['ours_norec'] / tps['hf']:.3f}")
    print(f"recording overhead (wall time on / off - 1): {tot['ours_rec'][1] / tot['ours_norec'][1] - 1:+.1%} "
          f"(median per run {statistics.median(rec_ratios) - 1:+.1%})")
    print(f"outputs identical across the three: {identical}")


if __name__ == "__main__":
    main()
