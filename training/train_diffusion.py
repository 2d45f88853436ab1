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

  Certainty forcing (dParallel), which made models/smol-diffusion-cf from the default delta:
  semi-autoregressive block masking (blocks before a drawn block clean, blocks after it all [MASK],
  the block masked with complementary masks or from a random cut on), mean cross-entropy + weight x
  entropy of the correctly predicted masked tokens, on mostly greedy answers:
    .venv/bin/python -m training.train_diffusion train --resume --out models/smol-diffusion-cf --certainty 2 \
        --cf-temperature 1.0 --cf-cut-share 0.5 --greedy-share 0.7 --batch 4 --lr 4e-4 --minutes 55

  Sequence-level unlikelihood (Welleck et al. 2019) against the loops of one-block greedy decoding: the
  model decodes training instructions itself (gen-self --kind loops), the tokens of its answers that repeat
  an earlier n-gram are the negatives, and train --seq-penalty W adds W x mean -log(1 - p(token)) over them,
  masked, with the text before a cut near them in view (make_batch_seq):
    .venv/bin/python -m training.train_diffusion gen-self --delta DIR --kind loops --block 64 --threshold 0.9 --minutes 13
    .venv/bin/python -m training.train_diffusion train --resume --resume-from DIR --out OUT --certainty 2 \
        --wrong-penalty 1 --seq-penalty 1 --seq-ngram 5 --cf-block 64 --sampled-only ...
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "training" / "data"
LOG = ROOT / "training" / "train_log.jsonl"
GEN_LEN = 64


def log(entry: dict):
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry), flush=True)


def load_base():
    from engine import models
    lm = models.load(models.EMBEDDED, device="cpu")
    return lm


def cmd_gen(args):
    from training.prompts import SHORT_TEMPLATES, TEMPLATES, TRAIN_TOPICS, prompts
    torch.set_num_threads(args.threads)
    lm = load_base()
    tok = lm.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(args.seed)
    if args.greedy:  # every instruction once (long and short templates), SmolLM2's greedy answer
        all_prompts = prompts(TRAIN_TOPICS, TEMPLATES + SHORT_TEMPLATES)
        rng.shuffle(all_prompts)
        args.n = min(args.n, len(all_prompts))
        kind = "greedy"
    else:
        all_prompts = prompts(TRAIN_TOPICS, SHORT_TEMPLATES if args.templates == "short" else TEMPLATES)
        kind = args.templates
    DATA.mkdir(parents=True, exist_ok=True)
    shard = 0
    while (DATA / f"shard{shard:03d}.pt").exists():
        shard += 1
    made, t0 = 0, time.time()
    torch.manual_seed(args.seed + shard)
    while made < args.n:
        if args.greedy:
            batch = all_prompts[made:made + args.batch]
        else:
            batch = [rng.choice(all_prompts) for _ in range(args.batch)]
        enc = [lm.encode(p)[0].tolist() for p in batch]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), eos)
        att = torch.zeros_like(ids)
        for i, e in enumerate(enc):  # left padding
            ids[i, width - len(e):] = torch.tensor(e)
            att[i, width - len(e):] = 1
        with torch.inference_mode():
            out = lm.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=GEN_LEN, pad_token_id=eos,
                                    eos_token_id=eos, **({"do_sample": False} if args.greedy else
                                                         {"do_sample": True, "temperature": args.temperature,
                                                          "top_p": 0.95}))
        examples = []
        for i, e in enumerate(enc):
            ans = out[i, width:].tolist()
            if eos in ans:
                ans = ans[:ans.index(eos) + 1]
            ans = (ans + [eos] * GEN_LEN)[:GEN_LEN]
            examples.append({"prompt": e, "answer": ans, "kind": kind})
        torch.save(examples, DATA / f"shard{shard:03d}.pt")
        shard += 1
        made += len(examples)
        print(f"gen {made}/{args.n} {time.time() - t0:.0f}s  e.g. {tok.decode(examples[0]['answer'])[:80]!r}",
              flush=True)
    if args.greedy:
        how = {"decoding": "greedy", "templates": "TEMPLATES + SHORT_TEMPLATES, each instruction once",
               "source": "SmolLM2-135M-Instruct greedy answers to training/prompts.py TRAIN_TOPICS x "
                         "(TEMPLATES + SHORT_TEMPLATES) (chat template)"}
    else:
        how = {"temperature": args.temperature, "top_p": 0.95, "templates": args.templates,
               "source": "SmolLM2-135M-Instruct answers to training/prompts.py TRAIN_TOPICS x "
                         + ("SHORT_TEMPLATES" if args.templates == "short" else "TEMPLATES") + " (chat template)"}
    log({"stage": "gen", "examples": made, "seconds": round(time.time() - t0, 1), "seed": args.seed, **how})


