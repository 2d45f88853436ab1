"""Per-position confidence of softmax(logits / T) for diffusion samplers, in one pass over the vocab.

For each row of logits [..., V] it returns the max probability, the top1 - top2 margin, the
entropy (nats) and the argmax, without writing the [..., V] probability matrix (LLaDA's vocab is
126k, so a block of positions times the vocab in fp32 is large and the diffusion sampler needs only
these four numbers per position).

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


def check_args(logits: torch.Tensor, temperature: float) -> None:
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError("logits must be [..., V] with V >= 2")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for a softmax (got {temperature})")


def confidence_torch(logits: torch.Tensor, temperature: float = 1.0) -> Confidence:
    check_args(logits, temperature)
    probs = (logits.float() / temperature).softmax(-1)
    top = probs.topk(2, dim=-1)
    entropy = -torch.special.xlogy(probs, probs).sum(-1)
    return Confidence(top.values[..., 0], top.values[..., 0] - top.values[..., 1], entropy, top.indices[..., 0])


def _confidence_kernel(X, P1, MARGIN, ENT, ARG, stride_row, V, inv_temp, BLOCK_V: tl.constexpr):
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


def confidence_triton(logits: torch.Tensor, temperature: float = 1.0, block_v: int | None = None) -> Confidence:
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    check_args(logits, temperature)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, vocab)
    if x.stride(-1) != 1:
        x = x.contiguous()
    n = x.shape[0]
    f32 = dict(dtype=torch.float32, device=logits.device)
    p1, margin, ent = torch.empty(n, **f32), torch.empty(n, **f32), torch.empty(n, **f32)
    arg = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n:
        block_v = block_v or min(4096, next_pow2(vocab))
        jitted(_confidence_kernel)[(n,)](x, p1, margin, ent, arg, x.stride(0), vocab, 1.0 / float(temperature),
                                         BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4)
    return Confidence(p1.view(lead), margin.view(lead), ent.view(lead), arg.view(lead))
