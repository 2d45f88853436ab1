"""Shared helpers for the Triton kernels: optional import and jit on first use.

Kernels are written as plain functions and passed through ``triton.jit`` the first time they run,
not at import time. Triton decides at decoration time whether a kernel is compiled for the GPU or
run by its CPU interpreter (``TRITON_INTERPRET=1``), so jitting on first use lets tests switch the
interpreter on after other modules already imported ``kernels``.
"""
from __future__ import annotations

import os

import torch

try:  # triton is optional: the app runs on CPU with the torch references alone
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    HAVE_TRITON = False

_JITTED: dict = {}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def jitted(fn):
    """``triton.jit(fn)``, made once per mode (compiled / interpreted)."""
    key = (fn, interpreting())
    if key not in _JITTED:
        _JITTED[key] = triton.jit(fn)
    return _JITTED[key]


def next_pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


LOG2E = 1.4426950408889634


def upcast_dot(dtype: torch.dtype) -> bool:
    """Triton 3.9's CPU interpreter multiplies bf16 tiles wrongly in tl.dot (it returns garbage),
    so under the interpreter bf16 tiles are multiplied in fp32. Compiled kernels keep bf16 dots."""
    return dtype == torch.bfloat16 and interpreting()


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use exact fp32 products (not TF32): the lab compares tokens with the torch path."""
    return "ieee" if dtype == torch.float32 or upcast_dot(dtype) else "tf32"


def plan_splits(keys: int, programs: int, block_n: int, min_split: int = 256, target: int = 256) -> tuple[int, int]:
    """(split length, number of splits) for split-K over `keys`: enough programs to fill a GPU
    (about `target`, ~2 per SM on an H100) without splits shorter than `min_split` keys."""
    if keys <= 0:
        return block_n, 1
    want = max(1, target // max(1, programs))
    split = max(min_split, -(-keys // want))
    split = -(-split // block_n) * block_n
    return split, -(-keys // split)


# A helper the kernels call by name: jitted once, at import, in this process's mode (compiled, or interpreted
# when TRITON_INTERPRET=1 was set before the import, as make test-interp does).
if HAVE_TRITON:
    @triton.jit
    def online_softmax_tile(q, k_base, v_base, cols, col_ok, allowed, dims, dim_ok, skt, skd, svt, svd, qk_scale,
                                m_i, l_i, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """One key tile of flash attention's online softmax, shared by the decode and tree kernels: load the
        tile's K and V, scores in log2 units, mask (`allowed`: [rows, cols]), rescale the running max / sum /
        weighted values. Returns the new (m_i, l_i, acc)."""
        kt = tl.load(k_base + cols[None, :] * skt + dims[:, None] * skd, mask=col_ok[None, :] & dim_ok[:, None],
                     other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(v_base + cols[:, None] * svt + dims[None, :] * svd, mask=col_ok[:, None] & dim_ok[None, :],
                     other=0.0)
        if UPCAST:
            vt = vt.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PRECISION)
        return m_new, l_i, acc
else:  # pragma: no cover
    online_softmax_tile = None
