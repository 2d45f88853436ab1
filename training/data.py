"""Training data: the generated shards, held-out splits, and the masked batches of each objective."""
from __future__ import annotations

import random

import torch

from engine.diffusion.batched import padded_attention, padded_hidden, padded_positions  # noqa: F401 (one copy, the engine's)
from training.common import DATA


def load_data(prefix: str = "shard"):
    ex = []
    for p in sorted(DATA.glob(f"{prefix}*.pt")):
        ex += torch.load(p)
    return ex


def repeated_ngrams(answer, n: int, eos: int):
    """Welleck et al.'s sequence-level candidates: True at every token of an n-gram occurrence that already
    occurred earlier in the answer (up to its first EOS), e.g. the second and later copies of a looped
    sentence (all but its first n - 1 tokens when the loop starts mid-n-gram)."""
    end = next((i for i, t in enumerate(answer) if t == eos), len(answer))
    marks, seen = [False] * len(answer), set()
    for s in range(end - n + 1):
        g = tuple(answer[s:s + n])
        if g in seen:
            marks[s:s + n] = [True] * n
        seen.add(g)
    return marks


def loop_pool(loops, n: int, eos: int):
    """The decodes that repeat an earlier n-gram, each with its repeated_ngrams marks (computed once)."""
    pool = [(e, m) for e in loops for m in [repeated_ngrams(e["answer"], n, eos)] if any(m)]
    if not pool:
        raise ValueError(f"no decode repeats a {n}-gram")
    return pool


def make_batch_seq(pool, rng: random.Random, mask_id: int, pad_id: int, rows: int):
    """Rows for the sequence-level unlikelihood from a loop_pool: the model's own looping decodes, each cut
    at a random point up to 8 tokens before a drawn repeated token (the text before the cut clean, as
    committed, so the earlier copy is in view), the answer from the cut on masked with probability
    r ~ U(0.5, 1) (the drawn token always). Targets (Y != -100): the masked tokens that repeat an earlier
    n-gram: the loop's continuation, whose probability the term lowers."""
    seqs, targets = [], []
    for e, marks in rng.sample(pool, min(rows, len(pool))):
        P, ids = len(e["prompt"]), e["prompt"] + e["answer"]
        m = rng.choice([j for j, v in enumerate(marks) if v])
        c = rng.randint(max(0, m - 8), m)
        r = rng.uniform(0.5, 1.0)
        x, tgt = list(ids), [-100] * len(ids)
        for j in range(c, len(e["answer"])):
            if j == m or rng.random() < r:
                x[P + j] = mask_id
                if marks[j]:
                    tgt[P + j] = ids[P + j]
        seqs.append(x)
        targets.append(tgt)
    return left_pad(seqs, targets, pad_id)


def split_heldout(examples, n_held: dict):
    """Hold out the last n_held[kind] examples of each kind (earlier data has no "kind": it is "long"),
    so adding data of a new kind leaves the held-out sets of the earlier kinds as they were."""
    kinds = [e.get("kind", "long") for e in examples]
    held = set()
    for kind, n in n_held.items():
        idx = [i for i, k in enumerate(kinds) if k == kind]
        held.update(idx[max(len(idx) - n, 0):])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def left_pad(seqs, targets, pad_id: int):
    """Left-pad rows with pad_id so every answer ends at the same column: (X, Y, A), A = real tokens
    (padded_hidden keeps attention off the pads); Y is -100 outside the targets."""
    width = max(map(len, seqs))
    X = torch.full((len(seqs), width), pad_id)
    Y = torch.full((len(seqs), width), -100)
    A = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (x, y) in enumerate(zip(seqs, targets)):
        X[i, width - len(x):] = torch.tensor(x)
        Y[i, width - len(y):] = torch.tensor(y)
        A[i, width - len(x):] = True
    return X, Y, A


