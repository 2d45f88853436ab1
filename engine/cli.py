"""Command line: `python -m engine generate|methods ...`.

Every option a registered method declares becomes a flag (`top_candidates` -> `--top-candidates`),
so adding a method adds its flags here without editing this file.
"""
from __future__ import annotations

import argparse
import json
import sys

from engine import methods


def _convert(value: str, default):
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="The decoding lab's engine.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="decode a prompt with a method and print the text and counters")
    g.add_argument("--method", default="ar")
    g.add_argument("--prompt", required=True)
    g.add_argument("--model", default="smollm2-135m-instruct")
    g.add_argument("--device", default=None)
    g.add_argument("--dtype", default=None)
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--typical-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--trace-out", default=None, help="write the trace JSON here")
    g.add_argument("--json", action="store_true", help="print the counters as JSON")
    seen = set()
    for spec in methods.all_methods().values():
        for name, (default, help_) in spec.options.items():
            if name in seen:
                continue
            seen.add(name)
            g.add_argument("--" + name.replace("_", "-"), dest="opt_" + name, default=None,
                           help=f"{help_} [{spec.name}; default {default}]".replace("%", "%%"))  # argparse %-formats help
    sub.add_parser("methods", help="list every method and its options")
    b = sub.add_parser("bench", help="run the benchmark suite")
    b.add_argument("--suite", default="default")
    b.add_argument("--out", default="benchmarks")
    return p


def cmd_methods() -> int:
    for spec in sorted(methods.all_methods().values(), key=lambda s: (s.family, s.name)):
        tag = "lossless" if spec.lossless else "lossy"
        print(f"{spec.name}  [{spec.family}, {tag}]  {spec.description}")
        for name, (default, help_) in spec.options.items():
            print(f"    --{name.replace('_', '-'):<24} default {default!r:<14} {help_}")
    return 0


def cmd_generate(a) -> int:
    from engine import models, run
    from engine.sampling import SamplingConfig

    spec = methods.get(a.method)
    opts = {}
    for name, (default, _) in spec.options.items():
        v = getattr(a, "opt_" + name, None)
        if v is not None:
            opts[name] = _convert(v, default)
    given = {k[4:] for k, v in vars(a).items() if k.startswith("opt_") and v is not None}
    foreign = given - set(spec.options)
    if foreign:
        raise methods.MethodError(f"Option(s) {', '.join('--' + f.replace('_', '-') for f in sorted(foreign))} "
                                  f"do not apply to method '{a.method}'.")
    temperature = 0.0 if a.greedy else a.temperature
    cfg = SamplingConfig(temperature=temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                         typical_p=a.typical_p, seed=a.seed)
    lm = models.load(a.model, device=a.device, dtype=a.dtype, trust_remote_code=a.trust_remote_code)
    trace = run.run(lm, a.method, a.prompt, max_new_tokens=a.max_new_tokens, sampling=cfg, options=opts,
                    chat=False if a.no_chat else None)
    c = trace.counters.as_dict()
    c.update(trace.extra.get("summary", {}))
    if a.trace_out:
        trace.save(a.trace_out)
    if a.json:
        print(json.dumps({"text": trace.final_text, "counters": c}, default=str))
    else:
        print(trace.final_text)
        print("---")
        for k, v in c.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
        if a.trace_out:
            print(f"trace written to {a.trace_out}")
    return 0


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "methods":
            return cmd_methods()
        if a.cmd == "generate":
            return cmd_generate(a)
        if a.cmd == "bench":
            from benchmarks import harness
            return harness.main(a.suite, a.out)
    except (ValueError, RuntimeError) as e:  # our errors carry readable messages
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1
