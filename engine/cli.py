"""Command line: `python -m engine generate|methods|bench ...`.

Every option a registered method declares becomes a flag (`top_candidates` -> `--top-candidates`),
with its allowed values in the help, so adding a method (or a drafter, a KV policy, a remasking rule)
adds its flags here without editing this file. Values are checked by the method's typed specs
before the model loads; an error names the flag and what it accepts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from engine import methods
from engine.errors import LabError, OptionError
from engine.models import DTYPES, EMBEDDED

DEBUG_ENV = "DECODING_LAB_DEBUG"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _typed(kind, what: str, lo=None, hi=None, lo_open=False):
    """An argparse type that names what it expects (argparse prefixes the flag)."""
    def parse(text: str):
        try:
            v = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}") from None
        if kind is float and v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}")
        return v
    return parse


def models_placements() -> tuple:
    from engine.models import PLACEMENTS
    return PLACEMENTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="The decoding lab's engine.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="decode a prompt with a method and print the text and counters")
    g.add_argument("--method", default="ar", help="one of: " + ", ".join(sorted(methods.all_methods())))
    g.add_argument("--prompt", required=True)
    g.add_argument("--model", default=EMBEDDED)
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default=None, choices=["auto", *DTYPES])
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code")
    g.add_argument("--device-map", default=None, choices=list(models_placements()),
                   help="place a big model across the GPUs (and CPU / disk offload) with accelerate")
    g.add_argument("--quantization", default=None, choices=["8bit", "4bit"],
                   help="load the weights in 8 or 4 bits (bitsandbytes, CUDA GPU)")
    g.add_argument("--max-new-tokens", type=_typed(int, f"an integer in 1..{methods.MAX_NEW_TOKENS}", 1,
                                                   methods.MAX_NEW_TOKENS), default=64)
    g.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    g.add_argument("--ignore-eos", action="store_true", help="keep decoding after an end-of-text token")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    g.add_argument("--temperature", type=_typed(float, "a number >= 0 (0 = greedy)", 0.0), default=0.0)
    g.add_argument("--top-k", type=_typed(int, "an integer >= 0 (0 = off)", 0), default=0)
    g.add_argument("--top-p", type=_typed(float, "a number in (0, 1]", 0.0, 1.0, lo_open=True), default=1.0)
    g.add_argument("--min-p", type=_typed(float, "a number in [0, 1)", 0.0, 1.0), default=0.0)
    g.add_argument("--typical-p", type=_typed(float, "a number in (0, 1]", 0.0, 1.0, lo_open=True), default=1.0)
    g.add_argument("--seed", type=_typed(int, "an integer >= 0", 0), default=0)
    g.add_argument("--trace-out", default=None, help="write the trace JSON here (checked before the run)")
    g.add_argument("--json", action="store_true", help="print the counters as JSON")
    owners: dict[str, list[str]] = {}
    first: dict = {}
    for spec in methods.all_methods().values():
        for name, opt in spec.options.items():
            owners.setdefault(name, []).append(spec.name)
            first.setdefault(name, opt)
    for name, opt in first.items():
        help_ = f"[{', '.join(owners[name])}] {opt.describe()}"
        g.add_argument(_flag(name), dest="opt_" + name, default=None, metavar="VALUE",
                       help=help_.replace("%", "%%"))  # argparse %-formats help
    sub.add_parser("methods", help="list every method and its options")
    b = sub.add_parser("bench", help="run the benchmark suite")
    b.add_argument("--suite", default="default")
    b.add_argument("--out", default="benchmarks")
    return p


def cmd_methods() -> int:
    for spec in sorted(methods.all_methods().values(), key=lambda s: (s.family, s.name)):
        tag = "lossless" if spec.lossless else "lossy"
        print(f"{spec.name}  [{spec.family}, {tag}]  {spec.description}")
        for name, opt in spec.options.items():
            print(f"    {_flag(name):<28} default {opt.default!r:<16} {opt.describe()}")
    return 0


def method_options(a, spec) -> dict:
    """The flags given for `spec`'s options, coerced and checked; errors name the flag."""
    given = {k[4:]: v for k, v in vars(a).items() if k.startswith("opt_") and v is not None}
    foreign = sorted(set(given) - set(spec.options))
    if foreign:
        raise OptionError(f"Option(s) {', '.join(_flag(f) for f in foreign)} do not apply to method '{spec.name}'.")
    try:
        given = {name: spec.options[name].parse(name, text) for name, text in given.items()}
        values = spec.values(given)
    except OptionError as e:
        msg = str(e)
        for name in given:
            if msg.startswith(name):
                msg = _flag(name) + msg[len(name):]
                break
        raise OptionError(msg) from None
    for name, why in spec.ignored(given, values).items():
        print(f"note: {_flag(name)}: {why}", file=sys.stderr)
    return given


def check_trace_out(path: str | None) -> None:
    """Refuse an unusable --trace-out before the run, so no generated text is lost to it."""
    if not path:
        return
    if os.path.isdir(path):
        raise OptionError(f"--trace-out {path!r} is a directory; give a file name such as {os.path.join(path, 'trace.json')!r}.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OptionError(f"--trace-out: the directory {parent!r} does not exist.")
    if not os.access(parent, os.W_OK):
        raise OptionError(f"--trace-out: the directory {parent!r} is not writable.")


def cmd_generate(a) -> int:
    from engine import models, run
    from engine.sampling import SamplingConfig

    spec = methods.get(a.method)
    opts = method_options(a, spec)
    check_trace_out(a.trace_out)
    temperature = 0.0 if a.greedy else a.temperature
    cfg = SamplingConfig(temperature=temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                         typical_p=a.typical_p, seed=a.seed)
    lm = models.load(a.model, device=a.device, dtype=a.dtype, trust_remote_code=a.trust_remote_code,
                     device_map=a.device_map, quantization=a.quantization)
    trace = run.run(lm, a.method, a.prompt, max_new_tokens=a.max_new_tokens, sampling=cfg, options=opts,
                    chat=False if a.no_chat else None, ignore_eos=a.ignore_eos)
    c = trace.counters.as_dict()
    c.update(trace.extra.get("summary", {}))
    if a.json:
        print(json.dumps({"text": trace.final_text, "counters": c}, default=str))
    else:
        print(trace.final_text)
        print("---")
        for k, v in c.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    if a.trace_out:  # after the text is out: a failure here loses nothing
        try:
            trace.save(a.trace_out)
        except OSError as e:
            print(f"error: the trace could not be written to {a.trace_out!r}: {e.strerror or e}", file=sys.stderr)
            return 2
        if not a.json:
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
    except LabError as e:  # our errors carry readable messages
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so plainly; the traceback on request
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"internal error ({type(e).__name__}: {str(e)[:300]}); run with {DEBUG_ENV}=1 for the traceback",
              file=sys.stderr)
        return 1
    return 1
