"""Shared helpers for the Triton kernels: optional import and jit on first use.

Kernels are written as plain functions and passed through ``triton.jit`` the first time they run,
not at import time. Triton decides at decoration time whether a kernel is compiled for the GPU or
run by its CPU interpreter (``TRITON_INTERPRET=1``), so jitting on first use lets tests switch the
interpreter on after other modules already imported ``kernels``.
"""
from __future__ import annotations

import os

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
