"""Training data generation: SmolLM2's own answers (gen) and the diffusion model's (gen-self: the engine's
batched low_confidence / threshold decoder, engine.diffusion.batched, with a prefix KV cache)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from training.common import DATA, GEN_LEN, load_base, log


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


def self_decode(model, prompts_enc, mask_id: int, eos: int, block: int = 16, gen_len: int = GEN_LEN,
                prefix_cache: bool = True, threshold: float | None = None):
    """The diffusion model answers a batch of prompts itself: greedy low_confidence, one token per step,
    semi-autoregressive blocks, the engine's stop rule (an EOS committed with nothing masked before it;
    the rest is EOS padding). Returns the answers (gen_len ids each). dParallel distils a model on its
    own trajectories like these, so certainty is learnt on text the model already agrees with.
    prefix_cache: Fast-dLLM's approximation (keys/values of the prompt and committed blocks computed
    once per block, the block and what follows it recomputed every step), ~2x faster here.
    threshold: Fast-dLLM's rule instead of one token per step: every masked position of the block whose
    confidence is >= threshold is committed, and always the most confident one.
    The engine's batched decoder does it (engine.diffusion.batched.denoise_batch, the sampler's rules)."""
    from engine.diffusion.batched import denoise_batch
    rule, params = ("low_confidence", {}) if threshold is None else ("threshold", {"threshold": threshold})
    return denoise_batch(model, prompts_enc, mask_id, eos, gen_length=gen_len, block_length=block, rule=rule,
                         rule_params=params, prefix_cache=prefix_cache)


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
