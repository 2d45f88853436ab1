"""The GPU check: one command that proves the kernels and the engine on a CUDA machine, in one go.

    bash benchmarks/gpu_check.sh                 # on a CUDA machine: ~5-8 min, writes benchmarks/results_gpu.md
    bash benchmarks/gpu_check.sh --cpu-smoke     # the same code paths at tiny sizes on a CPU (< 1 min; a test)

It needs only this repository and the installed requirements (no internet): the random-weight models are
built from the configs in benchmarks/gpu/ (Llama-3.2-1B and Llama-3.1-8B shapes) with the tokenizer shipped
beside them (SmolLM2's; the models' vocabulary is set to its 49,152 tokens, so the LM head is ~40% of
Llama-3's: say so when reading the AR numbers). Steps, each timed, each recorded even when it fails:
  1. the machine: GPU, torch, triton, transformers;
  2. the Triton kernel tests, compiled for this GPU (not interpreted), against their torch references;
  3. each kernel against its torch reference at real shapes (benchmarks/kernels.py --quick);
  4. per model shape, in bf16: engine AR vs HF generate tokens/s (greedy, the same ids expected), and the
     cost of one tree-verification forward vs tree size (1 .. 64 nodes after a 512-token prefix), through
     the engine's speculative path (kernels on) and with the kernels forced off.
The results file has one section per step and the command line; paste its tables into RESULTS.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_DIR = ROOT / "benchmarks" / "gpu"
DEFAULT_OUT = ROOT / "benchmarks" / "results_gpu.md"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
KERNEL_TESTS_GPU = "matches_reference or sees_only_ancestors or default_split or full_llada or shape_errors"


class Report:
    def __init__(self, path: Path, smoke: bool):
        self.path, self.smoke, self.parts, self.failed = path, smoke, [], []

    def section(self, title: str, body: str, ok: bool = True, seconds: float | None = None) -> None:
        took = f" ({seconds:.0f} s)" if seconds is not None else ""
        self.parts.append(f"## {title}{took}{'' if ok else ' -- FAILED'}\n\n{body.rstrip()}\n")
        if not ok:
            self.failed.append(title)
        print(f"[gpu_check] {title}: {'ok' if ok else 'FAILED'}{took}", flush=True)

    def write(self, argv) -> None:
        head = (f"# GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                f"`python -m benchmarks.gpu_check {' '.join(argv)}`"
                + (" -- a CPU smoke run: tiny shapes, the kernels in Triton's interpreter; the times say "
                   "nothing about GPU speed." if self.smoke else "") + "\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(head + "\n" + "\n".join(self.parts), encoding="utf-8")


def run_cmd(cmd, env=None, timeout=600) -> tuple[bool, str]:
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return False, f"timed out after {timeout} s\n{(e.stdout or '')[-3000:]}"
    out = (p.stdout + p.stderr)
    lines = [ln for ln in out.splitlines() if "nanobind" not in ln and "leaked" not in ln]
    return p.returncode == 0, "\n".join(lines[-60:])


def tokenizer_dir() -> str:
    """The shipped tokenizer, unpacked once into a temporary folder."""
    d = Path(tempfile.mkdtemp(prefix="dlab-tok-"))
    with gzip.open(GPU_DIR / "tokenizer.json.gz", "rb") as src, open(d / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(GPU_DIR / name, d / name)
    return str(d)


def random_lm(config_name: str, device, dtype, tok_dir: str):
    """A random-weight model of a shipped config, as the engine's LM."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine import attention, models
    raw = json.loads((GPU_DIR / config_name).read_text())
    raw.pop("_comment", None)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    raw["vocab_size"] = len(tok)
    cfg = LlamaConfig(**raw, bos_token_id=tok.bos_token_id or 1, eos_token_id=tok.eos_token_id or 2,
                      pad_token_id=tok.eos_token_id or 2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    attention.install(model)
    return models.LM(model=model, tokenizer=tok, name=f"random {config_name[:-5]}", device=torch.device(device),
                     dtype=dtype, is_instruct=True, lock=threading.RLock())


def sync(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def ar_vs_hf(lm, tokens: int, repeats: int) -> tuple[str, bool]:
    import torch

    from engine import run
    ids = lm.encode(PROMPT)
    hf_t, ours_t, same = [], [], True
    for r in range(repeats + 1):      # the first round warms up
        sync(lm.device)
        t = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                    min_new_tokens=tokens, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
        sync(lm.device)
        t_hf = time.perf_counter() - t
        t = time.perf_counter()
        tr = run.run(lm, "ar", PROMPT, max_new_tokens=tokens, ignore_eos=True, record=False)
        sync(lm.device)
        t_ours = time.perf_counter() - t
        if r:
            hf_t.append(t_hf)
            ours_t.append(t_ours)
            same &= out[0, ids.shape[1]:].tolist() == tr.final_ids
    hf, ours = tokens / statistics.median(hf_t), tokens / statistics.median(ours_t)
    body = (f"| {lm.name} | {tokens} | {hf:.1f} | {ours:.1f} | **{ours / hf:.3f}x** | {same} |")
    return body, same


def tree_costs(lm, sizes, prefix: int, repeats: int) -> list[str]:
    """ms per verification forward of a tree of n nodes after `prefix` cached tokens, kernels on and off."""
    import torch
    from transformers import DynamicCache

    from engine.methods.speculative.trees import tree_mask
    from kernels import dispatch as KD
    rows = []
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(lm.tokenizer), (1, prefix), generator=g).to(lm.device)
    with torch.inference_mode():
        base = DynamicCache()
        lm.model(input_ids=ids, past_key_values=base, use_cache=True)
    for n in sizes:
        parents = [-1] + [(i - 1) // 2 for i in range(1, n)]        # a binary heap: bushy, like EAGLE's trees
        depth = [0] * n
        for i in range(1, n):
            depth[i] = depth[parents[i]] + 1
        tok = torch.randint(0, len(lm.tokenizer), (1, n), generator=g).to(lm.device)
        pos = torch.tensor([[prefix + d for d in depth]], device=lm.device)
        times, logits = {}, {}
        for path in ("kernel", "torch"):
            if path == "kernel" and not KD.enabled(lm.device):
                continue
            ts = []
            for r in range(repeats + 1):
                cache = DynamicCache()
                for li, layer in enumerate(base.layers):
                    cache.update(layer.keys.clone(), layer.values.clone(), li)
                sync(lm.device)
                t = time.perf_counter()
                with torch.inference_mode():
                    if path == "kernel":
                        from engine import attention
                        vis = KD.Tree.from_parents(parents, device=lm.device)
                        with attention.kernels(lm.model):
                            o = lm.model(input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True,
                                         tree_visibility=vis, logits_to_keep=n)
                    else:
                        mask = tree_mask(parents, prefix, lm.model.dtype, lm.device)
                        o = lm.model(input_ids=tok, position_ids=pos, attention_mask=mask, past_key_values=cache,
                                     use_cache=True, logits_to_keep=n)
                sync(lm.device)
                if r:
                    ts.append((time.perf_counter() - t) * 1000)
            times[path] = statistics.median(ts)
            logits[path] = o.logits.float()
        k, ref = times.get("kernel"), times["torch"]
        kern = "-" if k is None else f"{k:.2f}"
        ratio = "-" if k is None else f"{ref / k:.2f}x"
        diff = "-" if k is None else f"{float((logits['kernel'] - logits['torch']).abs().max()):.1e}"
        rows.append(f"| {lm.name} | {n} | {ref:.2f} | {kern} | {ratio} | {diff} |")
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (checks the script)")
    ap.add_argument("--out", default=None, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                                "a temporary file with --cpu-smoke)")
    ap.add_argument("--skip-tests", action="store_true", help="skip step 2 (the kernel tests)")
    a = ap.parse_args(argv)
    import torch
    smoke = a.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("No CUDA device here: run with --cpu-smoke to check the script on a CPU.")
        return 2
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp()) / "results_gpu_smoke.md" if smoke else DEFAULT_OUT)
    rep = Report(out, smoke)
    t0 = time.time()

    # 1. the machine
    import transformers
    try:
        import triton
        triton_v = triton.__version__
    except Exception as e:  # noqa: BLE001
        triton_v = f"not importable ({type(e).__name__})"
    dev = "cpu" if smoke else "cuda"
    name = "CPU (smoke)" if smoke else torch.cuda.get_device_name()
    mem = "" if smoke else f", {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
    rep.section("Machine", f"{name}{mem}; torch {torch.__version__}, triton {triton_v}, transformers "
                           f"{transformers.__version__}, python {sys.version.split()[0]}")

    # 2. the kernel tests, compiled (GPU) or interpreted (smoke: a few)
    if not a.skip_tests:
        t = time.time()
        env = dict(os.environ)
        if smoke:
            env["TRITON_INTERPRET"] = "1"
            sel = "matches_reference and float32"
        else:
            env.pop("TRITON_INTERPRET", None)
            env["DECODING_LAB_KERNEL_DEVICE"] = "cuda"
            sel = KERNEL_TESTS_GPU
        ok, text = run_cmd([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "interp or not interp",
                            "tests/test_kernels_interp.py", "-k", sel], env=env, timeout=300)
        rep.section("Kernel tests " + ("(interpreted, a subset)" if smoke else "(compiled for this GPU)"),
                    "```\n" + text + "\n```", ok, time.time() - t)

    # 3. kernels vs torch references
    t = time.time()
    env = dict(os.environ)
    if smoke:
        env["TRITON_INTERPRET"] = "1"
    ok, text = run_cmd([sys.executable, "-m", "benchmarks.kernels", *(["--smoke"] if smoke else ["--quick", "--dtype", "bf16"])],
                       env=env, timeout=300)
    rep.section("Kernels vs their torch references (x > 1: the kernel is faster)", "```\n" + text + "\n```", ok,
                time.time() - t)

    # 4. random-weight models: engine AR vs HF generate, tree verification cost vs tree size
    tok_dir = tokenizer_dir()
    shapes = ["tiny.json"] if smoke else ["llama-3.2-1b.json", "llama-3.1-8b.json"]
    dtype = torch.float32 if smoke else torch.bfloat16
    tokens, repeats = (8, 1) if smoke else (128, 3)
    sizes, prefix = ([1, 4, 16], 32) if smoke else ([1, 4, 16, 64], 512)
    ar_rows, tree_rows = [], []
    for shape in shapes:
        t = time.time()
        try:
            lm = random_lm(shape, dev, dtype, tok_dir)
            row, same = ar_vs_hf(lm, tokens, repeats)
            ar_rows.append(row)
            tree_rows += tree_costs(lm, sizes, prefix, repeats if smoke else 10)
            ok = same
            del lm
            if not smoke:
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 -- recorded, the other shapes still run
            ar_rows.append(f"| {shape} | error: {type(e).__name__}: {str(e)[:200]} | | | | |")
            ok = False
        print(f"[gpu_check] {shape}: {time.time() - t:.0f} s", flush=True)
    rep.section("Engine AR vs HF generate (greedy, random weights, "
                f"{'fp32' if smoke else 'bf16'}; target >= 0.95x on the 8B shape)",
                "| model | new tokens | HF generate tok/s | engine tok/s | engine / HF | same ids |\n"
                "|---|---|---|---|---|---|\n" + "\n".join(ar_rows), all("error" not in r and "False" not in r
                                                                        for r in ar_rows))
    rep.section(f"Tree verification: ms per forward after a {prefix}-token prefix (binary-heap trees)",
                "| model | tree nodes | torch SDPA + 4D mask | Triton tree kernel | torch / kernel | max logit diff |\n"
                "|---|---|---|---|---|---|\n" + "\n".join(tree_rows))
    rep.section("Total", f"{time.time() - t0:.0f} s")
    rep.write(argv)
    print(f"[gpu_check] results in {out}" + (f"; FAILED: {', '.join(rep.failed)}" if rep.failed else ""))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
