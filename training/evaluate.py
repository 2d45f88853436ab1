"""Held-out evaluation: masked-token accuracy and look-ahead precision one and more tokens past the frontier."""
from __future__ import annotations

import random

import torch


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
