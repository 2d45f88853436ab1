"""Each Triton kernel vs its torch reference, on CUDA, over realistic shapes; prints the ratios.

    python benchmarks/kernels.py [--dtype fp16] [--quick]

  tree attention     kernel vs SDPA with the dense [T, P + T] mask (mask built beforehand)
  decode + mass      kernel vs eager softmax(q K^T / sqrt(d)) @ V and the sum over the group's heads
  confidence         kernel vs softmax + topk + entropy over the vocab
  model forward      the embedded model verifying a token tree: "lab_tree" attention vs SDPA + 4D mask

Times are medians of CUDA-event-timed repeats after warm-up, both paths in the same run; "x" is
reference time / kernel time (> 1: the kernel is faster). Each row also prints the largest
difference between the two outputs. Without CUDA the script says so and exits 0.
`TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke` runs tiny shapes on the CPU through the
interpreter (checks the script, not speed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


import torch

from kernels import confidence as C
from kernels import decode_attention as DA
from engine import attention
from kernels import dispatch as KD
from kernels import tree_attention as TA

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (name, query heads, KV heads, head dim)
MODELS = [("SmolLM2-135M", 9, 3, 64), ("Llama-3-8B", 32, 8, 128)]


def timed(fn, device, warmup=3, repeats=20) -> float:
    """Median milliseconds of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def row(cells, widths):
    print("  ".join(str(c).rjust(w) for c, w in zip(cells, widths)))


def bushy(t):
    return [-1] + [(i - 1) // 4 for i in range(1, t)]   # 4 children per node


def bench_tree(device, dtype, shapes, reps):
    print("\n## tree-verification attention (kernel vs SDPA + dense mask)")
    w = [14, 6, 5, 7, 11, 11, 6, 9]
    row(["model", "P", "T", "tree", "sdpa ms", "kernel ms", "x", "max diff"], w)
    for model, hq, hkv, d in shapes["models"]:
        for p in shapes["prefix"]:
            for t, kind in shapes["trees"]:
                parents = bushy(t) if kind == "bushy" else list(range(-1, t - 1))
                tree = KD.Tree.from_parents(parents, device=device)
                mask = tree.dense_mask(p)
                q = torch.randn(1, hq, t, d, dtype=dtype, device=device)
                k = torch.randn(1, hkv, p + t, d, dtype=dtype, device=device)
                v = torch.randn(1, hkv, p + t, d, dtype=dtype, device=device)

                def ref():
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

                def ker():
                    return TA.tree_attention_triton(q, k, v, p, ancestors=None if tree.chain else tree.bitmask,
                                                    causal=tree.chain)
                diff = (ref().float() - ker().float()).abs().max().item()
                tr, tk = timed(ref, device, repeats=reps), timed(ker, device, repeats=reps)
                row([model, p, t, kind, f"{tr:.4f}", f"{tk:.4f}", f"{tr / tk:.2f}", f"{diff:.1e}"], w)


def bench_decode(device, dtype, shapes, reps):
    print("\n## decode attention + per-key mass (kernel vs eager attention + sum)")
    w = [14, 7, 11, 11, 6, 9, 9]
    row(["model", "S", "eager ms", "kernel ms", "x", "out diff", "mass diff"], w)
    for model, hq, hkv, d in shapes["models"]:
        for s in shapes["keys"]:
            q = torch.randn(1, hq, 1, d, dtype=dtype, device=device)
            k = torch.randn(1, hkv, s, d, dtype=dtype, device=device)
            v = torch.randn(1, hkv, s, d, dtype=dtype, device=device)
            (ro, rm), (ko, km) = DA.decode_attention_torch(q, k, v), DA.decode_attention_triton(q, k, v)
            od, md = (ro.float() - ko.float()).abs().max().item(), (rm - km).abs().max().item()
            tr = timed(lambda: DA.decode_attention_torch(q, k, v), device, repeats=reps)
            tk = timed(lambda: DA.decode_attention_triton(q, k, v), device, repeats=reps)
            row([model, s, f"{tr:.4f}", f"{tk:.4f}", f"{tr / tk:.2f}", f"{od:.1e}", f"{md:.1e}"], w)


def bench_confidence(device, dtype, shapes, reps):
    print("\n## confidence over the vocab (kernel vs softmax + topk + entropy)")
    w = [9, 8, 11, 11, 6, 9]
    row(["positions", "vocab", "torch ms", "kernel ms", "x", "max diff"], w)
    for n in shapes["positions"]:
        for vocab in shapes["vocab"]:
            x = torch.randn(n, vocab, dtype=dtype, device=device) * 4
            r, g = C.confidence_torch(x), C.confidence_triton(x)
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(r[:3], g[:3]))
            if not torch.equal(r.argmax, g.argmax):
                diff = float("nan")
            tr = timed(lambda: C.confidence_torch(x), device, repeats=reps)
            tk = timed(lambda: C.confidence_triton(x), device, repeats=reps)
            row([n, vocab, f"{tr:.4f}", f"{tk:.4f}", f"{tr / tk:.2f}", f"{diff:.1e}"], w)


