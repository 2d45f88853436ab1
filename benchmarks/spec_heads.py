"""Trained draft heads vs the other drafters on OPEN-ENDED chat prompts held out from the heads' training
instructions (issue 25): tau (bonus token included), target forwards per token, tokens/s and speedup vs our
autoregressive decoding and HF generate, all in one run, greedy, checked token for token against AR.

    python -m benchmarks.speculative --suite heads [--new 96] [--repeats 1] [--only eagle]

The prompts are training/prompts.py's TEMPLATES on HELDOUT_TOPICS (no topic of the training data). Each row
is the mean over the prompts (tokens/s: total tokens / total seconds). The table is the trade-off of tree size
vs tau vs speed on this compute-bound CPU; written to benchmarks/results_speculative_heads.md.
"""
from __future__ import annotations

import os
import platform
import time

import torch

from benchmarks.harness import HERE

EAGLE = os.path.join("models", "heads-eagle")
MEDUSA = os.path.join("models", "heads-medusa")


def held_out_prompts(n: int) -> list[str]:
    from training.prompts import HELDOUT_TOPICS, TEMPLATES
    picks = [(0, 1), (1, 0), (2, 5), (3, 2), (4, 6), (5, 8), (6, 3), (7, 9)]   # (topic, template): varied
    return [TEMPLATES[t].format(HELDOUT_TOPICS[i]) for i, t in picks[:n]]


def configs() -> list[tuple[str, dict]]:
    e, m = {"drafter": "eagle", "heads": EAGLE}, {"drafter": "medusa", "heads": MEDUSA}
    return [
        ("eagle chain k=4", {**e, "num_assistant_tokens": 4}),
        ("eagle chain k=6", {**e, "num_assistant_tokens": 6}),
        ("eagle dynamic 8 nodes (top-2, depth 5)", {**e, "tree": "dynamic", "tree_budget": 8, "tree_topk": 2,
                                                    "num_assistant_tokens": 5}),
        ("eagle dynamic 16 nodes (top-4, depth 6)", {**e, "tree": "dynamic", "tree_budget": 16, "tree_topk": 4,
                                                     "num_assistant_tokens": 6}),
        ("eagle dynamic 32 nodes (top-4, depth 6)", {**e, "tree": "dynamic", "tree_budget": 32, "tree_topk": 4,
                                                     "num_assistant_tokens": 6}),
        ("eagle dynamic 60 nodes (top-8, depth 6)", {**e, "tree": "dynamic", "tree_budget": 60, "tree_topk": 8,
                                                     "num_assistant_tokens": 6}),
        ("medusa chain k=4", {**m, "num_assistant_tokens": 4}),
        ("medusa tree 2.2.2", {**m, "tree": "2.2.2", "num_assistant_tokens": 4}),
        ("medusa tree 3.2.1", {**m, "tree": "3.2.1", "num_assistant_tokens": 4}),
        ("draft_model self:24 k=4", {"drafter": "draft_model", "draft_model": "self:24", "num_assistant_tokens": 4}),
        ("prompt_lookup", {"drafter": "prompt_lookup"}),
    ]


def run_suite(a, lm) -> int:
    from benchmarks.speculative import best_of, hf_generate
    from engine import run
    prompts = held_out_prompts(a.n_prompts)
    cfgs = [c for c in configs() if not a.only or any(c[0].startswith(o) for o in a.only.split(","))]
    head = [f"# trained draft heads on open-ended held-out prompts  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"model {lm.name} on {lm.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
            f"threads, load average {os.getloadavg()[0]:.1f}), greedy, {a.new} new tokens, {len(prompts)} prompts "
            f"(training/prompts.py TEMPLATES x HELDOUT_TOPICS), best of {a.repeats}"]
    print("\n".join(head), flush=True)
    run.run(lm, "ar", "warm up", max_new_tokens=4, record=False)
    ar_ids, ar_t, ar_n, hf_t, hf_n, hf_same = [], 0.0, 0, 0.0, 0, True
    for p in prompts:
        dt, tr = best_of(a.repeats, lambda: run.run(lm, "ar", p, max_new_tokens=a.new, record=False))
        ar_ids.append(tr.final_ids)
        ar_t, ar_n = ar_t + dt, ar_n + len(tr.final_ids)
        dt, ids = best_of(a.repeats, lambda: hf_generate(lm, p, a.new))
        hf_t, hf_n, hf_same = hf_t + dt, hf_n + len(ids), hf_same and ids == tr.final_ids
    ar_tps = ar_n / ar_t
    rows = [("ours: autoregressive", 1.0, 1.0, None, ar_tps, 1.0, True),
            ("HF generate greedy", None, None, None, hf_n / hf_t, hf_n / hf_t / ar_tps, hf_same)]
    by_depth = {}
    for name, opts in cfgs:
        t, n, rounds, tforw, drafted, same, depth_rates = 0.0, 0, 0, 0, 0, True, {}
        for p, ref in zip(prompts, ar_ids):
            dt, tr = best_of(a.repeats, lambda: run.run(lm, "speculative", p, max_new_tokens=a.new, options=opts,
                                                        record=False))
            s = tr.extra["summary"]
            t, n = t + dt, n + len(tr.final_ids)
            rounds += s.get("rounds") or 0
            tforw += tr.counters.target_forwards
            drafted += s.get("drafted_tokens") or 0
            for d, r in (s.get("acceptance_by_depth") or {}).items():
                depth_rates.setdefault(int(d), []).append(r)
            same = same and tr.final_ids == ref
        tps = n / t
        tau = n / rounds if rounds else None
        by_depth[name] = {d: sum(v) / len(v) for d, v in sorted(depth_rates.items())}
        rows.append((f"ours: {name}", tau, tforw / n if n else None, drafted / rounds if rounds else None, tps,
                     tps / ar_tps, same))
        print(f"  ... {name}: tau {tau or 0:.2f}, {tps:.1f} tok/s ({tps / ar_tps:.2f}x AR)", flush=True)

    def f(x):
        return "-" if x is None else f"{x:.2f}"

    lines = head + ["", "| method | tau (bonus incl.) | target fwd / token | drafted nodes / round | tokens/s | "
                        "speedup vs our AR | = AR greedy |", "|---|---|---|---|---|---|---|"]
    for m, tau, fpt, nodes, tps, sp, same in rows:
        lines.append(f"| {m} | {f(tau)} | {f(fpt)} | {f(nodes)} | {tps:.1f} | {sp:.2f}x | {'yes' if same else 'NO'} |")
    lines += ["", "Acceptance by depth (P(accept depth d | reached d), mean over the prompts):", "",
              "| method | " + " | ".join(f"d{d}" for d in range(1, 7)) + " |", "|---|" + "---|" * 6]
    for name, rates in by_depth.items():
        lines.append(f"| {name} | " + " | ".join(f"{rates[d]:.2f}" if d in rates else "-" for d in range(1, 7)) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    if not a.only:
        (HERE / "results_speculative_heads.md").write_text(text + "\n")
    return 0
