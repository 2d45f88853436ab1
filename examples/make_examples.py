"""Regenerate the example traces shipped for the Replay view (one per family) and the Lessons page.

    python examples/make_examples.py [name ...]
"""
from __future__ import annotations

import os
import sys


from engine import methods, models, run
from engine.sampling import SamplingConfig

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traces")
LESSONS_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lessons")
HOT = {"temperature": 0.8, "seed": 1}
HOT_TOP_P = {"temperature": 0.9, "top_p": 0.8, "seed": 3}

# name -> (method, prompt, max_new_tokens, options); options only for methods that exist
EXAMPLES = {
    "autoregressive": ("ar", "Explain in two sentences why the sky is blue.", 40, {}),
    "speculative_prompt_lookup": ("speculative", "Repeat this sentence exactly: the quick brown fox jumps over "
                                  "the lazy dog near the quiet river bank.", 40, {"drafter": "prompt_lookup"}),
    "kv_h2o": ("kv", "Write a short story about a robot who learns to paint.", 40,
               {"policy": "h2o", "budget": 32}),
    "jacobi": ("jacobi", "Count from one to twenty in words.", 32, {}),
    "lookahead": ("lookahead", "Count from one to twenty in words.", 32, {}),
    "diffusion_low_confidence": ("diffusion", "Write a sentence about the sea.", 32, {}),
}


# the Lessons page's traces (ui/lessons.py finds the step each part is about): name -> (..., sampling)
LESSONS = {
    "ar_greedy": ("ar", "Why do cats purr? Answer in two sentences.", 40, {}, {}),
    "ar_sampled": ("ar", "Why do cats purr? Answer in two sentences.", 40, {}, HOT_TOP_P),
    "spec_greedy": ("speculative", "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near "
                    "the quiet river bank.", 40, {"drafter": "prompt_lookup"}, {}),
    "spec_sampled": ("speculative", "Write a short poem about the sea.", 40,
                     {"drafter": "early_exit", "tree": "2.2", "num_assistant_tokens": 3}, HOT),
    "kv_eviction": ("kv", "Write a short story about a robot who learns to paint.", 40,
                    {"policy": "h2o", "budget": 24, "watch_layers": "mid"}, {}),
    "jacobi_blocks": ("jacobi", "List the days of the week, separated by commas.", 32,
                      {"variant": "gauss_seidel", "block_size": 8}, {}),
    "lookahead_pool": ("lookahead", "Count from one to twenty in words.", 32, {}, {}),
    "diffusion_one": ("diffusion", "Write one sentence about a violin.", 32, {"rule": "low_confidence"}, {}),
    "diffusion_threshold": ("diffusion", "Write a short story about a lost cat.", 64,
                            {"rule": "threshold", "threshold": 0.7, "adapter": "embedded-fast"}, {}),
    "search_beam": ("beam", "Give three tips for staying focused while studying.", 24, {"num_beams": 4}, {}),
    "search_contrastive": ("contrastive", "Explain in two sentences why the sky is blue.", 24,
                           {"penalty_alpha": 0.6, "num_candidates": 4}, {}),
    "search_cad": ("cad", "Where is the Eiffel Tower? Answer in one sentence.", 24,
                   {"context": "The Eiffel Tower was moved to Rome in 2031, where it now stands beside the Colosseum.",
                    "alpha": 0.5}, {}),
    "search_cautious": ("cautious", "Explain in two sentences why the sky is blue.", 40, {}, {}),
    "search_grammar": ("grammar", "Describe a person called Ada Lovelace as JSON.", 48, {}, {}),
}


def _write(tr, out_dir, name):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    tr.save(path)
    print(f"{name}: {len(tr.steps)} steps, {os.path.getsize(path) / 1024:.0f} KiB -> {path}")


def main(which=None):
    lm = models.load(models.EMBEDDED, device="cpu")
    known = methods.all_methods()
    for name, (method, prompt, n, opts) in EXAMPLES.items():
        if which and name not in which:
            continue
        if method not in known:
            print(f"skip {name}: method {method} not available")
            continue
        opts = {k: v for k, v in opts.items() if k in known[method].options}
        _write(run.run(lm, method, prompt, max_new_tokens=n, options=opts), OUT, name)
    for name, (method, prompt, n, opts, sampling) in LESSONS.items():
        if which and name not in which:
            continue
        tr = run.run(lm, method, prompt, max_new_tokens=n, options=opts, sampling=SamplingConfig(**sampling))
        _write(tr, LESSONS_OUT, name)


if __name__ == "__main__":
    main(sys.argv[1:] or None)
