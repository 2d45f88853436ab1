"""What each page's default prompt and settings show on the embedded model, measured (issue 30): one run per page
default, against autoregressive decoding of the same prompt (load-independent figures only). The pages print these lines under
their header (ui/common.page_header reads benchmarks/page_defaults.json), so no number there is hand-typed.

    .venv/bin/python -m benchmarks.page_defaults        # writes page_defaults.json and results_page_defaults.md

PAGES below mirrors the pages' defaults (their DEFAULT_PROMPT, max-new-tokens widget default and the method's
registered option defaults); tests/test_page_defaults.py checks that it still does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_JSON = HERE / "page_defaults.json"
OUT_MD = HERE / "results_page_defaults.md"
AR_PROMPT = "Explain in two sentences why the sky is blue."          # ui/common.py DEFAULT_PROMPT


def _page_prompt(name: str) -> str:
    """A page's DEFAULT_PROMPT, read from its source (the page itself runs Streamlit when imported)."""
    import ast
    tree = ast.parse((HERE.parent / "pages" / name).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULT_PROMPT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{name} has no DEFAULT_PROMPT")


def pages() -> dict:
    """page title -> (method(s), prompt, max new tokens)."""
    jl = _page_prompt("4_Jacobi_Lookahead.py")
    return {
        "Autoregressive": (["ar"], AR_PROMPT, 64),
        "Speculative decoding": (["speculative"], _page_prompt("2_Speculative.py"), 48),
        "KV cache": (["kv"], _page_prompt("3_KV_Cache.py"), 32),
        "Jacobi & lookahead": (["jacobi", "lookahead"], jl, 48),
        "Diffusion": (["diffusion"], "Write a short story about a lost cat.", 32),
        "Search": (["beam"], AR_PROMPT, 32),
    }


def _line(method: str, tr, ar, lm) -> str:
    from engine import quality
    c = tr.counters
    same = quality.first_divergence(tr.final_ids, ar.final_ids) is None
    s = tr.extra.get("summary", {}) or {}
    tpf = c.generated_tokens / max(1, c.target_forwards)
    if method == "ar":
        return f"{c.generated_tokens} tokens in {c.target_forwards} forwards: one forward per token"
    if method == "speculative":
        return (f"{s.get('drafter', 'the default drafter')} committed {tpf:.2f} tokens per target forward "
                f"(tau: target forwards are {1 / tpf:.0%} of autoregressive decoding's); output "
                f"{'identical to' if same else 'different from'} greedy")
    if method == "kv":
        return (f"{s.get('policy')} with budget {s.get('budget')}: the cache ends at {s.get('cache_len')} entries "
                f"per layer ({s.get('kv_bytes_kept', 0) / max(1, s.get('kv_bytes_full', 1)):.0%} of the full "
                f"cache's bytes), {s.get('evicted_entries', 0)} entries evicted, next-token agreement with the full "
                f"cache {s.get('agreement_vs_full', 0):.0%}, perplexity {s.get('ppl') or 0:.2f} vs "
                f"{s.get('ppl_full') or 0:.2f} with the full cache")
    if method in ("jacobi", "lookahead"):
        name = "Jacobi" if method == "jacobi" else "lookahead"
        return (f"{name} {tpf:.2f} tokens per forward; output "
                f"{'identical to' if same else 'different from'} greedy")
    if method == "diffusion":
        return (f"{s.get('rule')}: {c.generated_tokens} tokens in {s.get('steps')} steps "
                f"({s.get('tokens_per_step', 0):.2f} tokens per step, one forward each)")
    if method == "beam":
        judged = quality.judged_perplexity(lm, tr.meta["prompt_ids"], tr.final_ids)
        judged_ar = quality.judged_perplexity(lm, ar.meta["prompt_ids"], ar.final_ids)
        return (f"beam search (4 beams): judged perplexity {judged:.2f} vs greedy's {judged_ar:.2f}, each step one "
                f"forward over the 4 beams")
    return ""


def main() -> None:
    import torch

    from engine import models, run
    lm = models.load(models.EMBEDDED, device="cpu")
    run.run(lm, "ar", "warm up", max_new_tokens=4, record=False)
    out = {"measured": time.strftime("%Y-%m-%d"), "command": "python -m benchmarks.page_defaults",
           "threads": torch.get_num_threads(), "pages": {}}
    for title, (methods, prompt, n) in pages().items():
        ar = run.run(lm, "ar", prompt, max_new_tokens=n, record=False)
        lines = []
        for m in methods:
            tr = ar if m == "ar" else run.run(lm, m, prompt, max_new_tokens=n, record=False)
            lines.append(_line(m, tr, ar, lm))
        out["pages"][title] = "; ".join(lines)
        print(f"{title}: {out['pages'][title]}", flush=True)
    OUT_JSON.write_text(json.dumps(out, indent=1) + "\n")
    md = ["## What each page's defaults show (issue 30)", "",
          f"`{out['command']}` on {out['measured']}, embedded SmolLM2-135M, CPU, torch threads {out['threads']}, "
          "greedy, one run per page against autoregressive decoding of the same prompt. Only figures that do not "
          "depend on the CPU's load (tokens per forward, steps, agreement, perplexities, identical or not) are "
          "stated: speeds are in the suite's tables. The pages show these lines under their header.", ""]
    md += [f"- **{t}**: {v}" for t, v in out["pages"].items()]
    OUT_MD.write_text("\n".join(md) + "\n")
    print("wrote", OUT_JSON, OUT_MD)


if __name__ == "__main__":
    main()
