"""Judging an output, one definition each: judged perplexity, and where two outputs first differ.

The answer is the output up to and including its first EOS (the model's decision to stop is part
of the answer; anything a method wrote after it, e.g. a diffusion EOS tail, is not).
"""
from __future__ import annotations

import math

import torch


def answer(output_ids: list[int], eos_ids: set[int]) -> list[int]:
    """The output up to and including its first EOS."""
    out = []
    for t in output_ids:
        out.append(int(t))
        if t in eos_ids:
            break
    return out


def judged_perplexity(judge, prompt_ids: list[int], output_ids: list[int]) -> float | None:
    """exp(mean NLL) of the answer (`answer()`) after `prompt_ids` under the judge LM, in one forward.
    None for an empty answer."""
    ans = answer(output_ids, judge.eos_ids)
    if not ans or not prompt_ids:
        return None
    ids = torch.tensor([list(prompt_ids) + ans], device=judge.device)
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
