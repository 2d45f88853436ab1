"""Faster linears for a float32 model on the CPU: oneDNN's packed weight layout.

On this project's CPUs a forward of the 135M embedded model is ~85% matrix products (torch profiler), and
PyTorch's default path (MKL sgemm on the row-major weight) is slow for the few-row inputs that decoding
makes: one token (AR), 2-17 tokens (a speculative chain or tree, a lookahead window). oneDNN's
matmul on a weight reordered once into its blocked layout (what torch.compile's CPU freezing pass uses,
`torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise`) measured, per call over 30 weights that do not
fit in cache (2026-12-04, 2 threads):

    576x576   1 row 0.102 -> 0.090 ms, 5 rows 0.159 -> 0.090 ms, 17 rows 0.207 -> 0.154 ms
    1536x576  1 row 0.278 -> 0.182 ms, 5 rows 0.430 -> 0.211 ms, 17 rows 0.523 -> 0.330 ms

`install(model)` switches every plain `nn.Linear` of a CPU float32 model to `PackedLinear` (the same module,
its parameters untouched: tied weights stay tied, state_dict is unchanged). The packed copy is made on the
first call and rebuilt whenever the weight changes (its storage or in-place version counter), so training,
LoRA merges and weight edits are always seen. With autograd recording, or for inputs it does not cover
(another dtype or device), the module runs the ordinary `F.linear`. The results agree with F.linear to float32
rounding (relative 1e-6; tests/test_cpu_linear.py), as any change of BLAS kernel does. The packed copies
take as much memory as the weights, so models with over MAX_BYTES of linear weights are left alone.
DECODING_LAB_ONEDNN_LINEAR=0 turns it off (A/B benchmarks).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn

MAX_BYTES = 2 << 30      # linear weights (float32) packed at most: the copy doubles them
BATCH_HINT = 1           # the row count the layout is chosen for (decoding: one to a few rows)


def available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


def enabled() -> bool:
    return os.environ.get("DECODING_LAB_ONEDNN_LINEAR", "1") != "0" and available()


class PackedLinear(nn.Linear):
    """nn.Linear whose inference forward uses a oneDNN-packed copy of its weight (see the module docstring)."""

    def _packed(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, tuple(w.shape))
        got = self.__dict__.get("_dlab_packed")
        if got is None or got[0] != key:
            got = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), BATCH_HINT))
            self.__dict__["_dlab_packed"] = got
        return got[1]

    def __getstate__(self):
        """Copies and pickles leave the packed copy behind (an opaque oneDNN tensor that cannot be copied; the
        copy packs its own weight on first use): copy.deepcopy(model) builds the diffusion models."""
        state = self.__dict__.copy()
        state.pop("_dlab_packed", None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or x.dtype != torch.float32 \
                or w.dtype != torch.float32 or x.device.type != "cpu" or w.device.type != "cpu" or x.dim() < 2 \
                or x.is_sparse or not x.is_contiguous():
            return super().forward(x)
        b = self.bias
        return torch.ops.mkldnn._linear_pointwise(x, self._packed(), None if b is None else b.detach(),
                                                  "none", [], "")


def _plain_linears(model: nn.Module):
    return [m for m in model.modules() if type(m) is nn.Linear]


def install(model: nn.Module) -> int:
    """Switch `model`'s plain nn.Linear modules to PackedLinear when it is a float32 model on the CPU
    (idempotent). Returns how many were switched (0: not applicable, or turned off)."""
    if not enabled():
        return 0
    params = list(model.parameters())
    if not params or any(p.device.type != "cpu" for p in params):
        return 0
    lins = _plain_linears(model)
    if not lins or any(m.weight.dtype != torch.float32 for m in lins):
        return 0
    seen, total = set(), 0
    for m in lins:
        if m.weight.data_ptr() not in seen:
            seen.add(m.weight.data_ptr())
            total += m.weight.numel() * 4
    if total > MAX_BYTES:
        return 0
    for m in lins:
        m.__class__ = PackedLinear
    return len(lins)


@contextmanager
def stock(*models: nn.Module):
    """Run a block on the models' plain nn.Linear modules (benchmarks: HF generate as it ships), then switch
    back. Not for a model other sessions are decoding on at the same time."""
    switched = [m for model in models if model is not None for m in model.modules() if type(m) is PackedLinear]
    for m in switched:
        m.__class__ = nn.Linear
    try:
        yield
    finally:
        for m in switched:
            m.__class__ = PackedLinear


def linear_fn(weight: torch.Tensor):
    """x -> x @ weight.T for a weight [out, in] that no module holds (a draft vocabulary's rows of the LM head),
    packed like install() packs a float32 CPU model's linears; a plain function, so that assigning it to a module
    registers nothing in the module's state dict."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if enabled() and weight.device.type == "cpu" and weight.dtype == torch.float32:
        lin.__class__ = PackedLinear
    return lin.__call__
