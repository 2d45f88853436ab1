"""Training of the draft heads (issue 25) on training/heads_data.py's self-distillation data.

EAGLE head (EAGLE-1/2 architecture, trained with EAGLE-3's "training-time test"): at depth 1 the head reads the
target's true pairs (feature p, token p+1) and predicts feature p+1; at depth d > 1 it reads its own predicted
feature from depth d-1 with the next true token, attending to the true pairs before it and to its own chain --
exactly the attention the drafter gives a tree node -- so the head learns to draft on its own features, the
regime that sets acceptance beyond depth 1. Loss per depth d (weight 0.8^(d-1)): cross-entropy of the head's
token distribution (the target's frozen LM head over the draft vocabulary) against the target's distribution at
that position, plus a SmoothL1 regression of the predicted feature on the target's (features scaled by their
standard deviation).

Medusa heads: head i (0-based) reads the target's feature at p and predicts token p+2+i; each head is ResBlocks
followed by the target's frozen LM head (shared, so a head is 0.33 M parameters per ResBlock and the file stays
small). Cross-entropy against the greedy tokens.

Losses are over the answer positions; the draft vocabulary for the loss is the tokens seen in the data (the
softmax over ~10 k tokens instead of 49 k: the cost of the LM head is most of a step on this CPU).
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from engine.methods.speculative import heads as H
from engine.methods.speculative.trees import additive_mask
from training.common import DATA, ROOT, load_base, log
from training.heads_data import load_heads_data

MODELS = ROOT / "models"


def split(examples, held: int):
    return examples[:-held], examples[-held:]


def draft_vocab(examples) -> torch.Tensor:
    """Sorted ids of every token in the data (prompts and answers)."""
    seen = set()
    for e in examples:
        seen.update(e["ids"])
    return torch.tensor(sorted(seen))


class Readout:
    """The target's LM head restricted to the draft vocabulary, and the map token id -> row (-1: outside)."""

    def __init__(self, lm, vocab_ids: torch.Tensor):
        w = lm.model.get_output_embeddings().weight.detach()
        self.ids = vocab_ids
        self.w = w[vocab_ids].clone()
        self.row = torch.full((w.shape[0],), -1, dtype=torch.long)
        self.row[vocab_ids] = torch.arange(len(vocab_ids))
        self.full = w

    def __call__(self, g):
        return g @ self.w.T


def feature_scale(examples) -> float:
    xs = torch.cat([e["feats"][::7].float() for e in examples[:200]])
    return float(xs.std())


# ---- EAGLE ------------------------------------------------------------------------------------

def eagle_unroll(head, embed, f: torch.Tensor, ids: torch.Tensor, depth: int):
    """Training-time test over one sequence. f [N, h] target features (positions 0..N-1), ids [N+1].
    Returns per depth d = 1..depth the predicted features [M, h] (M = N - 1: base pairs p = 0..M-1; row p of
    depth d predicts the feature at p + d and the token at p + d + 1)."""
    N = f.shape[0]
    M = N - 1
    cache = DynamicCache()
    base = torch.arange(M)
    out, prev = [], f[:M]
    tril = torch.ones(M, M, dtype=torch.bool).tril()
    eye = torch.eye(M, dtype=torch.bool)
    for d in range(1, depth + 1):
        tok = ids[(base + d).clamp(max=N)]
        allowed = torch.cat([tril] + [eye] * (d - 1), 1)
        pos = (base + d - 1)[None]
        g = head(prev[None], embed(tok)[None], pos, additive_mask(allowed, f.dtype, f.device), cache)[0]
        out.append(g)
        prev = g
    return out


def eagle_losses(head, embed, readout, e, depth, scale, w_reg=0.5):
    f = e["feats"].float()
    ids = torch.tensor(e["ids"])
    N, P = f.shape[0], e["prompt_len"]
    gs = eagle_unroll(head, embed, f, ids, depth)
    total, stats = 0.0, []
    M = N - 1
    p = torch.arange(M)
    for d, g in enumerate(gs, 1):
        valid = (p + d <= N - 1) & (p + d + 1 >= P)      # the target feature exists; predicts an answer token
        if not valid.any():
            stats.append((0, 0))
            continue
        gv, tv = g[valid], f[(p + d)[valid]]
        with torch.no_grad():
            tgt = F.softmax(readout(tv), -1)
            hard = readout.row[ids[(p + d + 1)[valid]]]
        lg = readout(gv)
        ce = -(tgt * F.log_softmax(lg, -1)).sum(-1).mean()
        reg = F.smooth_l1_loss(gv / scale, tv / scale)
        total = total + 0.8 ** (d - 1) * (ce + w_reg * reg)
        stats.append((int((lg.argmax(-1) == hard).sum()), int(valid.sum())))
    return total, stats


