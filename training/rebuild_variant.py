"""Rebuild an embedded diffusion variant that no longer ships (cf, cal, div, par) from the shipped default
delta: the training runs that made it, from engine.diffusion.variants.TABLE (the command lines logged in
training/train_log.jsonl), run in order, back to the nearest variant present in models/.

    .venv/bin/python -m training.rebuild_variant par            # cf -> cal -> div -> par, ~7 h on 2 CPU cores
    .venv/bin/python -m training.rebuild_variant par --print    # only print the command lines

The same recipe, not the same bits: the data are sampled again (same seeds, another machine's kernels), and
the learning rate decays over each run's --minutes of wall time, so a faster machine takes more steps unless
the line caps them (--max-steps, where the logged run was stopped by hand).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from engine.diffusion import variants
from training.common import DATA


def plan(key: str) -> list[tuple[variants.Variant, list[str]]]:
    """(variant, argv of training.train_diffusion) for every run that rebuilding `key` takes."""
    return [(v, shlex.split(line)) for v in variants.chain(key) for line in v.rebuild]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", choices=[v.key for v in variants.TABLE if v.rebuild])
    ap.add_argument("--print", action="store_true", help="print the command lines, run nothing")
    a = ap.parse_args(argv)
    steps = plan(a.variant)
    if not steps:
        print(f"{variants.BY_KEY[a.variant].dirname} is already in models/.")
        return 0
    if a.print:
        for v, args in steps:
            print(f".venv/bin/python -m {variants.TD} {shlex.join(args)}   # {v.dirname}")
        return 0
    from training.train_diffusion import main as train_diffusion
    done = set()
    for v, args in steps:
        if v.fresh_data and v.key not in done and DATA.exists() and any(DATA.iterdir()):
            aside = DATA.with_name(f"data.before-{v.key}")
            if aside.exists():
                raise SystemExit(f"{v.dirname} starts from an empty {DATA}; move it aside ({aside} exists already).")
            DATA.rename(aside)
            print(f"{v.dirname} starts from an empty training/data: the old one is now {aside}", flush=True)
        done.add(v.key)
        print(f"== {v.dirname}: python -m {variants.TD} {shlex.join(args)}", flush=True)
        train_diffusion(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
