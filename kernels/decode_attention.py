"""Decode attention over the kept KV entries that also returns the attention mass each key received.

  q [B, Hq, Tq, D]   the new query (Tq = 1 when decoding; a short window of queries also works:
                     query t sees keys 0 .. S - Tq + t, i.e. causal, aligned at the end)
  k, v [B, Hkv, S, D]
returns out [B, Hq, Tq, D] and mass [B, Hkv, S] (fp32): for each key, the softmax probability it
received summed over the query heads of its KV group and over the Tq queries. That is the score
H2O accumulates and TOVA ranks by; getting it here avoids running the model with eager attention
(which materialises every layer's full attention matrix).

The Triton path is split-K ("flash-decoding"): kernel 1 computes, per key split, the running max,
sum and weighted values of every query row; kernel 2 merges the splits into the output and, with
the global max and sum known, recomputes the scores of its split to write each key's mass. K is
read twice, V once, and nothing of size rows x S is stored.

`decode_attention_torch` is the reference: eager softmax(q K^T / sqrt(d)) @ V and a sum.
"""
from __future__ import annotations

import math

import torch

from kernels._triton import (HAVE_TRITON, LOG2E, dot_precision, jitted, next_pow2, online_softmax_tile, plan_splits,
                             tl, upcast_dot)


def check_shapes(q, k, v) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [batch, heads, length, head_dim]")
    b, hq, tq, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if hq % k.shape[1]:
        raise ValueError(f"{hq} query heads cannot be grouped over {k.shape[1]} KV heads")
    if k.shape[2] < tq:
        raise ValueError(f"{tq} queries need at least as many keys (got {k.shape[2]})")


# ----------------------------------------------------------------------------------------------
# Reference