@torch.no_grad()
def eval_eagle(head, embed, lm, heldout, depth):
    """Top-1 accuracy per depth over the held-out answers with the full vocabulary (the chain's conditional
    acceptance: depth d given the true tokens before it)."""
    full = lm.model.get_output_embeddings()
    hit, n = [0] * depth, [0] * depth
    for e in heldout:
        f, ids = e["feats"].float(), torch.tensor(e["ids"])
        N, P = f.shape[0], e["prompt_len"]
        p = torch.arange(N - 1)
        for d, g in enumerate(eagle_unroll(head, embed, f, ids, depth), 1):
            valid = (p + d + 1 <= N) & (p + d + 1 >= P)
            pred = full(g[valid]).argmax(-1)
            hit[d - 1] += int((pred == ids[(p + d + 1)[valid]]).sum())
            n[d - 1] += int(valid.sum())
    return [round(h / max(1, k), 4) for h, k in zip(hit, n)]


def target_record(lm) -> dict:
    return {"target_model": lm.name, "target_num_hidden_layers": lm.model.config.num_hidden_layers}


def save_eagle(head, out: Path, meta: dict, lm, draft_ids: torch.Tensor | None = None):
    """The head (float16) and, when given, its draft vocabulary (`draft_ids`, the tokens of the training data: at
    inference the head reads out only these LM-head rows)."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in head.state_dict().items()}
    if draft_ids is not None:
        sd["draft_ids"] = draft_ids.to(torch.int64).contiguous()
    save_file(sd, str(out / "model.safetensors"))
    cfg = head.config.to_dict()
    cfg["architectures"] = ["EagleHead"]
    cfg["torch_dtype"] = "float16"
    cfg.update(target_record(lm))
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    (out / "training.json").write_text(json.dumps(meta, indent=1))


# ---- Medusa -----------------------------------------------------------------------------------

def medusa_batch(examples, k: int, row):
    """Rows (feature, targets of heads 0..k-1 as draft-vocab rows, -1 = no target) over the answer positions."""
    feats, tg = [], []
    for e in examples:
        f, ids, P = e["feats"].float(), torch.tensor(e["ids"]), e["prompt_len"]
        N = f.shape[0]
        p = torch.arange(max(0, P - 2), N)
        t = torch.full((len(p), k), -1)
        for i in range(k):
            j = p + 2 + i
            ok = j <= N
            t[ok, i] = row[ids[j[ok]]]
        feats.append(f[p])
        tg.append(t)
    return torch.cat(feats), torch.cat(tg)


def medusa_losses(heads, readout, X, T):
    total, stats = 0.0, []
    for i, seq in enumerate(heads.medusa_head):
        ok = T[:, i] >= 0
        h = X[ok]
        for blk in list(seq)[:-1]:
            h = blk(h)
        lg = readout(h)
        ce = F.cross_entropy(lg, T[ok, i])
        total = total + 0.8 ** i * ce
        stats.append((int((lg.argmax(-1) == T[ok, i]).sum()), int(ok.sum())))
    return total, stats


@torch.no_grad()
def eval_medusa(heads, lm, heldout, topk=(1, 5)):
    full = lm.model.get_output_embeddings()
    res = {f"top{k}": [0] * heads.num_heads for k in topk}
    n = [0] * heads.num_heads
    for e in heldout:
        f, ids, P = e["feats"].float(), torch.tensor(e["ids"]), e["prompt_len"]
        N = f.shape[0]
        p = torch.arange(max(0, P - 2), N)
        for i, seq in enumerate(heads.medusa_head):
            j = p + 2 + i
            ok = j <= N
            h = f[p[ok]]
            for blk in list(seq)[:-1]:
                h = blk(h)
            top = full(h).topk(max(topk), -1).indices
            tgt = ids[j[ok]]
            for k in topk:
                res[f"top{k}"][i] += int((top[:, :k] == tgt[:, None]).any(-1).sum())
            n[i] += int(ok.sum())
    return {k: [round(h / max(1, c), 4) for h, c in zip(v, n)] for k, v in res.items()}


def save_medusa(heads, out: Path, meta: dict, lm):
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    sd = {}
    for i, seq in enumerate(heads.medusa_head):
        for j, blk in enumerate(list(seq)[:-1]):
            for name, v in blk.state_dict().items():
                sd[f"{i}.{j}.{name}"] = v.detach().to(torch.float16).contiguous()
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"medusa_num_heads": heads.num_heads,
                                                 "medusa_num_layers": heads.num_layers,
                                                 "shared_lm_head": True, **target_record(lm)}, indent=1))
    (out / "training.json").write_text(json.dumps(meta, indent=1))


# ---- the loop ----------------------------------------------------------------------------------

def lr_at(step, total, peak, warm=30):
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def cmd_train_heads(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    lm = load_base()
    for p in lm.model.parameters():
        p.requires_grad_(False)
    data = load_heads_data()
    if not data:
        raise SystemExit("no data: run `python -m training.train_heads gen` first")
    train, held = split(data, args.heldout)
    vocab = draft_vocab(train)
    readout = Readout(lm, vocab)
    scale = feature_scale(train)
    embed = lm.model.model.embed_tokens
    kind = args.cmd
    ckpt = DATA / f"ckpt_{kind}.pt"
    if kind == "eagle":
        module = H.random_eagle(lm, args.seed)
        module.train()
    else:
        module = H.random_medusa(lm, args.seed, num_heads=args.heads, num_layers=args.layers)
        with torch.no_grad():   # Medusa's initialisation: the ResBlocks start at zero (each head starts as the LM head)
            for seq in module.medusa_head:
                for blk in list(seq)[:-1]:
                    blk.linear.weight.zero_()
        module.train()
    params = [p for p in module.parameters() if p.requires_grad]   # not the target's (frozen, shared) LM head
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    step, seconds = 0, 0.0
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        module.load_state_dict(st["module"], strict=False)
        opt.load_state_dict(st["opt"])
        step, seconds = st["step"], st["seconds"]
        rng.setstate(st["rng"])
        print(f"resumed {kind} at step {step} ({seconds:.0f} s)")
    total = args.max_steps
    log({"stage": f"train-{kind}-start", "examples": len(train), "heldout": len(held), "draft_vocab": len(vocab),
         "lr": args.lr, "batch": args.batch, "depth": getattr(args, "depth", None), "seed": args.seed,
         "max_steps": total, "resumed_at": step, "feature_std": round(scale, 4)})
    t0 = time.time() - seconds
    acc_hit, acc_n = None, None
    while step < total and (time.time() - t0) / 60 < args.minutes:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, args.lr)
        batch = rng.sample(train, args.batch)
        opt.zero_grad()
        if kind == "eagle":
            stats_all = []
            for e in batch:
                loss, stats = eagle_losses(module, embed, readout, e, args.depth, scale)
                (loss / len(batch)).backward()
                stats_all.append(stats)
            stats = [tuple(map(sum, zip(*[s[d] for s in stats_all]))) for d in range(args.depth)]
        else:
            X, T = medusa_batch(batch, module.num_heads, readout.row)
            loss, stats = medusa_losses(module, readout, X, T)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        acc_hit = [a + s[0] for a, s in zip(acc_hit or [0] * len(stats), stats)]
        acc_n = [a + s[1] for a, s in zip(acc_n or [0] * len(stats), stats)]
        if step % args.log_every == 0:
            accs = [round(h / max(1, n), 3) for h, n in zip(acc_hit, acc_n)]
            print(f"{kind} step {step} {time.time() - t0:.0f}s loss {float(loss):.3f} train acc/depth {accs}",
                  flush=True)
            acc_hit = acc_n = None
        if step % args.save_every == 0 or step == total:
            torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "step": step,
                        "seconds": time.time() - t0, "rng": rng.getstate()}, ckpt)
    torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "step": step,
                "seconds": time.time() - t0, "rng": rng.getstate()}, ckpt)
    module.eval()
    if kind == "eagle":
        acc = eval_eagle(module, embed, lm, held, args.depth + 2)
        ev = {"heldout_top1_per_depth": acc}
    else:
        ev = eval_medusa(module, lm, held)
    meta = {"steps": step, "seconds": round(time.time() - t0, 1), "examples": len(train), "seed": args.seed,
            "lr": args.lr, "batch": args.batch, **ev}
    out = Path(args.out) if args.out else MODELS / f"heads-{kind}"
    if kind == "eagle":
        save_eagle(module, out, meta, lm, draft_ids=vocab)
    else:
        save_medusa(module, out, meta, lm)
    log({"stage": f"train-{kind}", "out": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
         **meta})
