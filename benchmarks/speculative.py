"""Speculative decoding on the embedded model, CPU, greedy: per drafter tau, target forwards per
token, tokens/s and speedup vs our autoregressive method in the same run, and Hugging Face
assisted generation (prompt lookup; assistant_model with the same draft) on the same prompts.

    python -m benchmarks.speculative [--new 64] [--repeats 1] [--only prompt_lookup,draft_model]
    python -m benchmarks.speculative --suite heads     # trained heads on open-ended prompts (spec_heads.py)

Speeds are wall-clock tokens/s of whole generate calls (ours: engine.run.run with record=False,
so no step details are built), the best of --repeats runs. Outputs are checked token for token
against our autoregressive greedy output.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import cpu_linear, models, run  # noqa: E402
from engine.methods import speculative as spec  # noqa: E402

PROMPTS = {
    "summarise": (
        "Summarise the following text, reusing its wording.\n\nThe river rises in the hills north of the town and "
        "flows south through farmland before reaching the sea. In spring the river floods the low fields, and "
        "farmers plant rice in the flooded fields. In summer the river is low and the fields are dry, so farmers "
        "grow beans and maize. In autumn the farmers harvest the rice, the beans and the maize, and sell them at "
        "the market in the town."),
    "proofread": (
        "Correct the spelling mistakes in this paragraph and write out the corrected paragraph.\n\nThe comittee met "
        "on Tuesday to discuss the new libary. Members agreed that the libary should open earlier in the morning and "
        "close later in the evening, so that students can study after their clases."),
    "open_ended": "Write a short story about a robot who learns to paint.",
}
GROUNDED = ("summarise", "proofread")

CONFIGS = [
    ("prompt_lookup", {"drafter": "prompt_lookup"}),
    ("prompt_lookup k=5", {"drafter": "prompt_lookup", "prompt_lookup_num_tokens": 5}),
    ("prompt_lookup heuristic", {"drafter": "prompt_lookup", "schedule": "heuristic", "prompt_lookup_num_tokens": 4}),
    ("prompt_lookup tree", {"drafter": "prompt_lookup", "tree": "dynamic", "tree_budget": 24}),
    ("token_recycling 2.2.2", {"drafter": "token_recycling", "tree": "2.2.2"}),
    ("trigram", {"drafter": "trigram", "num_assistant_tokens": 4}),
    ("draft_model self:24", {"drafter": "draft_model", "draft_model": "self:24", "num_assistant_tokens": 4}),
    ("early_exit 24", {"drafter": "early_exit", "exit_layer": 24, "num_assistant_tokens": 4}),
    ("layer_skip", {"drafter": "layer_skip", "num_assistant_tokens": 4}),
    ("kangaroo 24", {"drafter": "kangaroo", "exit_layer": 24, "num_assistant_tokens": 4}),
]


def best_of(n, fn):
    best = None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        if best is None or dt < best[0]:
            best = (dt, out)
    return best


def hf_generate(lm, prompt, new, **kw):
    ids = lm.encode(prompt)
    with torch.inference_mode(), cpu_linear.stock(lm.model, kw.get("assistant_model")):   # HF as it ships: plain nn.Linear
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                pad_token_id=lm.tokenizer.eos_token_id, **kw)
    return out[0, ids.shape[1]:].tolist()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=None, help="new tokens (default 64; 96 with --suite heads)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated config names (prefix match)")
    ap.add_argument("--prompts", default=",".join(PROMPTS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--suite", choices=("grounded", "heads"), default="grounded",
                    help="heads: trained draft heads vs the other drafters on open-ended held-out prompts "
                         "(benchmarks/spec_heads.py)")
    ap.add_argument("--n-prompts", type=int, default=4, help="--suite heads: how many held-out prompts")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    lm = models.load(models.EMBEDDED, device="cpu")
    if a.suite == "heads":
        from benchmarks.spec_heads import run_suite
        a.new = a.new or 96
        return run_suite(a, lm)
    a.new = a.new or 64
    configs = [c for c in CONFIGS if not a.only or any(c[0].startswith(o) for o in a.only.split(","))]
    print(f"# speculative decoding benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"model {lm.name} on {lm.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}), greedy, {a.new} new tokens, "
          f"best of {a.repeats}")
    rows = []
    run.run(lm, "ar", "warm up", max_new_tokens=4, record=False)
    for pname in a.prompts.split(","):
        prompt = PROMPTS[pname]
        dt, ar = best_of(a.repeats, lambda: run.run(lm, "ar", prompt, max_new_tokens=a.new, record=False))
        n = len(ar.final_ids)
        ar_tps = n / dt
        rows.append((pname, "ours: autoregressive", 1.0, 1.0, ar_tps, 1.0, True))
        dt_hf, hf_ids = best_of(a.repeats, lambda: hf_generate(lm, prompt, a.new))
        rows.append((pname, "HF generate greedy", None, None, len(hf_ids) / dt_hf, (len(hf_ids) / dt_hf) / ar_tps,
                     hf_ids == ar.final_ids))
        for name, opts in configs:
            dt, tr = best_of(a.repeats, lambda: run.run(lm, "speculative", prompt, max_new_tokens=a.new,
                                                        options=opts, record=False))
            s = tr.extra["summary"]
            tps = len(tr.final_ids) / dt
            rows.append((pname, f"ours: {name}", s["tau"], s["target_forwards_per_token"], tps, tps / ar_tps,
                         tr.final_ids == ar.final_ids))
            if name == "prompt_lookup":  # HF with the same k and n-gram size
                dt_h, ids = best_of(a.repeats, lambda: hf_generate(lm, prompt, a.new, prompt_lookup_num_tokens=10,
                                                                   max_matching_ngram_size=3))
                rows.append((pname, "HF prompt_lookup_num_tokens=10", None, None, len(ids) / dt_h,
                             (len(ids) / dt_h) / ar_tps, ids == ar.final_ids))
            if name.startswith("draft_model"):
                draft = spec.truncated_view(lm, 24)
                try:
                    dt_h, ids = best_of(a.repeats, lambda: hf_generate(lm, prompt, a.new, assistant_model=draft.model,
                                                                       num_assistant_tokens=4,
                                                                       num_assistant_tokens_schedule="constant"))
                    rows.append((pname, "HF assistant_model=self:24", None, None, len(ids) / dt_h,
                                 (len(ids) / dt_h) / ar_tps, ids == ar.final_ids))
                except Exception as e:  # report, do not hide
                    rows.append((pname, f"HF assistant_model failed: {type(e).__name__}: {str(e)[:60]}", None, None,
                                 0.0, 0.0, False))
            print(f"  ... {pname} {name}: {tps:.1f} tok/s", flush=True)
    print()
    print("| prompt | method | tau | target fwd / token | tokens/s | speedup vs our AR | = AR greedy |")
    print("|---|---|---|---|---|---|---|")
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    for p, m, tau, fpt, tps, sp, same in rows:
        print(f"| {p} | {m} | {f(tau)} | {f(fpt)} | {tps:.1f} | {sp:.2f}x | {'yes' if same else 'NO'} |")
    grounded = [r for r in rows if r[0] in GROUNDED]
    pl = [r[5] for r in grounded if r[1] == "ours: prompt_lookup"]
    hf = [r[5] for r in grounded if r[1].startswith("HF prompt_lookup")]
    if pl:
        print(f"\ninput-grounded prompts: ours prompt lookup {sum(pl) / len(pl):.2f}x vs AR; "
              f"HF prompt lookup {sum(hf) / max(1, len(hf)):.2f}x vs our AR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
