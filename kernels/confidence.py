"""Per-position confidence of softmax(logits / T) for diffusion samplers, in one pass over the vocab.

For each row of logits [..., V] it returns the max probability, the top1 - top2 margin, the
entropy (nats) and the argmax, without writing the [..., V] probability matrix (LLaDA's vocab is
126k, so a block of positions times the vocab in fp32 is large and the diffusion sampler needs only
these numbers per position). Given `ids` (one token per row, e.g. the sampler's Gumbel-noised
pick), it also returns the probability of that token.

The Triton kernel streams the vocab in tiles and keeps, per row, the running max m, the second
largest value, the argmax, s = sum exp(x - m) and u = sum exp(x - m) * (x - m), rescaling both when
m grows. At the end: p1 = 1 / s, p2 = exp(x2 - m) / s, entropy = log s - u / s.
`confidence_torch` is the reference: softmax + topk (+ the entropy of the probabilities).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from kernels._triton import HAVE_TRITON, jitted, next_pow2, tl


class Confidence(NamedTuple):
    max_prob: torch.Tensor   # [...] fp32
    margin: torch.Tensor     # [...] fp32, top1 - top2 probability
    entropy: torch.Tensor    # [...] fp32, nats
    argmax: torch.Tensor     # [...] int64
    token_prob: torch.Tensor | None = None   # [...] fp32, probability of ids[...] when ids were given


def check_args(logits: torch.Tensor, temperature: float, ids: torch.Tensor | None = None) -> None:
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError("logits must be [..., V] with V >= 2")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for a softmax (got {temperature})")
    if ids is not None:
        if tuple(ids.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"ids {tuple(ids.shape)} must have the logits' leading shape {tuple(logits.shape[:-1])}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= logits.shape[-1]):
            raise ValueError("ids must be token ids in [0, V)")


def confidence_torch(logits: torch.Tensor, temperature: float = 1.0, ids: torch.Tensor | None = None) -> Confidence:
    check_args(logits, temperature, ids)
    probs = (logits.float() / temperature).softmax(-1)
    top = probs.topk(2, dim=-1)
    entropy = -torch.special.xlogy(probs, probs).sum(-1)
    token_prob = None if ids is None else probs.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    return Confidence(top.values[..., 0], top.values[..., 0] - top.values[..., 1], entropy, top.indices[..., 0],
                      token_prob)


def _confidence_kernel(X, P1, MARGIN, ENT, ARG, IDS, TOKP, stride_row, V, inv_temp,
                       HAS_IDS: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_row
    offs = tl.arange(0, BLOCK_V)
    neg_inf = float("-inf")
    m1 = tl.full([], neg_inf, tl.float32)     # largest scaled logit so far (the running max)
    m2 = tl.full([], neg_inf, tl.float32)     # second largest
    arg = tl.full([], 0, tl.int32)
    s = tl.full([], 0.0, tl.float32)
    u = tl.full([], 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < V, other=neg_inf).to(tl.float32) * inv_temp
        t1, i1 = tl.max(x, 0, return_indices=True, return_indices_tie_break_left=True)
        t2 = tl.max(tl.where(offs == i1, neg_inf, x), 0)
        # top-2 merge (an equal later max does not replace the earlier argmax, like torch.argmax)
        new_top = t1 > m1
        m2 = tl.where(new_top, tl.maximum(m1, t2), tl.maximum(m2, t1))
        arg = tl.where(new_top, start + i1, arg)
        m_new = tl.maximum(m1, t1)
        m_use = tl.where(m_new == neg_inf, 0.0, m_new)
        delta = tl.where(m1 == neg_inf, 0.0, m1 - m_use)
        alpha = tl.exp(delta) * tl.where(m1 == neg_inf, 0.0, 1.0)
        e = tl.exp(x - m_use)
        xc = tl.where(x == neg_inf, 0.0, x - m_use)
        u = alpha * (u + s * delta) + tl.sum(e * xc, 0)
        s = alpha * s + tl.sum(e, 0)
        m1 = m_new
    p1 = 1.0 / s
    p2 = tl.exp(m2 - m1) / s
    tl.store(P1 + row, p1)
    tl.store(MARGIN + row, p1 - p2)
    tl.store(ENT + row, tl.log(s) - u / s)
    tl.store(ARG + row, arg.to(tl.int64))
    if HAS_IDS:
        xt = tl.load(x_row + tl.load(IDS + row)).to(tl.float32) * inv_temp
        tl.store(TOKP + row, tl.exp(xt - m1) / s)


def confidence_triton(logits: torch.Tensor, temperature: float = 1.0, ids: torch.Tensor | None = None,
                      block_v: int | None = None) -> Confidence:
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    check_args(logits, temperature, ids)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, vocab)
    if x.stride(-1) != 1:
        x = x.contiguous()
    n = x.shape[0]
    f32 = dict(dtype=torch.float32, device=logits.device)
    p1, margin, ent = torch.empty(n, **f32), torch.empty(n, **f32), torch.empty(n, **f32)
    arg = torch.empty(n, dtype=torch.int64, device=logits.device)
    tok_ids = None if ids is None else ids.reshape(-1).to(device=logits.device, dtype=torch.int64).contiguous()
    tok_p = None if ids is None else torch.empty(n, **f32)
    if n:
        block_v = block_v or min(4096, next_pow2(vocab))
        jitted(_confidence_kernel)[(n,)](x, p1, margin, ent, arg, tok_ids if ids is not None else arg,
                                         tok_p if ids is not None else p1, x.stride(0), vocab, 1.0 / float(temperature),
                                         HAS_IDS=ids is not None, BLOCK_V=block_v,
                                         num_warps=8 if block_v >= 2048 else 4)
    return Confidence(p1.view(lead), margin.view(lead), ent.view(lead), arg.view(lead),
                      None if tok_p is None else tok_p.view(lead))
