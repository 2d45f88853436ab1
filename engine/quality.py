"""Judging an output: perplexity of the generated tokens under a judge model (teacher forced)."""
from __future__ import annotations

import math

import torch


def judged_perplexity(judge, prompt_ids: list[int], output_ids: list[int]) -> float | None:
    """exp(mean NLL) of `output_ids` after `prompt_ids` under the judge LM, in one forward."""
    out = [t for t in output_ids if t not in judge.eos_ids]
    if not out:
        return None
    ids = torch.tensor([list(prompt_ids) + out], device=judge.device)
    with judge.lock, torch.inference_mode():
        logits = judge.model(input_ids=ids).logits[0, len(prompt_ids) - 1: -1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt_ids):], reduction="mean")
    return float(math.exp(nll.item()))


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (None when equal, len of the shorter one when a prefix)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
