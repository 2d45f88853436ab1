"""Jacobi and lookahead decoding against autoregressive on the embedded model: tokens per forward
(compression ratio) and wall-clock ratio, measured in one run on the same prompts, greedy.

    .venv/bin/python -m benchmarks.jacobi [--max-new-tokens 64] [--repeats 1] [--threads 2] [--write]

Wall-clock ratio = autoregressive seconds / method seconds for the same prompt and the same number of
tokens (compute time: model forwards plus the method's own work, recording off). Runs of the same prompt
are interleaved so that machine load drifts affect all methods alike; with --repeats > 1 the median is used.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from engine import models, run

PROMPTS = {
    "code (repetitive)": "Write a Python class Point with methods add, sub, mul and div, each returning a new Point.",
    "list (repetitive)": "Count from one to thirty in words, separated by commas.",
    "chat": "Explain in two sentences why the sky is blue.",
}

METHODS = [
    ("ar", "ar", {}),
    ("jacobi (pad, n=8)", "jacobi", {"variant": "jacobi", "init": "pad", "block_size": 8}),
    ("jacobi (random, n=8)", "jacobi", {"variant": "jacobi", "init": "random", "block_size": 8}),
    ("gauss_seidel (pad, n=8)", "jacobi", {"variant": "gauss_seidel", "init": "pad", "block_size": 8}),
    ("hybrid (pad, n=8, 32 then AR)", "jacobi", {"variant": "hybrid", "init": "pad", "block_size": 8,
                                                  "hybrid_length": 32}),
    ("lookahead W=5 N=4 G=5 (default)", "lookahead", {}),
    ("lookahead W=7 N=5 G=7 (README)", "lookahead", {"window_size": 7, "level": 5, "guess_set_size": 7}),
    ("lookahead W=15 N=5 G=15", "lookahead", {"window_size": 15, "level": 5, "guess_set_size": 15}),
]


def timed(lm, method, prompt, n, opts):
    t = time.perf_counter()
    tr = run.run(lm, method, prompt, max_new_tokens=n, options=opts, record=False)
    return tr, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated prompt names to run (default: all)")
    ap.add_argument("--write", action="store_true", help="also write benchmarks/results_jacobi.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = models.load(models.EMBEDDED, device="cpu")
    timed(lm, "ar", "Hello", 4, {})  # warm-up
    prompts = {k: v for k, v in PROMPTS.items() if not a.only or k in a.only.split(",")}
    lines = ["| prompt | method | tokens | forwards | tokens / forward | compute s | wall s | wall-clock ratio vs AR | "
             "identical to AR |", "|---|---|---|---|---|---|---|---|---|"]
    print(lines[0])
    print(lines[1])
    for pname, prompt in prompts.items():
        results = {name: [] for name, _, _ in METHODS}
        for _ in range(a.repeats):
            for name, method, opts in METHODS:
                results[name].append(timed(lm, method, prompt, a.max_new_tokens, opts))
        ar_tr = results["ar"][0][0]
        ar_wall = statistics.median(w for _, w in results["ar"])
        for name, method, opts in METHODS:
            tr = results[name][0][0]
            wall = statistics.median(w for _, w in results[name])
            comp = statistics.median(t.counters.compute_s for t, _ in results[name])
            c = tr.counters
            ratio = (ar_wall / ar_tr.counters.generated_tokens) / (wall / c.generated_tokens)
            row = (f"| {pname} | {name} | {c.generated_tokens} | {c.target_forwards} | "
                   f"{c.generated_tokens / c.target_forwards:.2f} | {comp:.2f} | {wall:.2f} | {ratio:.2f}x | "
                   f"{'yes' if tr.final_ids == ar_tr.final_ids else 'NO'} |")
            print(row, flush=True)
            lines.append(row)
        if a.write:  # after every prompt, so that a stopped run keeps what it measured
            write(a, argv, lines)
    return 0


def write(a, argv, lines) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = [
        "# Jacobi and lookahead decoding: results",
        "",
        f"Command: `.venv/bin/python -m benchmarks.jacobi {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} · model: embedded "
        f"SmolLM2-135M-Instruct (fp32, CPU, {a.threads} threads) · {platform.processor() or platform.machine()} "
        f"· greedy · max_new_tokens {a.max_new_tokens} · repeats {a.repeats}",
        f"Machine: shared with other jobs (1-min load average {load:.1f} on {os.cpu_count()} cores when written), "
        "so the wall-clock columns are noisy; tokens / forward is exact and load-independent.",
        "",
        "Wall-clock ratio = (AR seconds per token) / (method seconds per token), both measured in this run "
        "on the same prompt; > 1 means faster than autoregressive.",
        "",
    ]
    Path(__file__).with_name("results_jacobi.md").write_text("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