@torch.no_grad()
def self_decode(model, prompts_enc, mask_id: int, eos: int, block: int = 16, gen_len: int = GEN_LEN,
                prefix_cache: bool = True, threshold: float | None = None):
    """The diffusion model answers a batch of prompts itself: greedy low_confidence, one token per step,
    semi-autoregressive blocks, the engine's stop rule (an EOS committed with nothing masked before it;
    the rest is EOS padding). Returns the answers (gen_len ids each). dParallel distils a model on its
    own trajectories like these, so certainty is learnt on text the model already agrees with.
    prefix_cache: Fast-dLLM's approximation (keys/values of the prompt and committed blocks computed
    once per block, the block and what follows it recomputed every step), ~2x faster here.
    threshold: Fast-dLLM's rule instead of one token per step: every masked position of the block whose
    confidence is >= threshold is committed, and always the most confident one."""
    from transformers import DynamicCache
    from engine import kvcache
    emb = model.get_input_embeddings().weight
    B, width = len(prompts_enc), max(map(len, prompts_enc))
    L = width + gen_len
    X = torch.full((B, L), eos)
    A = torch.zeros((B, L), dtype=torch.bool)
    for i, e in enumerate(prompts_enc):
        X[i, width - len(e):width] = torch.tensor(e)
        A[i, width - len(e):] = True
    X[:, width:] = mask_id
    pos_all = padded_positions(A)
    ar = torch.arange(gen_len)
    active = torch.arange(B)
    for k in range(gen_len // block):
        if len(active) == 0:  # every answer has ended
            break
        lo, hi = width + k * block, width + (k + 1) * block
        cache, start = None, 0
        if prefix_cache:  # keys/values of positions < lo - 1 (the hidden state at lo-1 predicts lo)
            cache = DynamicCache()
            model.model(input_ids=X[active], attention_mask=padded_attention(A[active]),
                        position_ids=pos_all[active], past_key_values=cache, use_cache=True)
            start = lo - 1
            kvcache.crop(cache, start)
            keep = active
        for _ in range(block):  # >= 1 commit per step: at most `block` steps
            x, a = X[active], A[active]
            if cache is not None:
                if len(active) < len(keep):  # finished rows leave the batch: drop their cache rows
                    sel = torch.nonzero(torch.isin(keep, active)).squeeze(1)
                    cache.batch_select_indices(sel)
                    keep = active
                h = model.model(input_ids=x[:, start:], attention_mask=padded_attention(a, start),
                                position_ids=pos_all[active, start:],
                                past_key_values=cache, use_cache=True).last_hidden_state
                kvcache.crop(cache, start)
                h = h[:, lo - 1 - start:hi - 1 - start]
            else:
                h = padded_hidden(model, emb[x], a)[:, lo - 1:hi - 1]  # shift: i-1 predicts i
            logits = model.lm_head(h).float()
            logits[..., mask_id] = -1e4
            conf, tok = logits.softmax(-1).max(-1)
            masked = x[:, lo:hi] == mask_id
            conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
            j = conf.argmax(-1)
            commit = torch.zeros_like(masked)
            commit[torch.arange(len(active)), j] = True
            if threshold is not None:
                commit |= masked & (conf >= threshold)
            X[active, lo:hi] = torch.where(commit, tok, X[active, lo:hi])
            ans = X[active, width:]
            first_mask = torch.where(ans == mask_id, ar, gen_len).min(-1).values
            first_eos = torch.where(ans == eos, ar, gen_len).min(-1).values
            finished = first_eos < first_mask
            for r, fe in zip(active[finished].tolist(), first_eos[finished].tolist()):
                X[r, width + fe:] = eos
            active = active[~finished]
            if len(active) == 0 or not bool((X[active, lo:hi] == mask_id).any()):
                break
    assert not bool((X[:, width:] == mask_id).any())
    return [X[i, width:].tolist() for i in range(B)]


def cmd_gen_self(args):
    """Self-distillation data: the diffusion model (a delta) answers every training instruction."""
    from engine.diffusion.smol import MASK_ID, apply_delta
    from training.prompts import SHORT_TEMPLATES, TEMPLATES, TRAIN_TOPICS, prompts
    torch.set_num_threads(args.threads)
    lm = load_base()
    meta = apply_delta(lm.model, Path(args.delta), merge=True)
    lm.model.eval()
    tok = lm.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(args.seed)
    all_prompts = prompts(TRAIN_TOPICS, TEMPLATES + SHORT_TEMPLATES)
    rng.shuffle(all_prompts)
    n = min(args.start + args.n, len(all_prompts))
    DATA.mkdir(parents=True, exist_ok=True)
    # "loops" decodes are the sequence-level unlikelihood's negatives, never training targets: their own files
    prefix = "shard" if args.kind == "self" else "loops"
    shard = 0
    while (DATA / f"{prefix}{shard:03d}.pt").exists():
        shard += 1
    made, t0 = args.start, time.time()
    while made < n and time.time() - t0 < args.minutes * 60:
        batch = all_prompts[made:made + args.batch]
        enc = [lm.encode(p)[0].tolist() for p in batch]
        answers = self_decode(lm.model, enc, MASK_ID, eos, block=args.block, prefix_cache=not args.no_cache,
                              threshold=args.threshold)
        examples = [{"prompt": e, "answer": a, "kind": args.kind} for e, a in zip(enc, answers)]
        torch.save(examples, DATA / f"{prefix}{shard:03d}.pt")
        shard += 1
        made += len(examples)
        print(f"gen-self {made}/{n} {time.time() - t0:.0f}s  e.g. {tok.decode(answers[0])[:100]!r}", flush=True)
    log({"stage": "gen-self", "examples": made - args.start, "start": args.start, "seconds": round(time.time() - t0, 1), "seed": args.seed,
         "kind": args.kind,
         "decoding": (f"diffusion threshold {args.threshold}" if args.threshold is not None
                      else "diffusion low_confidence, 1 token/step") + f", block {args.block}, greedy, stop at EOS"
                     + ("" if args.no_cache else ", prefix KV cache"),
         "delta": str(args.delta), "delta_steps": meta.get("steps"),
         "source": "the diffusion model's own answers to training/prompts.py TRAIN_TOPICS x "
                   "(TEMPLATES + SHORT_TEMPLATES), each instruction once (shuffled, seed)"})


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


def padded_attention(A, start: int = 0):
    """4D bidirectional mask over left-padded rows (A: real tokens) for the queries from `start` on:
    real tokens see every real token, pads see only themselves."""
    att = A[:, None, start:, None] & A[:, None, None, :]
    return att | torch.eye(A.shape[1], dtype=torch.bool)[None, None, start:]


def padded_positions(A):
    return (A.long().cumsum(1) - 1).clamp(min=0)


def padded_hidden(model, E, A):
    """Bidirectional forward over left-padded rows (A: real tokens); pads attend only to themselves."""
    return model.model(inputs_embeds=E, attention_mask=padded_attention(A),
                       position_ids=padded_positions(A)).last_hidden_state


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


def certainty_forcing_loss(logits, targets, weight: float, temperature: float = 0.5):
    """Mean cross-entropy over the masked targets + weight x mean entropy (at `temperature`) of the
    positions whose argmax is already the target: confident where the model is right (dParallel).
    Temperature 0.5 is dParallel's; 1.0 sharpens the very probabilities a threshold rule reads."""
    ce = torch.nn.functional.cross_entropy(logits, targets)
    right = logits.argmax(-1) == targets
    if not right.any():
        return ce, ce, torch.zeros(())
    logp = torch.log_softmax(logits[right] / temperature, -1)
    ent = -(logp.exp() * logp).sum(-1).mean()
    return ce + weight * ent, ce, ent


def unlikelihood(p):
    """-log(1 - p): the unlikelihood of a probability the model should not give (clamped below 1)."""
    return -torch.log1p(-p.clamp(max=1 - 1e-6))


def confident_error_penalty(logits, targets):
    """Mean over the masked positions whose argmax is wrong of -log(1 - p(argmax)) at T = 1: an
    unlikelihood term on confident mistakes. A threshold rule commits whatever clears 0.9, so a wrong
    token at 0.9 (e.g. the neighbour's token one position off, "like like") is what costs quality;
    certainty forcing alone sharpens right predictions and lets wrong ones sharpen with them.
    Zero when every argmax is right."""
    wrong = logits.argmax(-1) != targets
    if not wrong.any():
        return torch.zeros(())
    p_top = torch.softmax(logits[wrong], -1).max(-1).values
    return unlikelihood(p_top).mean()


def neighbour_penalty(logits, Yt, sel):
    """Unlikelihood on the off-by-one mistake of parallel decoding ("type type", "ice ice"): for each
    masked target whose left or right neighbour is also a masked target with a different token,
    -log(1 - p(neighbour's token)), averaged over those pairs. logits: rows for Yt[sel] in row-major
    order (as lm_head(h[sel])); Yt: targets, -100 where there is none. Zero when no pair exists."""
    left = torch.full_like(Yt, -100)
    left[:, 1:] = Yt[:, :-1]
    right = torch.full_like(Yt, -100)
    right[:, :-1] = Yt[:, 1:]
    y = Yt[sel]
    logp = torch.log_softmax(logits, -1)
    terms = []
    for yn in (left[sel], right[sel]):
        ok = (yn != -100) & (yn != y)
        if ok.any():
            p = logp[ok].gather(1, yn[ok][:, None]).squeeze(1).exp()
            terms.append(unlikelihood(p))
    return torch.cat(terms).mean() if terms else torch.zeros(())


def repeat_unlikelihood(logits, Yt, Xt, At, sel, window: int, mask_id: int):
    """Token-level unlikelihood (Welleck et al. 2019) against copying, for a bidirectional model: for
    each masked target, the candidates are the distinct tokens of the row's text (the target where the
    position is masked, the input otherwise; not [MASK], not padding) within `window` positions either
    side, minus the target itself; the term is the sum over candidates of -log(1 - p(candidate)),
    averaged over the targets. A greedy parallel decoder loops ("is a cat is a cat") when repeating a
    nearby token is its most confident move; this lowers exactly those probabilities where the text
    does not repeat. logits: rows for Yt[sel] in row-major order; Xt / At: inputs and real-token mask
    aligned with Yt. Zero when no target has a candidate."""
    G = torch.where(Yt != -100, Yt, Xt)
    ok_tok = At & (G != mask_id)
    rows, cols = sel.nonzero(as_tuple=True)
    y = Yt[rows, cols]
    L = G.shape[1]
    cand, ok = [], []
    for d in [d for d in range(-window, window + 1) if d != 0]:
        c = cols + d
        cc = c.clamp(0, L - 1)
        tok = G[rows, cc]
        cand.append(tok)
        ok.append((c >= 0) & (c < L) & ok_tok[rows, cc] & (tok != y))
    cand, ok = torch.stack(cand, 1), torch.stack(ok, 1)
    # each distinct token once: drop a candidate equal to an earlier kept one
    same = cand[:, :, None] == cand[:, None, :]
    earlier = torch.ones(same.shape[1:], dtype=torch.bool).tril(-1)
    ok = ok & ~(same & earlier & ok[:, None, :]).any(-1)
    if not ok.any():
        return torch.zeros(())
    p = torch.softmax(logits, -1).gather(1, torch.where(ok, cand, 0))
    terms = unlikelihood(p) * ok
    return terms.sum(1).mean()


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


def objective_text(args) -> str:
    """The certainty-forcing objective with its weights, as logged at train-start."""
    text = ("certainty forcing (semi-AR complementary block masking, block %d, ratio 0.5; mean CE + %g x entropy "
            "at T=%g of correctly predicted masked tokens; prefix-cut share %g)"
            % (args.cf_block, args.certainty, args.cf_temperature, args.cf_cut_share))
    if args.wrong_penalty > 0:
        text += "; + %g x -log(1 - p_top) of wrongly predicted masked tokens" % args.wrong_penalty
    if args.neighbour_penalty > 0:
        text += "; + %g x -log(1 - p(neighbour's token)) for adjacent masked targets" % args.neighbour_penalty
    if args.repeat_penalty > 0:
        text += ("; + %g x sum of -log(1 - p(c)) over the other tokens c within %d positions of each masked target "
                 "(token-level unlikelihood against copying)" % (args.repeat_penalty, args.repeat_window))
    if args.seq_penalty > 0:
        text += ("; + %g x mean -log(1 - p(token)) over the masked tokens of %d of the model's own decodes per step that "
                 "repeat an earlier %d-gram (sequence-level unlikelihood)" % (args.seq_penalty, args.seq_rows, args.seq_ngram))
    return text


def cmd_train(args):
    from engine.diffusion.smol import MASK_ID, add_lora, save_delta
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    lm = load_base()
    model = lm.model
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings().weight
    pad_id = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    resumed = None
    if args.resume:  # continue from the shipped delta (LoRA + mask row), same r / alpha
        from engine.diffusion.smol import apply_delta
        resumed = apply_delta(model, Path(args.resume_from), merge=False)
        args.r, args.alpha = resumed["lora_r"], resumed["lora_alpha"]
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
    else:
        lora = add_lora(model, args.r, args.alpha)
        with torch.no_grad():  # start the mask row at the mean embedding
            emb[MASK_ID] = emb.mean(0)
    for p in lora:
        p.requires_grad_(True)
    mask_row = torch.nn.Parameter(emb[MASK_ID].detach().clone())
    opt = torch.optim.AdamW([{"params": lora, "lr": args.lr}, {"params": [mask_row], "lr": args.lr}],
                            weight_decay=0.0)
    prior_steps = (resumed or {}).get("steps", 0)
    prior_seconds = (resumed or {}).get("train_seconds", 0)
    examples = load_data()
    train, heldout = split_heldout(examples, {"long": args.heldout, "short": args.heldout_short,
                                              "greedy": args.heldout_short})
    pools = batch_pools(train)
    loops, seq_pool = [], []
    if args.seq_penalty > 0:
        loops = load_data("loops")
        try:
            seq_pool = loop_pool(loops, args.seq_ngram, pad_id)
        except ValueError:
            raise SystemExit(f"--seq-penalty needs decodes that repeat a {args.seq_ngram}-gram in {DATA}/loops*.pt "
                             "(make them with gen-self --kind loops)")
    held_by_kind = {k: [e for e in heldout if e.get("kind", "long") == k] for k in ("long", "short", "greedy")}
    log({"stage": "train-start", "examples": len(train), "heldout": len(heldout),
         "by_kind": {k: sum(e.get("kind", "long") == k for e in train) for k in ("long", "short", "greedy", "self")},
         "greedy_share": args.greedy_share, "self_share": args.self_share, "sampled_only": args.sampled_only,
         "seed": args.seed,
         "lr": args.lr, "lora_r": args.r, "lora_alpha": args.alpha, "batch": args.batch, "threads": args.threads,
         "minutes": args.minutes, "data": "training/data (SmolLM2-135M-Instruct answers, see gen stage)",
         "resumed_from_steps": prior_steps, "out": str(args.out),
         **({"loops": len(loops), "loops_repeating": len(seq_pool)} if loops else {}),
         **({"objective": objective_text(args)} if args.certainty > 0 else {}), "lr_schedule": "20-step warmup, linear decay to 10% over --minutes"})
    meta = {"base": "smollm2-135m-instruct", "mask_id": MASK_ID, "shift": 1, "bidirectional": True,
            "lora_r": args.r, "lora_alpha": args.alpha, "gen_length": GEN_LEN, "seed": args.seed}
    lm_head = model.lm_head
    t0, step, best = time.time(), 0, float("inf")
    emas: dict[str, float] = {}  # running averages of the loss terms (printed every 10 steps)

    def track(name: str, value: float):
        emas[name] = value if name not in emas else 0.95 * emas[name] + 0.05 * value

    def target_logits(X, Y, A):
        """Bidirectional forward (the mask row a separate trainable parameter, fed as inputs_embeds), shifted
        (hidden at i-1 predicts token i): (logits at the targets, [MASK] never predicted; Yt; sel = Yt != -100)."""
        E = emb[X].detach()
        E = torch.where((X == MASK_ID)[..., None], mask_row.expand_as(E), E)
        h, Yt = padded_hidden(model, E, A)[:, :-1], Y[:, 1:]
        sel = Yt != -100
        logits = lm_head(h[sel]).float()
        logits[:, MASK_ID] = -1e4
        return logits, Yt, sel
    while time.time() - t0 < args.minutes * 60 and step < args.max_steps:
        batch = draw_batch(rng, pools, args)
        if args.certainty > 0:
            X, Y, A = make_batch_cf(batch, rng, MASK_ID, pad_id, block=args.cf_block, cut_share=args.cf_cut_share)
        else:
            X, Y, A, W = make_batch(batch, rng, MASK_ID, pad_id)
        frac = (time.time() - t0) / (args.minutes * 60)
        lr = args.lr * min(1.0, (step + 1) / 20) * max(0.1, 1.0 - 0.9 * frac)
        for g in opt.param_groups:
            g["lr"] = lr
        logits, Yt, sel = target_logits(X, Y, A)
        if args.certainty > 0:
            loss, ce, ent = certainty_forcing_loss(logits, Yt[sel], args.certainty, args.cf_temperature)
            track("entropy", ent.item())
            if args.wrong_penalty > 0:
                pen = confident_error_penalty(logits, Yt[sel])
                loss = loss + args.wrong_penalty * pen
                track("wrong_penalty", pen.item())
            if args.neighbour_penalty > 0:
                nb = neighbour_penalty(logits, Yt, sel)
                loss = loss + args.neighbour_penalty * nb
                track("neighbour_penalty", nb.item())
            if args.repeat_penalty > 0:
                rp = repeat_unlikelihood(logits, Yt, X[:, 1:], A[:, 1:], sel, args.repeat_window, MASK_ID)
                loss = loss + args.repeat_penalty * rp
                track("repeat_penalty", rp.item())
        else:
            ce = torch.nn.functional.cross_entropy(logits, Yt[sel], reduction="none")
            rows = sel.nonzero()[:, 0]
            loss = (ce * W[rows]).sum() / (X.shape[0] * GEN_LEN)
        if args.seq_penalty > 0:  # sequence-level unlikelihood on the model's own loops
            ls, Yst, sels = target_logits(*make_batch_seq(seq_pool, rng, MASK_ID, pad_id, args.seq_rows))
            ps = torch.softmax(ls, -1).gather(1, Yst[sels][:, None]).squeeze(1)
            sq = unlikelihood(ps).mean()
            loss = loss + args.seq_penalty * sq
            track("seq_penalty", sq.item())
            track("p_loop", ps.mean().item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora + [mask_row], 1.0)
        opt.step()
        step += 1
        track("ce", ce.mean().item())
        if step % 10 == 0:
            print(f"step {step} {time.time() - t0:.0f}s loss {loss.item():.3f} "
                  + " ".join(f"{k}_ema {v:.3f}" for k, v in emas.items()), flush=True)
        if step % args.save_every == 0 or time.time() - t0 >= args.minutes * 60:
            with torch.no_grad():
                emb[MASK_ID] = mask_row
            long_h = held_by_kind["long"]
            ev = evaluate(model, long_h, rng_seed=123, mask_id=MASK_ID, pad_id=pad_id)  # same set as earlier runs
            tot = ev["heldout_ce"] * len(long_h)
            for kind in ("short", "greedy"):
                hk = held_by_kind[kind]
                if hk:
                    evk = evaluate(model, hk, rng_seed=123, mask_id=MASK_ID, pad_id=pad_id)
                    ev.update({f"{k}_{kind}": v for k, v in evk.items()})
                    tot += evk["heldout_ce"] * len(hk)
            ev["heldout_ce_all"] = round(tot / len(heldout), 4)  # checkpoint selection: every held-out set
            if held_by_kind["greedy"]:  # the left-to-right decoder's state: how confident ahead, how often right
                ev.update(evaluate_ahead(model, held_by_kind["greedy"], MASK_ID, pad_id))
            entry = {"stage": "train", "step": step, "total_steps": prior_steps + step,
                     "seconds": round(time.time() - t0, 1), "lr": round(lr, 6), "ce_ema": round(emas["ce"], 4), **ev}
            # certainty forcing trades held-out cross-entropy for confidence by design: keep the latest
            # checkpoint (benchmarks/diffusion.py decides whether it ships); otherwise the best one
            if ev["heldout_ce_all"] < best or args.certainty > 0:
                best = min(best, ev["heldout_ce_all"])
                save_delta(model, Path(args.out), {**meta, "steps": prior_steps + step,
                                              "train_seconds": prior_seconds + round(time.time() - t0),
                                              "examples": len(train), **ev})
                entry["saved"] = True
            log(entry)
            model.train()
    log({"stage": "train-end", "steps": step, "seconds": round(time.time() - t0, 1), "best_heldout_ce": best})


@torch.no_grad()
def evaluate_ahead(model, heldout, mask_id, eos, rng_seed: int = 321, cuts: int = 4, depth: int = 3,
                   threshold: float = 0.9):
    """The state a left-to-right threshold decoder is in, on held-out answers: the answer clean up to a cut c
    drawn before its first EOS, [MASK] from c on. Per offset d = 0..depth-1 (0: the next token, as an AR model
    predicts it; 1: the one after it, read from a [MASK]'s hidden state; ...): the share of positions c + d whose
    top prediction clears `threshold` and the share of those that are right. Offsets >= 1 are where a threshold
    rule finds parallelism inside the answer, so this is the number certainty forcing must raise."""
    from engine.diffusion.smol import diffusion_logits
    model.eval()
    rng = random.Random(rng_seed)
    sure, right = [0] * depth, [0] * depth
    n = 0
    for e in heldout:
        ans = e["answer"]
        end = next((i for i, t in enumerate(ans) if t == eos), len(ans))
        if end < depth:
            continue
        P = len(e["prompt"])
        cs = [rng.randrange(end - depth + 1) for _ in range(cuts)]
        x = torch.tensor([e["prompt"] + ans[:c] + [mask_id] * (len(ans) - c) for c in cs])  # one forward per example
        logits = diffusion_logits(model, x).float()
        for row, c in enumerate(cs):
            lg = logits[row, P + c:P + c + depth]
            lg[:, mask_id] = -1e4
            conf, tok = lg.softmax(-1).max(-1)
            for d in range(depth):
                if conf[d] >= threshold:
                    sure[d] += 1
                    right[d] += int(tok[d] == ans[c + d])
            n += 1
    out = {}
    for d in range(depth):
        out[f"ahead{d}_conf>={threshold:g}"] = round(sure[d] / max(n, 1), 4)
        out[f"ahead{d}_acc_if_conf"] = round(right[d] / max(sure[d], 1), 4)
    return out


@torch.no_grad()
def evaluate(model, heldout, rng_seed, mask_id, pad_id, ratio=0.5):
    from engine.diffusion.smol import diffusion_logits
    model.eval()
    rng = random.Random(rng_seed)
    tot, correct, n, sure, sure_right = 0.0, 0, 0, 0, 0
    for e in heldout:
        ids = torch.tensor([e["prompt"] + e["answer"]])
        x = ids.clone()
        P = len(e["prompt"])
        m = torch.zeros_like(ids, dtype=torch.bool)
        for j in range(P, ids.shape[1]):
            if rng.random() < ratio:
                m[0, j] = True
        x[m] = mask_id
        logits = diffusion_logits(model, x)[m].float()
        logits[:, mask_id] = -1e4
        tot += torch.nn.functional.cross_entropy(logits, ids[m], reduction="sum").item()
        right = logits.argmax(-1) == ids[m]
        conf90 = logits.softmax(-1).max(-1).values >= 0.9
        correct += right.sum().item()
        sure += conf90.sum().item()
        sure_right += (right & conf90).sum().item()
        n += int(m.sum())
    return {"heldout_ce": round(tot / max(n, 1), 4), "heldout_acc@0.5": round(correct / max(n, 1), 4),
            "heldout_conf>=0.9@0.5": round(sure / max(n, 1), 4),  # share of masked tokens the model is sure of
            "heldout_acc_if_conf>=0.9": round(sure_right / max(sure, 1), 4)}


def interpolate_deltas(src0, src1, a: float, out) -> Path:
    """Weight interpolation (WiSE-FT style) of two LoRA deltas trained from the same one: the merged
    update (1 - a) B0 A0 + a B1 A1 written exactly as one LoRA of twice the rank,
    [B0, B1] @ [(1 - a) A0; a A1] (same alpha / r scale), and the mask row interpolated."""
    from safetensors.torch import load_file

    from engine.diffusion.smol import write_delta
    src0, src1, out = Path(src0), Path(src1), Path(out)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"interpolation weight a={a} must be in [0, 1]")
    m0, m1 = (json.loads((d / "config.json").read_text()) for d in (src0, src1))
    if (m0["lora_r"], m0["lora_alpha"]) != (m1["lora_r"], m1["lora_alpha"]):
        raise ValueError("the two deltas need the same LoRA rank and alpha")
    d0, d1 = load_file(str(src0 / "delta.safetensors")), load_file(str(src1 / "delta.safetensors"))
    if set(d0) != set(d1):
        raise ValueError("the two deltas adapt different layers")
    state = {}
    for k in d0:
        x0, x1 = d0[k].float(), d1[k].float()
        if k.endswith("lora_A"):
            state[k] = torch.cat([(1 - a) * x0, a * x1], 0)
        elif k.endswith("lora_B"):
            state[k] = torch.cat([x0, x1], 1)
        else:  # the mask embedding row
            state[k] = (1 - a) * x0 + a * x1
    write_delta(state, out, {**m1, "lora_r": 2 * m0["lora_r"], "lora_alpha": 2 * m0["lora_alpha"],
                             "interpolation": {"from": str(src0), "to": str(src1), "a": a}})
    return out


def cmd_interpolate(args):
    out = interpolate_deltas(args.src0, args.src1, args.a, args.out)
    log({"stage": "interpolate", "from": args.src0, "to": args.src1, "a": args.a, "out": str(out)})


def main(argv=None):
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
                        "diverse text, as smol-diffusion-div was trained (run sd5)")
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