def decode_attention_torch(q, k, v, scale: float | None = None):
    """Eager attention + sum over the group's query heads. Returns (out [B,Hq,Tq,D], mass [B,Hkv,S])."""
    check_shapes(q, k, v)
    b, hq, tq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    kr = k.repeat_interleave(g, dim=1)
    vr = v.repeat_interleave(g, dim=1)
    scores = torch.matmul(q, kr.transpose(2, 3)).float() * scale
    if tq > 1:
        allowed = torch.arange(s, device=q.device)[None, :] <= torch.arange(s - tq, s, device=q.device)[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(-1)
    out = torch.matmul(probs.to(v.dtype), vr)
    mass = probs.view(b, hkv, g, tq, s).sum(dim=(2, 3))
    return out, mass


# ----------------------------------------------------------------------------------------------
# Triton kernels

def _decode_partial_kernel(
        Q, K, V, MP, LP, AP,
        sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
        TQ, S, D, G, HKV, SPLIT_LEN, NUM_SPLITS, ROWS_PAD, qk_scale,
        DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    kvh = (pid_bh % HKV).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # rows = g * TQ + t
    row_ok = rows < G * TQ
    t = rows % TQ
    head = kvh * G + rows // TQ
    last_key = S - TQ + t                              # query t sees keys 0 .. last_key
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D

    q = tl.load(Q + b * sqb + head[:, None] * sqh + t[:, None] * sqt + dims[None, :] * sqd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    lo = split * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, S)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        m_i, l_i, acc = online_softmax_tile(q, k_base, v_base, cols, col_ok, col_ok[None, :] & (cols[None, :] <= last_key[:, None]), dims, dim_ok, skt, skd, svt, svd,
                                            qk_scale, m_i, l_i, acc, DOT_PRECISION, UPCAST)

    # partials laid out [B * Hkv, NUM_SPLITS, ROWS_PAD(, D)]
    base = (pid_bh.to(tl.int64) * NUM_SPLITS + split) * ROWS_PAD
    tl.store(MP + base + rows, m_i)
    tl.store(LP + base + rows, l_i)
    tl.store(AP + (base + rows[:, None]) * D + dims[None, :], acc, mask=dim_ok[None, :])


def _decode_merge_mass_kernel(
        Q, K, O, MP, LP, AP, MASS,
        sqb, sqh, sqt, sqd, skb, skh, skt, skd, sob, soh, sot, sod,
        TQ, S, D, G, HKV, SPLIT_LEN, NUM_SPLITS, ROWS_PAD, qk_scale,
        DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, COMPUTE_MASS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # Also merges the tree kernel's splits (COMPUTE_MASS=False, rows = g * T + node, grid (1, ...)).
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    kvh = (pid_bh % HKV).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < G * TQ
    t = rows % TQ
    head = kvh * G + rows // TQ
    last_key = S - TQ + t
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D

    # global max and sum of every row, from the splits' partials
    part = pid_bh.to(tl.int64) * NUM_SPLITS * ROWS_PAD
    m_g = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for sp in range(0, NUM_SPLITS):
        m_g = tl.maximum(m_g, tl.load(MP + part + sp * ROWS_PAD + rows))
    m_use = tl.where(m_g == float("-inf"), 0.0, m_g)
    l_g = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    for sp in range(0, NUM_SPLITS):
        l_g += tl.load(LP + part + sp * ROWS_PAD + rows) * tl.exp2(tl.load(MP + part + sp * ROWS_PAD + rows) - m_use)
    inv_l = tl.where(row_ok & (l_g > 0.0), 1.0 / l_g, 0.0)

    if split == 0:  # one program per row block merges the weighted values into the output
        acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
        for sp in range(0, NUM_SPLITS):
            w = tl.exp2(tl.load(MP + part + sp * ROWS_PAD + rows) - m_use)
            a = tl.load(AP + (part + sp * ROWS_PAD + rows[:, None]) * D + dims[None, :], mask=dim_ok[None, :],
                        other=0.0)
            acc += a * w[:, None]
        out = acc * inv_l[:, None]
        tl.store(O + b * sob + head[:, None] * soh + t[:, None] * sot + dims[None, :] * sod,
                 out.to(O.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])

    if COMPUTE_MASS:  # mass of each key of this split: normalised probabilities summed over the rows
        q = tl.load(Q + b * sqb + head[:, None] * sqh + t[:, None] * sqt + dims[None, :] * sqd,
                    mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        k_base = K + b * skb + kvh * skh
        mass_base = MASS + (pid_m.to(tl.int64) * tl.num_programs(1) + pid_bh) * S
        lo = split * SPLIT_LEN
        hi = tl.minimum(lo + SPLIT_LEN, S)
        for start in range(lo, hi, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < hi
            kt = tl.load(k_base + cols[None, :] * skt + dims[:, None] * skd,
                         mask=col_ok[None, :] & dim_ok[:, None], other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
            s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(col_ok[None, :] & (cols[None, :] <= last_key[:, None]), s, float("-inf"))
            p = tl.exp2(s - m_use[:, None]) * inv_l[:, None]
            tl.store(mass_base + cols, tl.sum(p, 0), mask=col_ok)


def decode_attention_triton(q, k, v, scale: float | None = None, split_len: int | None = None,
                            block_n: int | None = None):
    """The Triton path. Returns (out [B, Hq, Tq, D] as a view of a [B, Tq, Hq, D] buffer, mass [B, Hkv, S])."""
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    check_shapes(q, k, v)
    bsz, hq, tq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    rows = g * tq
    block_m = min(64, next_pow2(rows))
    row_blocks = (rows + block_m - 1) // block_m
    rows_pad = row_blocks * block_m
    block_n = block_n or 64
    if split_len is None:
        split_len, num_splits = plan_splits(s, bsz * hkv * row_blocks, block_n, min_split=2 * block_n)
    else:
        split_len = -(-split_len // block_n) * block_n
        num_splits = -(-s // split_len)
    f32 = dict(dtype=torch.float32, device=q.device)
    m_part = torch.empty(bsz * hkv, num_splits, rows_pad, **f32)
    l_part = torch.empty(bsz * hkv, num_splits, rows_pad, **f32)
    a_part = torch.empty(bsz * hkv, num_splits, rows_pad, d, **f32)
    mass = torch.empty(row_blocks, bsz * hkv, s, **f32)
    out = torch.empty(bsz, tq, hq, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    grid = (num_splits, bsz * hkv, row_blocks)
    common = dict(DOT_PRECISION=dot_precision(q.dtype), UPCAST=upcast_dot(q.dtype),
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=next_pow2(d), num_warps=4)
    sizes = (tq, s, d, g, hkv, split_len, num_splits, rows_pad, float(scale) * LOG2E)
    jitted(_decode_partial_kernel)[grid](q, k, v, m_part, l_part, a_part, *q.stride(), *k.stride(), *v.stride(),
                                         *sizes, **common)
    jitted(_decode_merge_mass_kernel)[grid](q, k, out, m_part, l_part, a_part, mass,
                                            *q.stride(), *k.stride(), *out.stride(), *sizes, COMPUTE_MASS=True,
                                            **common)
    mass = mass[0] if row_blocks == 1 else mass.sum(0)
    return out, mass.view(bsz, hkv, s)
