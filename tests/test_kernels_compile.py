"""Every kernel launch the wrappers make compiles for an H100 (sm_90), with no GPU needed.

The interpreter tests (test_kernels_interp.py) check the numbers but run Python, which accepts
things the compiler rejects (dot shapes, dtypes of tl.dot operands, constexpr use). Here each
wrapper is called with a recorder in place of the launch; the recorded kernel, argument types and
constexprs are then compiled ahead of time down to a cubin with Triton's bundled ptxas.
"""
from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
pytestmark = [pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                 reason="ahead-of-time compilation needs triton imported without the interpreter"),
              pytest.mark.slow]   # ahead-of-time compiles (ptxas), ~1.5 min here: make test runs them, test-fast not

from kernels import confidence as C  # noqa: E402
from kernels import decode_attention as DA  # noqa: E402
from kernels import tree_attention as TA  # noqa: E402

TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
        torch.int64: "i64"}


class Recorder:
    """Stands in for `jitted(fn)[grid](...)`: remembers the launches instead of running them."""
    def __init__(self):
        self.launches = []

    def __call__(self, fn):
        rec = self

        class Launcher:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: rec.launches.append((fn, args, kwargs))
        return Launcher()


def compile_launch(fn, args, kwargs, arch=90):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
    jit = JITFunction(fn)
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    names = jit.arg_names
    signature, constexprs = {}, {}
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + TYPE[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(value)}")
    for name, value in kwargs.items():
        signature[name] = "constexpr"
        constexprs[(names.index(name),)] = value
    assert set(signature) == set(names), set(names) - set(signature)
    src = ASTSource(jit, {n: signature[n] for n in names}, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def launches_of(module, call):
    rec = Recorder()
    original = module.jitted
    module.jitted = rec
    try:
        call()
    finally:
        module.jitted = original
    assert rec.launches
    return rec.launches


DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _tree(dtype, causal):
    q = torch.zeros(1, 9, 5, 64, dtype=dtype)
    short, long = torch.zeros(1, 3, 45, 64, dtype=dtype), torch.zeros(1, 3, 4101, 64, dtype=dtype)
    parents = list(range(-1, 4)) if causal else [-1, 0, 0, 1, 1]
    # a 40-token prefix runs in one program per head; 4096 is split (split-K) and merged
    return lambda: (TA.tree_attention_triton(q, short, short, 40, parents),
                    TA.tree_attention_triton(q, long, long, 4096, parents))


def _decode(dtype):
    q, k = torch.zeros(1, 9, 1, 64, dtype=dtype), torch.zeros(1, 3, 1000, 64, dtype=dtype)
    return lambda: DA.decode_attention_triton(q, k, k)


def _confidence(dtype):
    x = torch.zeros(4, 126464, dtype=dtype)
    return lambda: (C.confidence_triton(x, 1.0), C.confidence_triton(x, 0.5, ids=torch.zeros(4, dtype=torch.long)))


CASES = [(f"tree-{'chain' if c else 'bitmask'}-{TYPE[d]}", TA, _tree(d, c)) for d in DTYPES for c in (False, True)] \
    + [(f"decode-{TYPE[d]}", DA, _decode(d)) for d in DTYPES] \
    + [(f"confidence-{TYPE[d]}", C, _confidence(d)) for d in DTYPES]


@pytest.mark.parametrize("name,module,call", CASES, ids=[c[0] for c in CASES])
def test_kernel_compiles_for_sm90(name, module, call, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for fn, args, kwargs in launches_of(module, call):
        kernel = compile_launch(fn, args, kwargs)
        assert kernel.asm.get("cubin"), f"{fn.__name__}: no cubin"
        has_dot = "DOT_PRECISION" in kwargs and kwargs.get("COMPUTE_MASS", True)  # a pure merge has none
        if has_dot and args[0].dtype != torch.float32:
            assert "mma" in kernel.asm["ptx"], f"{fn.__name__}: tl.dot did not become tensor-core MMA"