def bench_model(device, dtype, shapes, reps, smoke):
    print("\n## model forward: verify a token tree over a cached prompt (lab_tree vs sdpa + 4D mask)")
    from transformers import DynamicCache
    if smoke:
        from tests.conftest import make_tiny_lm
        lm = make_tiny_lm()
    else:
        from engine import models
        lm = models.load(models.EMBEDDED, device=str(device), dtype=dtype)
    w = [6, 5, 12, 12, 6, 12]
    row(["P", "T", "sdpa ms", "lab_tree ms", "x", "logit diff"], w)
    vocab = lm.model.config.vocab_size
    for p in shapes["model_prefix"]:
        for t in shapes["model_tree"]:
            g = torch.Generator().manual_seed(0)
            prompt = torch.randint(0, vocab, (1, p), generator=g).to(device)
            tree = KD.Tree.from_parents(bushy(t), device=device)
            tree_ids = torch.randint(0, vocab, (1, t), generator=g).to(device)
            with torch.inference_mode():
                cache = DynamicCache()
                lm.model(input_ids=prompt, past_key_values=cache)
            positions = tree.position_ids(p)
            mask = tree.dense_mask(p)[None, None]

            def verify(**kw):
                with torch.inference_mode():
                    out = lm.model(input_ids=tree_ids, position_ids=positions, past_key_values=cache, **kw)
                    cache.crop(-t)   # drop the tree again (transformers 5.23: a negative count)
                    return out.logits

            ref = verify(attention_mask=mask)
            with attention.kernels(lm.model):
                got = verify(tree_parents=tree)
                tk = timed(lambda: verify(tree_parents=tree), device, repeats=reps)
            tr = timed(lambda: verify(attention_mask=mask), device, repeats=reps)
            diff = (ref.float() - got.float()).abs().max().item()
            row([p, t, f"{tr:.3f}", f"{tk:.3f}", f"{tr / tk:.2f}", f"{diff:.1e}"], w)


FULL = {
    "models": MODELS,
    "prefix": [512, 2048, 8192],
    "trees": [(16, "chain"), (64, "bushy"), (128, "bushy")],
    "keys": [1024, 4096, 16384, 32768],
    "positions": [32, 256],
    "vocab": [49152, 126464],
    "model_prefix": [256, 1024],
    "model_tree": [16, 64],
}
QUICK = {**FULL, "prefix": [2048], "trees": [(64, "bushy")], "keys": [4096, 32768], "positions": [64],
         "vocab": [126464], "model_prefix": [1024], "model_tree": [64]}
SMOKE = {"models": [("tiny", 4, 2, 16)], "prefix": [7], "trees": [(5, "bushy"), (4, "chain")], "keys": [40],
         "positions": [3], "vocab": [300], "model_prefix": [9], "model_tree": [6]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    ap.add_argument("--quick", action="store_true", help="one shape per kernel")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU via TRITON_INTERPRET=1")
    args = ap.parse_args(argv)
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--smoke needs TRITON_INTERPRET=1 in the environment")
            return 2
        device, shapes, reps, dtype = torch.device("cpu"), SMOKE, 2, torch.float32
        print("# smoke run: tiny shapes, CPU, kernels in Triton's Python interpreter -- the times and ratios "
              "below say nothing about GPU speed")
    else:
        if not torch.cuda.is_available():
            print("No CUDA device: the Triton kernels run only on a GPU (the app uses the torch references "
                  "on CPU). Nothing measured.")
            return 0
        device, shapes, reps, dtype = torch.device("cuda"), (QUICK if args.quick else FULL), args.repeats, \
            DTYPES[args.dtype]
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, dtype {args.dtype}")
    if os.environ.get(KD.FORCE_TORCH_ENV) == "1":
        print(f"note: {KD.FORCE_TORCH_ENV}=1 only affects the dispatcher; this script calls both paths directly")
    torch.manual_seed(0)
    bench_tree(device, dtype, shapes, reps)
    bench_decode(device, dtype, shapes, reps)
    bench_confidence(device, dtype, shapes, reps)
    bench_model(device, dtype, shapes, reps, args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
