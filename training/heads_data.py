"""Training data for the draft heads (issue 25): SmolLM2-135M-Instruct's own greedy answers to the training
instructions, with the target's final hidden state (after its final norm: what the LM head reads, what
`verify.Rows.hidden` holds at decode time) at every position.

Self-distillation, as the EAGLE authors recommend: the heads learn to predict what this target says, in the
regime they are used in (greedy chat answers). A batched greedy decode with a KV cache yields the features for
free (each step's last hidden state); no second pass over the text is needed.

Each example: {"ids": prompt + answer token ids, "prompt_len": int, "feats": float16 [len(ids) - 1, hidden]}
(feats[t] is the feature at position t, which predicts ids[t + 1]). Shards: training/data/heads*.pt.
"""
from __future__ import annotations

import random
import time

import torch
from transformers import DynamicCache

from training.common import DATA, load_base, log

GEN_LEN_HEADS = 128


@torch.no_grad()
def greedy_with_features(lm, prompts_enc: list[list[int]], eos: int, new: int):
    """A batch of left-padded greedy decodes. Returns per row (answer ids up to and including the first EOS,
    features [prompt_len + len(answer) - 1, hidden] as float16)."""
    B, width = len(prompts_enc), max(map(len, prompts_enc))
    ids = torch.full((B, width), eos)
    att = torch.zeros((B, width), dtype=torch.long)
    for i, e in enumerate(prompts_enc):
        ids[i, width - len(e):] = torch.tensor(e)
        att[i, width - len(e):] = 1
    pos = (att.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache()
    body, head = lm.model.model, lm.model.get_output_embeddings()
    h = body(input_ids=ids, attention_mask=att, position_ids=pos, past_key_values=cache, use_cache=True).last_hidden_state
    feats = [h.half()]
    toks = []
    nxt = head(h[:, -1]).argmax(-1)
    done = torch.zeros(B, dtype=torch.bool)
    for step in range(new):
        toks.append(nxt)
        done |= nxt == eos
        if bool(done.all()) or step == new - 1:
            break
        att = torch.cat([att, torch.ones((B, 1), dtype=torch.long)], 1)
        p = pos[:, -1:] + 1
        pos = torch.cat([pos, p], 1)
        h = body(input_ids=nxt[:, None], attention_mask=att, position_ids=p, past_key_values=cache,
                 use_cache=True).last_hidden_state
        feats.append(h.half())
        nxt = head(h[:, -1]).argmax(-1)
    F, T = torch.cat(feats, 1), torch.stack(toks, 1)
    out = []
    for i, e in enumerate(prompts_enc):
        ans = T[i].tolist()
        if eos in ans:
            ans = ans[:ans.index(eos) + 1]
        n = len(e) + len(ans) - 1           # features of positions 0 .. n-1 predict ids 1 .. n
        out.append((ans, F[i, width - len(e):width - len(e) + n].clone()))
    return out


def cmd_gen_heads(args):
    from training.prompts import TEMPLATES, TRAIN_TOPICS, prompts
    torch.set_num_threads(args.threads)
    lm = load_base()
    eos = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    todo = prompts(TRAIN_TOPICS, TEMPLATES)
    random.Random(args.seed).shuffle(todo)
    todo = todo[:args.n]
    DATA.mkdir(parents=True, exist_ok=True)
    done = sum(len(torch.load(p)) for p in sorted(DATA.glob("heads*.pt")))    # resumable: shards already made
    shard, t0, made, toks = len(list(DATA.glob("heads*.pt"))), time.time(), 0, 0
    for s in range(done, len(todo), args.batch):
        if (time.time() - t0) / 60 > args.minutes:
            break
        batch = todo[s:s + args.batch]
        enc = [lm.encode(p)[0].tolist() for p in batch]
        rows = greedy_with_features(lm, enc, eos, args.new)
        ex = [{"ids": e + a, "prompt_len": len(e), "feats": f} for e, (a, f) in zip(enc, rows)]
        torch.save(ex, DATA / f"heads{shard:03d}.pt")
        shard += 1
        made += len(ex)
        toks += sum(len(a) for a, _ in rows)
        print(f"gen-heads {done + made}/{len(todo)} {time.time() - t0:.0f}s {toks / (time.time() - t0):.0f} tok/s "
              f"e.g. {lm.tokenizer.decode(rows[0][0])[:60]!r}", flush=True)
    log({"stage": "gen-heads", "examples": made, "answer_tokens": toks, "seconds": round(time.time() - t0, 1),
         "seed": args.seed, "max_new": args.new, "decoding": "greedy", "threads": args.threads,
         "source": "SmolLM2-135M-Instruct greedy answers to training/prompts.py TRAIN_TOPICS x TEMPLATES "
                   "(chat template), with the target's final-norm hidden states"})


def load_heads_data():
    ex = []
    for p in sorted(DATA.glob("heads*.pt")):
        ex += torch.load(p)
    return ex
