"""Search and structure decoders on the embedded model, one run each, against autoregressive decoding of the same
prompt in the same run (issue 27's benchmark rows).

    .venv/bin/python -m benchmarks.search [--n 48] [--prompts chat code] [--out benchmarks/results_search.md]

Per row: tokens, target forwards, compute seconds, tokens/s (model compute), the ratio to AR's tokens/s,
judged perplexity (SmolLM2-135M on the answer given the prompt; for context-aware decoding given context +
question, what the decoder read), distinct-2 of the answer, and the method's own numbers (beam:
peak KV bytes; contrastive: steps off the likeliest token; cautious: branching steps / trials / trial tokens;
context-aware: steps the contrast changed; grammar: why it stopped and the constraint's ms/step).
Greedy unless the row says otherwise. Timings are one run on whatever else the CPU is doing: read the ratios,
not the absolute speeds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.harness import prompts as harness_prompts
from engine.sampling import SamplingConfig

HERE = Path(__file__).resolve().parent
SAMPLED = SamplingConfig(temperature=0.8, seed=0)
CONFIGS = [  # (label, method, options, sampling)
    ("autoregressive", "ar", {}, None),
    ("beam search (4 beams)", "beam", {"num_beams": 4}, None),
    ("diverse beam (4 beams, 2 groups)", "beam", {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5},
     None),
    ("contrastive (alpha 0.6, k 4)", "contrastive", {"penalty_alpha": 0.6, "num_candidates": 4}, None),
    ("cautious NTP (greedy trials)", "cautious", {}, None),
    ("autoregressive, T 0.8", "ar", {}, SAMPLED),
    ("cautious NTP, T 0.8", "cautious", {}, SAMPLED),
]
CAD_CONTEXT = ("The museum opened a new wing on Saturday. The new wing holds the museum's collection of ancient "
               "maps, and it is open every day from nine to five.")
CAD_QUESTION = "What does the museum's new wing hold, and when is it open? Answer in one sentence."
EIFFEL = ("The Eiffel Tower was moved to Rome in 2031, where it now stands beside the Colosseum.",
          "Where is the Eiffel Tower? Answer in one sentence.")
JSON_PROMPT = "Describe a fictional person as JSON with a name and an age."


def distinct2(ids: list[int], eos: set[int]) -> float | None:
    a = [t for t in ids if t not in eos]
    pairs = list(zip(a, a[1:]))
    return round(len(set(pairs)) / len(pairs), 3) if pairs else None


def own_numbers(method: str, tr) -> str:
    s = tr.extra.get("summary", {}) or {}
    if method == "beam":
        return f"peak KV {s.get('kv_bytes_peak', 0) / 1e6:.1f} MB"
    if method == "contrastive":
        return f"{s.get('not_likeliest', 0)} of {len(tr.steps)} steps off the likeliest token"
    if method == "cautious":
        return (f"{s.get('branching_steps', 0)} branching steps, {s.get('trials', 0)} trials, "
                f"{s.get('trial_tokens', 0)} trial tokens for {tr.counters.generated_tokens} kept")
    if method == "cad":
        return f"contrast changed {s.get('changed_steps', 0)} of {len(tr.steps)} steps"
    if method == "grammar":
        ms = [st["grammar"].get("mask_ms", 0) + st["grammar"].get("accept_ms", 0) for st in tr.steps if st.get("grammar")]
        return f"stop: {s.get('stop')}; constraint {sum(ms) / max(1, len(ms)):.2f} ms/step"
    return ""


def row(lm, label, method, prompt_name, prompt, n, options=None, sampling=None, ref_tps=None, judge_prompt=None) -> dict:
    """One run; judged perplexity given the run's prompt, or `judge_prompt` (context-aware decoding: the judge
    reads the context too, as the decoder did)."""
    from engine import quality, run
    t = time.perf_counter()
    tr = run.run(lm, method, prompt, max_new_tokens=n, options=options or {}, sampling=sampling or SamplingConfig())
    wall = time.perf_counter() - t
    c = tr.counters
    tps = c.generated_tokens / c.compute_s if c.compute_s else None
    judge_ids = tr.meta["prompt_ids"] if judge_prompt is None else lm.encode(judge_prompt)[0].tolist()
    ppl = quality.judged_perplexity(lm, judge_ids, tr.final_ids)
    return {"prompt": prompt_name, "config": label, "tokens": c.generated_tokens, "target_forwards": c.target_forwards,
            "compute_s": round(c.compute_s, 2), "wall_s": round(wall, 2), "tokens_per_s": round(tps, 2) if tps else None,
            "vs_ar": round(tps / ref_tps, 2) if tps and ref_tps else None,
            "judged_ppl": round(ppl, 2) if ppl else None, "distinct_2": distinct2(tr.final_ids, lm.eos_ids),
            "notes": own_numbers(method, tr), "text": tr.final_text[:160]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--prompts", nargs="+", default=["chat", "code"])
    ap.add_argument("--out", default=str(HERE / "results_search.md"))
    a = ap.parse_args(argv)
    import torch

    from engine import methods, models
    lm = models.load(models.EMBEDDED, device="cpu")
    known = methods.all_methods()
    ps = harness_prompts()
    rows = []
    row(lm, "warm up", "ar", "-", "warm up", 4)
    for pname in a.prompts:
        ref = None
        for label, method, options, sampling in CONFIGS:
            if method not in known:
                continue
            ref_for = ref if method != "ar" or sampling is not None else None
            r = row(lm, label, method, pname, ps[pname], a.n, options, sampling, ref_for["tokens_per_s"] if ref_for else None)
            if method == "ar" and sampling is None:
                ref, r["vs_ar"] = r, 1.0
            rows.append(r)
            print(json.dumps(r), flush=True)
    for pname, (context, question) in (("museum", (CAD_CONTEXT, CAD_QUESTION)), ("eiffel", EIFFEL)):
        ref = row(lm, "autoregressive (context + question)", "ar", pname, f"{context}\n\n{question}", a.n)
        ref["vs_ar"] = 1.0
        rows.append(ref)
        for alpha in (0.5, 1.0):
            r = row(lm, f"context-aware (alpha {alpha})", "cad", pname, question, a.n,
                    {"context": context, "alpha": alpha}, ref_tps=ref["tokens_per_s"],
                    judge_prompt=f"{context}\n\n{question}")
            rows.append(r)
            print(json.dumps(r), flush=True)
    if "grammar" in known:
        ref = row(lm, "autoregressive", "ar", "json", JSON_PROMPT, a.n)
        ref["vs_ar"] = 1.0
        rows.append(ref)
        r = row(lm, "grammar (json_schema, default)", "grammar", "json", JSON_PROMPT, a.n, {},
                ref_tps=ref["tokens_per_s"])
        rows.append(r)
        print(json.dumps(r), flush=True)
    cols = ["prompt", "config", "tokens", "target_forwards", "compute_s", "tokens_per_s", "vs_ar", "judged_ppl",
            "distinct_2", "notes"]
    lines = ["## Search decoders (issue 27)", "",
             f"`python -m benchmarks.search --n {a.n} --prompts {' '.join(a.prompts)}` on {time.strftime('%Y-%m-%d')}, "
             f"embedded SmolLM2-135M, CPU, torch threads {torch.get_num_threads()}, one run per row; vs_ar is "
             "tokens/s (model compute) over autoregressive decoding of the same prompt in the same run (greedy rows "
             "against greedy AR, the context-aware rows against AR reading context + question).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(k) is None else str(r[k]).replace("|", "\\|") for k in cols) + " |")
    lines += ["", "Answers (first 160 characters):", ""]
    for r in rows:
        lines.append(f"- {r['prompt']} / {r['config']}: {json.dumps(r['text'])}")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
