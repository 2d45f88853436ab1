"""Training data generation: SmolLM2's own answers (gen) and the diffusion model's (gen-self, a batched
low_confidence / threshold decoder with a prefix KV cache)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from training.common import DATA, GEN_LEN, load_base, log
from training.data import padded_attention, padded_hidden, padded_positions


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
