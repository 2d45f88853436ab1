"""Regenerate the example traces shipped for the Replay view (one per family).

    python examples/make_examples.py [family ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import methods, models, run  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traces")

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


def main(which=None):
    lm = models.load(models.EMBEDDED, device="cpu")
    os.makedirs(OUT, exist_ok=True)
    known = methods.all_methods()
    for name, (method, prompt, n, opts) in EXAMPLES.items():
        if which and name not in which:
            continue
        if method not in known:
            print(f"skip {name}: method {method} not available")
            continue
        opts = {k: v for k, v in opts.items() if k in known[method].options}
        tr = run.run(lm, method, prompt, max_new_tokens=n, options=opts)
        path = os.path.join(OUT, f"{name}.json")
        tr.save(path)
        print(f"{name}: {len(tr.steps)} steps, {os.path.getsize(path) / 1024:.0f} KiB -> {path}")


if __name__ == "__main__":
    main(sys.argv[1:] or None)
