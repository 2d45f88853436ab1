"""Turn the embedded SmolLM2-135M-Instruct into a small masked diffusion LM (Dream's recipe).

Stages, all CPU-friendly:
  gen   SmolLM2-135M-Instruct answers instructions (training/prompts.py); each example is the
        chat-formatted prompt + a 64-token answer, padded with <|im_end|> (the model learns to
        fill the tail with EOS, as LLaDA/Dream do). Written to training/data/*.pt (not shipped).
  gen-self  the diffusion model answers every training instruction itself (greedy low_confidence,
        blocks of 16, prefix KV cache): self-distillation data for certainty forcing (dParallel).
        With --kind loops (and e.g. --block 64 --threshold 0.9) the answers go to loops*.pt instead: never
        training targets, only the negatives of train --seq-penalty.
  interpolate  weight interpolation of two deltas (e.g. the default and a certainty-forced one).
  train bidirectional attention + logits shifted by one + LoRA (r=16) on every linear layer
        + a trained mask-token row. Per example: t ~ U(0.02, 1), every answer token masked with
        probability t, loss = cross-entropy on masked tokens weighted by 1/t (LLaDA / Dream).
        Saves the delta (fp16 LoRA + mask row) to models/smol-diffusion/ every --save-every steps
        and logs to training/train_log.jsonl.

  The shipped delta's data (see benchmarks/results_diffusion.md): long answers sampled at T=0.8
  (gen, seeds 0/1/2), one-line answers that end in an EOS tail (gen --templates short, seed 3), and
  SmolLM2's greedy answer to every training instruction (gen --greedy), used as distillation targets.

    .venv/bin/python -m training.train_diffusion gen --n 2000 [--templates short] [--greedy]
    .venv/bin/python -m training.train_diffusion train --minutes 75
    .venv/bin/python -m training.train_diffusion train --minutes 60 --resume --greedy-share 0.5   # continue the shipped delta

  Certainty forcing (dParallel), which made smol-diffusion-cf from the default delta (two runs; every
  variant's exact command lines are in engine/diffusion/variants.py, and `python -m training.rebuild_variant
  KEY` runs them): semi-autoregressive block masking (blocks before a drawn block clean, blocks after it all
  [MASK], the block masked with complementary masks or from a random cut on), mean cross-entropy + weight x
  entropy of the correctly predicted masked tokens, on mostly greedy answers:
    .venv/bin/python -m training.train_diffusion train --resume --resume-from models/smol-diffusion-cf --out models/smol-diffusion-cf --certainty 2 --cf-temperature 1.0 --cf-cut-share 0.5 --greedy-share 0.7 --batch 4 --lr 4e-4 --threads 2 --minutes 55

  Sequence-level unlikelihood (Welleck et al. 2019) against the loops of one-block greedy decoding: the
  model decodes training instructions itself (gen-self --kind loops), the tokens of its answers that repeat
  an earlier n-gram are the negatives, and train --seq-penalty W adds W x mean -log(1 - p(token)) over them,
  masked, with the text before a cut near them in view (make_batch_seq):
    .venv/bin/python -m training.train_diffusion gen-self --delta DIR --kind loops --block 64 --threshold 0.9 --minutes 13
    .venv/bin/python -m training.train_diffusion train --resume --resume-from DIR --out OUT --certainty 2         --wrong-penalty 1 --seq-penalty 1 --seq-ngram 5 --cf-block 64 --sampled-only ...

The code is split by concern: training/common.py (paths, log, base model), data.py (shards, batches),
losses.py, evaluate.py, generate.py (gen, gen-self), loop.py (train), lora.py (interpolate); this module is
the command line.
"""
from __future__ import annotations

import argparse
import os

