"""The benchmark harness: every method family on a fixed prompt set, one run, ratios vs autoregressive.

    python -m engine bench --suite default      (or: make bench)
writes benchmarks/results_suite.md and benchmarks/suite.csv, then assembles benchmarks/RESULTS.md
from every benchmarks/results_*.md. The per-family scripts use `measure` from here.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUITES = {
    # name -> (prompt set, max_new_tokens)
    "default": (["chat", "code", "summarisation", "long_context"], 48),
    "smoke": (["chat", "summarisation"], 12),
}


def prompts() -> dict[str, str]:
    text = (HERE / "data" / "declaration_of_independence.txt").read_text()
    return {
        "chat": "Give three tips for staying focused while studying.",
        "code": "Write a Python function `merge_sorted(a, b)` that merges two sorted lists into one sorted list, "
                "with a docstring and a short example.",
        "summarisation": "Summarise the following text in two sentences, reusing its wording.\n\nThe museum "
                         "opened a new wing on Saturday. The new wing holds the museum's collection of ancient "
                         "maps, and the new wing is open every day from nine to five. Visitors to the new wing "
                         "can see the ancient maps up close, and guides in the new wing explain how the ancient "
                         "maps were drawn.",
        "long_context": "Read this document and answer: what does it say about the course of human events?\n\n"
                        + text[:3000],
    }


def measure(lm, method: str, prompt: str, max_new_tokens: int, options: dict | None = None,
            ref_ids: list[int] | None = None, judge=None, record: bool = False) -> dict:
    """One run of a method: tokens, forwards, tau, compute seconds, tokens/s, identical-to-reference."""
    from engine import quality, run

    t = time.perf_counter()
    tr = run.run(lm, method, prompt, max_new_tokens=max_new_tokens, options=options or {}, record=record)
    wall = time.perf_counter() - t
    c = tr.counters
    row = {
        "method": method, "options": " ".join(f"{k}={v}" for k, v in (options or {}).items()),
        "tokens": c.generated_tokens, "target_forwards": c.target_forwards, "draft_forwards": c.draft_forwards,
        "tau": round(c.generated_tokens / c.target_forwards, 3) if c.target_forwards else None,
        "compute_s": round(c.compute_s, 3), "wall_s": round(wall, 3),
        "tokens_per_s": round(c.generated_tokens / c.compute_s, 2) if c.compute_s else None,
        "lossless": tr.meta.get("lossless"),
        "identical_to_greedy": (quality.first_divergence(tr.final_ids, ref_ids) is None) if ref_ids is not None
        else None,
        "judged_ppl": round(quality.judged_perplexity(judge, tr.meta["prompt_ids"], tr.final_ids) or 0, 2)
        if judge is not None else None,
        "final_ids": tr.final_ids,
    }
    return row


def run_suite(suite: str = "default", out_dir: str | os.PathLike = HERE) -> list[dict]:
    from engine import models, presets

    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    names, n = SUITES[suite]
    lm = models.load(models.EMBEDDED, device="cpu")
    ps = prompts()
    avail = presets.available()
    rows = []
    measure(lm, "ar", "warm up", 4)
    for pname in names:
        prompt = ps[pname]
        ref = measure(lm, "ar", prompt, n, judge=lm)
        ref["identical_to_greedy"] = True
        ref_tps = ref["tokens_per_s"]
        for name, p in avail.items():
            try:
                row = ref if p.method == "ar" and not p.options else measure(
                    lm, p.method, prompt, n, p.options, ref_ids=ref["final_ids"], judge=lm)
            except (ValueError, RuntimeError) as e:  # e.g. diffusion weights not trained on this checkout
                print(f"{pname:<14}{name:<36} error: {e}", flush=True)
                rows.append({"prompt": pname, "config": name, "error": str(e)[:200]})
                continue
            row = dict(row, prompt=pname, config=name)
            row["speedup_vs_ar"] = round(row["tokens_per_s"] / ref_tps, 2) if row["tokens_per_s"] and ref_tps else None
            rows.append(row)
            print(f"{pname:<14}{name:<36} tau {row['tau']!s:>6}  tok/s {row['tokens_per_s']!s:>7}  "
                  f"x{row['speedup_vs_ar']!s:>5}  identical {row['identical_to_greedy']}  ppl {row['judged_ppl']}",
                  flush=True)
    write(rows, suite, Path(out_dir), lm)
    return rows


COLUMNS = ["prompt", "config", "tokens", "target_forwards", "draft_forwards", "tau", "compute_s", "tokens_per_s",
           "speedup_vs_ar", "identical_to_greedy", "judged_ppl", "error"]


def write(rows: list[dict], suite: str, out: Path, lm) -> None:
    import torch
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{'suite' if suite == 'default' else 'suite_' + suite}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + ["method", "options", "lossless", "wall_s"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if suite != "default":
        return
    lines = [
        "## Suite: every family on a fixed prompt set",
        "",
        f"`python -m engine bench --suite default` on {time.strftime('%Y-%m-%d')}, model {lm.name}, device "
        f"{lm.device}, torch threads {torch.get_num_threads()}, greedy, {SUITES[suite][1]} new tokens. "
        "tokens/s counts model compute only; speedup is vs autoregressive on the same prompt in the same run; "
        "judged perplexity is the output's perplexity under SmolLM2-135M. Raw rows: benchmarks/suite.csv.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in COLUMNS) + " |")
    (out / "results_suite.md").write_text("\n".join(lines) + "\n")
    assemble(out)


ORDER = ["ar", "page_defaults", "ui", "snapkv", "beam", "search", "grammar", "suite", "speculative", "speculative_heads", "jacobi", "kv", "diffusion",
         "kernels"]


def assemble(out: Path = HERE) -> Path:
    """RESULTS.md = a header + every results_*.md, in a fixed order."""
    parts = sorted(out.glob("results_*.md"), key=lambda p: (ORDER.index(p.stem[8:]) if p.stem[8:] in ORDER else 99,
                                                            p.stem))
    body = ["# Benchmark results", "",
            "Measured on the project's CPU machine (2 cores, no GPU) unless a section says otherwise. Each section "
            "names the command that produced it. Regenerate this file with `python -m benchmarks.harness`.", ""]
    for p in parts:
        body += [p.read_text().strip(), ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(body))
    return path


def main(suite: str = "default", out: str = str(HERE)) -> int:
    run_suite(suite, out)
    return 0


if __name__ == "__main__":
    assemble()