def make_batch(examples, rng: random.Random, mask_id: int, pad_id: int):
    """Prompt (never masked) + answer masked at ratio t per example; left-padded with pad_id."""
    seqs, targets, weights = [], [], []
    for e in examples:
        t = rng.uniform(0.02, 1.0)
        ids = e["prompt"] + e["answer"]
        x = list(ids)
        tgt = [-100] * len(ids)
        n_masked = 0
        for j in range(len(e["prompt"]), len(ids)):
            if rng.random() < t:
                x[j], tgt[j] = mask_id, ids[j]
                n_masked += 1
        if n_masked == 0:  # always at least one target
            j = rng.randrange(len(e["prompt"]), len(ids))
            x[j], tgt[j] = mask_id, ids[j]
        seqs.append(x)
        targets.append(tgt)
        weights.append(1.0 / t)
    return (*left_pad(seqs, targets, pad_id), torch.tensor(weights))


def make_batch_cf(examples, rng: random.Random, mask_id: int, pad_id: int, block: int = 16, ratio: float = 0.5,
                  cut_share: float = 0.0):
    """Semi-autoregressive complementary masking (dParallel's certainty-forcing layout): per example a
    block k of the answer is drawn; blocks before it are clean (committed), blocks after it are all
    [MASK] (as at inference), and the block itself is masked at `ratio` in one row and with the
    complementary mask in a second row, so every token of the block is a target once. With probability
    `cut_share` an example instead gives two "prefix-cut" rows, the state a left-to-right threshold
    decoder is in: the block is clean up to a random cut and [MASK] from it on."""
    seqs, targets = [], []
    for e in examples:
        P, ids = len(e["prompt"]), e["prompt"] + e["answer"]
        k = rng.randrange(len(e["answer"]) // block)
        lo, hi = P + k * block, P + (k + 1) * block
        if rng.random() < cut_share:
            rows = [[j >= c for j in range(block)] for c in (rng.randrange(block), rng.randrange(block))]
        else:
            m = [rng.random() < ratio for _ in range(lo, hi)]
            rows = [m, [not v for v in m]]
        for row in rows:
            x, tgt = list(ids), [-100] * len(ids)
            for j, masked in zip(range(lo, hi), row):
                if masked:
                    x[j], tgt[j] = mask_id, ids[j]
            x[hi:] = [mask_id] * (len(ids) - hi)
            seqs.append(x)
            targets.append(tgt)
    return left_pad(seqs, targets, pad_id)


def batch_pools(train):
    """The training examples by source: SmolLM2's greedy answers, the diffusion model's own answers
    (gen-self), SmolLM2's sampled answers (long and one-line), and everything but self (= the training
    set before gen-self data existed)."""
    kind = [e.get("kind", "long") for e in train]
    return {"greedy": [e for e, k in zip(train, kind) if k == "greedy"],
            "self": [e for e, k in zip(train, kind) if k == "self"],
            "sampled": [e for e, k in zip(train, kind) if k not in ("greedy", "self")],
            "base": [e for e, k in zip(train, kind) if k != "self"]}


def draw_batch(rng, pools, args):
    """One batch: --sampled-only draws only sampled answers; else each slot is a self answer with
    probability --self-share, a greedy one with --greedy-share, a sampled one otherwise; with both
    shares 0, uniform over all but the self answers."""
    if args.sampled_only:
        return rng.sample(pools["sampled"], args.batch)
    if args.self_share > 0 and pools["self"]:
        u = [rng.random() for _ in range(args.batch)]
        n_s = sum(v < args.self_share for v in u)
        n_g = sum(args.self_share <= v < args.self_share + args.greedy_share for v in u)
        return (rng.sample(pools["self"], n_s) + rng.sample(pools["greedy"], n_g)
                + rng.sample(pools["sampled"], args.batch - n_s - n_g))
    if args.greedy_share > 0 and pools["greedy"]:
        n_g = sum(rng.random() < args.greedy_share for _ in range(args.batch))
        return rng.sample(pools["greedy"], n_g) + rng.sample(pools["sampled"], args.batch - n_g)
    return rng.sample(pools["base"], args.batch)