from training.common import DATA, GEN_LEN, LOG, ROOT, load_base, log  # noqa: F401 (re-exported)
from training.data import batch_pools, draw_batch, left_pad, load_data, loop_pool, make_batch, make_batch_cf, make_batch_seq, padded_attention, padded_hidden, padded_positions, repeated_ngrams, split_heldout  # noqa: F401 (re-exported)
from training.evaluate import evaluate, evaluate_ahead  # noqa: F401 (re-exported)
from training.generate import cmd_gen, cmd_gen_self, self_decode  # noqa: F401 (re-exported)
from training.loop import cmd_train, objective_text  # noqa: F401 (re-exported)
from training.lora import cmd_interpolate, interpolate_deltas  # noqa: F401 (re-exported)
from training.losses import certainty_forcing_loss, confident_error_penalty, neighbour_penalty, repeat_unlikelihood, unlikelihood  # noqa: F401 (re-exported)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--n", type=int, default=1000)
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--templates", choices=("long", "short"), default="long",
                   help="long: TEMPLATES (answers fill the 64 tokens); short: SHORT_TEMPLATES (one-line answers + EOS)")
    g.add_argument("--greedy", action="store_true",
                   help="SmolLM2's greedy answer to every training instruction (long and short templates) once")
    gs = sub.add_parser("gen-self", help="self-distillation data: the diffusion delta answers the training instructions")
    gs.add_argument("--delta", default=None, help="delta directory (default: the shipped models/smol-diffusion)")
    gs.add_argument("--n", type=int, default=1500)
    gs.add_argument("--batch", type=int, default=16)
    gs.add_argument("--block", type=int, default=16)
    gs.add_argument("--seed", type=int, default=0)
    gs.add_argument("--start", type=int, default=0,
                    help="skip the first START shuffled instructions (answered by an earlier run with the same seed)")
    gs.add_argument("--threads", type=int, default=2)
    gs.add_argument("--minutes", type=float, default=10 ** 6, help="stop after the batch that passes this")
    gs.add_argument("--no-cache", action="store_true", help="full forward every step (default: Fast-dLLM prefix cache)")
    gs.add_argument("--threshold", type=float, default=None,
                    help="Fast-dLLM threshold decoding (default: low_confidence, one token per step)")
    gs.add_argument("--kind", choices=("self", "loops"), default="self",
                    help="self: training targets (shard*.pt); loops: negatives for train --seq-penalty (loops*.pt)")
    ip = sub.add_parser("interpolate", help="(1 - a) x delta SRC0 + a x delta SRC1, exactly, as one LoRA of twice the rank")
    ip.add_argument("src0")
    ip.add_argument("src1")
    ip.add_argument("--a", type=float, required=True)
    ip.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--minutes", type=float, default=75)
    t.add_argument("--max-steps", type=int, default=10 ** 9)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--r", type=int, default=16)
    t.add_argument("--alpha", type=float, default=32)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--heldout", type=int, default=48, help="long-template examples held out (the last ones)")
    t.add_argument("--heldout-short", type=int, default=24, help="short-template (and greedy) examples held out (the last ones)")
    t.add_argument("--save-every", type=int, default=50)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--greedy-share", type=float, default=0.0,
                   help="share of each batch drawn from the greedy answers (0: uniform over all data)")
    t.add_argument("--self-share", type=float, default=0.0,
                   help="share of each batch drawn from the diffusion model's own answers (gen-self); the rest: "
                        "--greedy-share greedy answers, then the sampled ones")
    t.add_argument("--sampled-only", action="store_true",
                   help="draw batches only from SmolLM2's sampled answers (no greedy, no self answers): "
                        "diverse text (run sd5, which made smol-diffusion-div, said it as --self-share 0.001 --greedy-share 0)")
    t.add_argument("--resume", action="store_true", help="continue from the delta in --resume-from")
    t.add_argument("--resume-from", default=None, help="delta directory to continue from (default: the shipped one)")
    t.add_argument("--out", default=None, help="where the delta is saved (default: models/smol-diffusion)")
    t.add_argument("--certainty", type=float, default=0.0,
                   help="certainty-forcing distillation (dParallel): entropy weight on correctly predicted masked "
                        "tokens, with semi-AR complementary block masking (0: the LLaDA/Dream objective)")
    t.add_argument("--wrong-penalty", type=float, default=0.0,
                   help="with --certainty: weight of -log(1 - p_top) on masked tokens whose argmax is wrong")
    t.add_argument("--neighbour-penalty", type=float, default=0.0,
                   help="with --certainty: weight of -log(1 - p(neighbour's token)) for adjacent masked targets")
    t.add_argument("--repeat-penalty", type=float, default=0.0,
                   help="with --certainty: weight of the token-level unlikelihood on nearby tokens that are not the target")
    t.add_argument("--repeat-window", type=int, default=8, help="positions either side searched for --repeat-penalty")
    t.add_argument("--seq-penalty", type=float, default=0.0,
                   help="with --certainty: weight of the sequence-level unlikelihood on repeated n-grams of the model's "
                        "own decodes (training/data/loops*.pt, from gen-self --kind loops)")
    t.add_argument("--seq-rows", type=int, default=4, help="looping decodes per step for --seq-penalty")
    t.add_argument("--seq-ngram", type=int, default=5, help="n of the repeated n-grams --seq-penalty targets")
    t.add_argument("--cf-block", type=int, default=16, help="block length of the certainty-forcing masking")
    t.add_argument("--cf-temperature", type=float, default=0.5, help="temperature of the certainty-forcing entropy")
    t.add_argument("--cf-cut-share", type=float, default=0.0,
                   help="share of examples masked from a random cut of the block on (the left-to-right decoding state)")
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cmd == "train":
        if max(args.wrong_penalty, args.neighbour_penalty, args.repeat_penalty, args.seq_penalty) > 0 and args.certainty <= 0:
            ap.error("--wrong-penalty / --neighbour-penalty / --repeat-penalty / --seq-penalty are terms of the "
                     "certainty-forcing objective: give --certainty too")
        from engine.diffusion.smol import DELTA_DIR
        args.out = args.out or str(DELTA_DIR)
        args.resume_from = args.resume_from or str(DELTA_DIR)
    if args.cmd == "gen-self":
        from engine.diffusion.smol import DELTA_DIR
        args.delta = args.delta or str(DELTA_DIR)
    {"gen": cmd_gen, "gen-self": cmd_gen_self, "train": cmd_train, "interpolate": cmd_interpolate}[args.cmd](args)


if __name__ == "__main__":
    main()
