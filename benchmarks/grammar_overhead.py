"""What the grammar constraint costs a step: the allowed-token mask (compute the bitmask, unpack it over the
~49k-token vocabulary) plus accepting the chosen token, against the model's forward, per grammar kind, on the
embedded model, from one run of this script.

For each kind (JSON schema, regex, EBNF) one greedy grammar-constrained run on the real model gives, per step, the
mask and acceptance times the method measured (engine/methods/grammar.py records them in each step's grammar
block) and the step's compute time (the difference of the steps' running compute totals: the forward, the choice,
the mask and the acceptance); forward = step compute - mask - accept. The run's tokens are then replayed outside
the model loop through xgrammar (the library the method uses, through the method's own Constraint) and, when it is
installed, llguidance, on the same grammar: the two libraries' cost on the same token sequence.

    .venv/bin/python -m benchmarks.grammar_overhead            # (from the repository root; ~1 minute)
    .venv/bin/python -m benchmarks.grammar_overhead --tokens 48 --repeats 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np   # noqa: E402
import torch         # noqa: E402

from engine import models, run                     # noqa: E402
from engine.methods import grammar as G            # noqa: E402

ARITHMETIC = ('root ::= expr\nexpr ::= term (" "? ("+" | "-") " "? term)*\n'
              'term ::= factor (" "? ("*" | "/") " "? factor)*\nfactor ::= [0-9]+ | "(" " "? expr " "? ")"\n')
CASES = {   # kind -> (grammar, prompt)
    "json_schema": (G.DEFAULT_SCHEMA, "Describe a person called Ada Lovelace as JSON."),
    "regex": (r"[A-Z][a-z]+( [a-z]+){2,12}\.", "Describe the sea in one sentence."),
    "ebnf": (ARITHMETIC, "Write the expression (12 + 7) * 3 - 48 / (2 + 6) and nothing else."),
}


def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def replay_xgrammar(lm, kind, grammar, tokens, repeats):
    """The method's own path (engine.methods.grammar.Constraint: xgrammar's bitmask, unpacked, EOS gated)."""
    mask_s = accept_s = 0.0
    for _ in range(repeats):
        con = G.Constraint(G.compile_grammar(lm, kind, grammar), G.vocab_size(lm), lm.eos_ids, lm.eos_ids, "cpu")
        for t in tokens:
            a = time.perf_counter()
            con.allowed()
            b = time.perf_counter()
            assert con.consume(t)
            mask_s += b - a
            accept_s += time.perf_counter() - b
    n = repeats * len(tokens)
    return 1e3 * mask_s / n, 1e3 * accept_s / n


def replay_llguidance(lm, kind, grammar, tokens, repeats):
    """The same with llguidance (when installed): its bitmask unpacked the same way, EOS gated the same way."""
    try:
        import llguidance as llg
        import llguidance.hf
    except ImportError:
        return None
    V = G.vocab_size(lm)
    eos = sorted(lm.eos_ids)
    tok = llguidance.hf.from_tokenizer(lm.tokenizer, n_vocab=V, eos_token=eos)
    if kind == "json_schema":
        definition = llg.LLMatcher.grammar_from_json_schema(grammar, defaults={
            "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    else:
        definition = llg.grammar_from("regex" if kind == "regex" else "ebnf", grammar)
    m0 = llg.LLMatcher(tok, definition, log_level=0)
    assert not m0.is_error(), m0.get_error()
    mask_s = accept_s = 0.0
    for _ in range(repeats):
        m = m0.deep_copy()
        for t in tokens:
            a = time.perf_counter()
            bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), dtype=np.uint8), count=V, bitorder="little")
            mask = bits.view(np.bool_)
            mask[eos] = m.is_accepting()
            torch.from_numpy(mask)
            b = time.perf_counter()
            assert m.consume_token(t)
            mask_s += b - a
            accept_s += time.perf_counter() - b
    n = repeats * len(tokens)
    return 1e3 * mask_s / n, 1e3 * accept_s / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens per run")
    ap.add_argument("--repeats", type=int, default=20, help="replays of each run's tokens per library")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = models.load(models.EMBEDDED, device="cpu")
    print(f"model {lm.name} on {lm.device}, vocabulary {G.vocab_size(lm):,}, torch threads {a.threads}, "
          f"greedy, up to {a.tokens} new tokens; {G.library_version()}")
    rows = []
    for kind, (grammar, prompt) in CASES.items():
        t0 = time.perf_counter()
        tr = run.run(lm, "grammar", prompt, max_new_tokens=a.tokens, options={"grammar_kind": kind, "grammar": grammar})
        wall = time.perf_counter() - t0
        steps = tr.steps
        mask = [s["grammar"]["mask_ms"] for s in steps]
        accept = [s["grammar"]["accept_ms"] for s in steps]
        comp = [1e3 * (steps[i]["totals"]["compute_s"] - steps[i - 1]["totals"]["compute_s"])
                for i in range(1, len(steps))]
        fwd = [c - m - x for c, m, x in zip(comp, mask[1:], accept[1:])]
        tokens = [t for t in tr.final_ids if t not in lm.eos_ids]
        xgr = replay_xgrammar(lm, kind, grammar, tokens, a.repeats)
        llg = replay_llguidance(lm, kind, grammar, tokens, a.repeats)
        rows.append((kind, len(steps), med(mask), statistics.fmean(mask), med(accept), med(fwd), xgr, llg))
        print(f"\n{kind}: {len(steps)} steps in {wall:.1f} s, {tr.extra['summary']['stop']}")
        print(f"  output: {lm.tokenizer.decode(tokens)!r}")
    print("\nin the run (ms per step; the mask's median, and mean including the first, colder, mask):")
    print(f"{'kind':<12} {'steps':>5} {'mask med':>9} {'mask mean':>10} {'accept':>7} {'forward':>8} {'constraint':>11}")
    for kind, n, m, mm, x, f, _, _ in rows:
        print(f"{kind:<12} {n:>5} {m:>9.3f} {mm:>10.3f} {x:>7.3f} {f:>8.2f} {100 * (m + x) / f:>10.2f}%")
    print("\nreplayed outside the model loop, the same tokens (ms per step: mask / accept):")
    print(f"{'kind':<12} {'xgrammar (used)':>18} {'llguidance':>18}")
    for kind, _, _, _, _, _, xgr, llg in rows:
        other = f"{llg[0]:.3f} / {llg[1]:.3f}" if llg else "not installed"
        print(f"{kind:<12} {f'{xgr[0]:.3f} / {xgr[1]:.3f}':>18} {other:>18}")


if __name__ == "__main__":
    main()
