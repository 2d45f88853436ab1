"""Torch threads for the decoder process: compute tokens/s of each ui_overhead row's method through the engine API
with 1 and with 2 torch threads, on an idle machine and beside a process that keeps one core busy half the time
(what a browser drawing a live page does), each configuration in a fresh process.

    python -m benchmarks.decoder_threads [--threads 1,2] [--duty 0,0.5]

engine/decoder_server.decoder_threads() chose its default from this (every core but one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

BURN = ("import time\nwhile True:\n    t = time.perf_counter()\n    while time.perf_counter() - t < {busy}: pass\n"
        "    time.sleep({idle})\n")


def one(threads: int, duty: float) -> dict:
    """In this process: set the threads, optionally start the busy process, run every row once."""
    import torch
    torch.set_num_threads(threads)
    from benchmarks.ui_overhead import ROWS
    from engine import models, run
    lm = models.load(models.EMBEDDED, device="cpu")
    run.run(lm, "ar", "warm up", max_new_tokens=4, record=False)
    burn = None
    if duty > 0:
        burn = subprocess.Popen([sys.executable, "-c", BURN.format(busy=0.02 * duty, idle=0.02 * (1 - duty))])
        time.sleep(0.5)
    out = {}
    try:
        for name, (_page, method, prompt, _max_new, opts, _setup) in ROWS.items():
            o = dict(opts)
            if method == "diffusion":
                o["gen_length"] = 64
            tr = run.run(lm, method, prompt, max_new_tokens=48 if method != "diffusion" else 64, options=o)
            c = tr.counters
            out[name] = c.generated_tokens / c.compute_s if c.compute_s else None
    finally:
        if burn is not None:
            burn.kill()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--duty", default="0,0.5", help="the busy process's share of one core (0: none)")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)   # THREADS:DUTY, run in a child process
    a = ap.parse_args(argv)
    if a.one:
        t, d = a.one.split(":")
        print("RESULT " + json.dumps(one(int(t), float(d))), flush=True)
        return 0
    rows = []
    for d in [float(x) for x in a.duty.split(",")]:
        for t in [int(x) for x in a.threads.split(",")]:
            p = subprocess.run([sys.executable, "-m", "benchmarks.decoder_threads", "--one", f"{t}:{d}"],
                               capture_output=True, text=True, cwd=os.path.dirname(HERE))
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(p.stderr[-2000:], file=sys.stderr)
                return 1
            res = json.loads(line[7:])
            rows.append((t, d, res))
            print(f"threads {t}, busy {d:.0%}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()), flush=True)
    names = list(rows[0][2])
    print(f"\n## Decoder threads ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; "
          "compute tokens/s through the engine API)\n")
    print("| torch threads | other process busy | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for t, d, res in rows:
        print(f"| {t} | {d:.0%} of a core | " + " | ".join(f"{res[k]:.1f}" for k in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
