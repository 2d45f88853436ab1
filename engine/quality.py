"""Judging an output, one definition each: judged perplexity, repetition loops, and where two outputs
first differ.

The answer is the output up to and including its first EOS (the model's decision to stop is part
of the answer; anything a method wrote after it, e.g. a diffusion EOS tail, is not).
"""
from __future__ import annotations

import math
import re
from collections import Counter

import torch

LOOP_N = 4   # a repeated word 4-gram: "a sea of light, a sea of light" loops; "because because" does not


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


def words(text: str) -> list[str]:
    """The words of a text as a reader sees them: lower case, punctuation and spacing ignored."""
    return re.findall(r"[^\W_]+(?:'[^\W_]+)?", str(text).lower())


def repeated_ngrams(text: str, n: int = LOOP_N) -> dict[tuple[str, ...], int]:
    """Word n-grams of `text` that occur more than once (occurrences may overlap), with their counts."""
    w = words(text)
    counts = Counter(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    return {g: c for g, c in counts.items() if c > 1}


def loops(text: str, n: int = LOOP_N) -> bool:
    """True when the answer repeats itself: some run of n words (default 4) occurs twice or more. In a short
    answer that is a loop a reader notices ("A sea of light, a sea of light, ..."); ordinary prose of a few
    dozen words almost never repeats four words in a row."""
    return bool(repeated_ngrams(text, n))


def repeated_share(text: str, n: int = LOOP_N) -> float:
    """Share of the answer's words that lie inside a repeated word n-gram (0 = no repetition, ~1 = one
    phrase over and over)."""
    w = words(text)
    if len(w) < n:
        return 0.0
    rep = repeated_ngrams(text, n)
    covered = [False] * len(w)
    for i in range(len(w) - n + 1):
        if tuple(w[i:i + n]) in rep:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(w)


def loop_share(texts: list[str], n: int = LOOP_N) -> float | None:
    """Share of answers that loop (`loops`); None for no answers."""
    texts = list(texts)
    return sum(loops(t, n) for t in texts) / len(texts) if texts else None
