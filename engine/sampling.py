"""Logits -> probabilities (temperature, top-k, top-p, min-p, typical) and seeded sampling.

Warpers are applied in Hugging Face's order (temperature, top-k, top-p, min-p, typical), each
a small pure function over the last dimension, so that every method (and the speculative
verifier, which needs the warped target distribution p) uses the same definition.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from engine.errors import SamplingError, shorten  # noqa: F401  (re-exported)

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 -> greedy
    top_k: int = 0            # 0 -> off
    top_p: float = 1.0        # 1 -> off
    min_p: float = 0.0        # 0 -> off
    typical_p: float = 1.0    # 1 -> off
    seed: int | None = 0

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "typical_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SamplingError(f"{name} must be a finite number, got {shorten(v)}")
            object.__setattr__(self, name, float(v))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise SamplingError(f"top_k must be an integer (0 = off), got {shorten(self.top_k)}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2 ** 63):
            raise SamplingError(f"seed must be an integer in 0..2^63-1 or None, got {shorten(self.seed)}")
        if not (self.temperature == 0 or 1e-4 <= self.temperature <= 1000):
            raise SamplingError(f"temperature must be 0 (greedy) or in [0.0001, 1000], got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0, got {self.top_k}")
        for name in ("top_p", "typical_p"):
            v = getattr(self, name)
            if not (0.0 < v <= 1.0):
                raise SamplingError(f"{name} must be in (0, 1], got {v}")
        if not (0.0 <= self.min_p < 1.0):
            raise SamplingError(f"min_p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def generator(self, device="cpu") -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(0 if self.seed is None else int(self.seed))
        return g


def apply_temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    return logits / t if t not in (0.0, 1.0) else logits


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to >= top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already enough
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, idx, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    if min_p <= 0.0:
        return logits
    p = logits.softmax(-1)
    thresh = min_p * p.max(-1, keepdim=True).values
    return logits.masked_fill(p < thresh, NEG_INF)


def apply_typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep tokens whose surprisal is closest to the entropy."""
    if mass >= 1.0:
        return logits
    logp = logits.log_softmax(-1)
    p = logp.exp()
    ent = -(torch.nan_to_num(p * logp)).sum(-1, keepdim=True)
    shifted = (-logp - ent).abs()
    order = torch.argsort(shifted, dim=-1)
    cum = p.gather(-1, order).cumsum(-1)
    last = (cum < mass).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
    keep_sorted = torch.arange(logits.shape[-1], device=logits.device).expand_as(order) <= last
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, NEG_INF)


def warp(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Warped logits (float32) in HF's order. Greedy configs only get the filters, no temperature."""
    x = logits.float()
    if not cfg.greedy:
        x = apply_temperature(x, cfg.temperature)
    x = apply_top_k(x, cfg.top_k)
    x = apply_top_p(x, cfg.top_p)
    x = apply_min_p(x, cfg.min_p)
    x = apply_typical(x, cfg.typical_p)
    return x


def probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution a method samples from. For greedy, a one-hot at the argmax."""
    if cfg.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return warp(logits, cfg).softmax(-1)


def sample(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row of a probability matrix (..., V) -> (...)."""
    flat = p.reshape(-1, p.shape[-1])
    out = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return out.reshape(p.shape[:-1])


def choose(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Next token(s) from logits: argmax for greedy, else a draw from the warped distribution."""
    if cfg.greedy:
        return logits.argmax(-1)
    return sample(warp(logits, cfg).softmax(-1), generator)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.nan_to_num(p * p.clamp_min(1e-30).log())).sum(-1)
