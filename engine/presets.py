"""Named configurations shared by the Compare view and the benchmark harness."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine import methods


@dataclass(frozen=True)
class Preset:
    name: str
    method: str
    options: dict = field(default_factory=dict)


PRESETS = [
    Preset("autoregressive", "ar"),
    Preset("prompt lookup (chain)", "speculative", {"drafter": "prompt_lookup"}),
    Preset("Token Recycling (tree 2.2.2)", "speculative", {"drafter": "token_recycling", "tree": "2.2.2"}),
    Preset("early-exit draft (chain 4)", "speculative", {"drafter": "early_exit", "num_assistant_tokens": 4}),
    Preset("tri-gram drafting", "speculative", {"drafter": "trigram"}),
    Preset("Jacobi (block 8)", "jacobi", {"variant": "jacobi", "block_size": 8}),
    Preset("lookahead (W5 N4 G5)", "lookahead", {}),
    Preset("KV H2O (budget 64)", "kv", {"policy": "h2o", "budget": 64}),
    Preset("KV StreamingLLM (budget 64)", "kv", {"policy": "streaming_llm", "budget": 64}),
    Preset("diffusion low_confidence", "diffusion", {"rule": "low_confidence"}),
    Preset("diffusion Fast-dLLM threshold 0.9", "diffusion", {"rule": "threshold", "threshold": 0.9}),
    Preset("beam search (4 beams)", "beam", {"num_beams": 4}),
    Preset("cautious NTP (up to 10 trials)", "cautious", {}),
    Preset("contrastive search (alpha 0.6, k 4)", "contrastive", {"penalty_alpha": 0.6, "num_candidates": 4}),
]


def available() -> dict[str, Preset]:
    """Presets whose method and options exist in this build."""
    known = methods.all_methods()
    out = {}
    for p in PRESETS:
        spec = known.get(p.method)
        if spec and set(p.options) <= set(spec.options):
            out[p.name] = p
    return out
