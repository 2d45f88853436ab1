"""Draft heads for speculative decoding on the embedded model (issue 25): data, training, evaluation.

    python -m training.train_heads gen --n 1000              # greedy answers + target features (resumable)
    python -m training.train_heads eagle --minutes 40        # the EAGLE-1/2 head -> models/heads-eagle
    python -m training.train_heads medusa --minutes 20       # Medusa heads -> models/heads-medusa
    python -m training.train_heads eval                       # held-out accuracy per depth of both

Every run appends to training/train_log.jsonl; training resumes from its checkpoint with --resume.
"""
from __future__ import annotations

import argparse


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.train_heads")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="greedy answers to the training instructions, with the target's features")
    g.add_argument("--n", type=int, default=1000)
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--new", type=int, default=128)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--minutes", type=float, default=10 ** 6, help="stop after the batch that passes this")
    for kind in ("eagle", "medusa"):
        t = sub.add_parser(kind, help=f"train the {kind} draft head(s)")
        t.add_argument("--minutes", type=float, default=30)
        t.add_argument("--max-steps", type=int, default=2000, help="the cosine schedule's length")
        t.add_argument("--batch", type=int, default=8 if kind == "eagle" else 16)
        t.add_argument("--lr", type=float, default=1e-3)
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--heldout", type=int, default=64, help="examples held out (the last ones)")
        t.add_argument("--threads", type=int, default=2)
        t.add_argument("--log-every", type=int, default=10)
        t.add_argument("--save-every", type=int, default=50)
        t.add_argument("--resume", action="store_true", help="continue from training/data/ckpt_KIND.pt")
        t.add_argument("--out", default=None, help="output directory (default models/heads-KIND)")
        if kind == "eagle":
            t.add_argument("--depth", type=int, default=3, help="training-time-test unroll depth")
        else:
            t.add_argument("--heads", type=int, default=4)
            t.add_argument("--layers", type=int, default=1, help="ResBlocks per head")
    a = ap.parse_args(argv)
    if a.cmd in ("eagle", "medusa"):
        from training.heads_train import cmd_train_heads
        cmd_train_heads(a)
    if a.cmd == "gen":
        from training.heads_data import cmd_gen_heads
        cmd_gen_heads(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
