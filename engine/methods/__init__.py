"""Method registry. Each method is a generator function `fn(job, **options)` yielding step records.

A method appends the tokens it commits to `job.output_ids`, counts its forwards and tokens in
`job.counters`, times model work with `job.counters.compute()` and record building with
`job.counters.recording()`, and yields one JSON-able dict per decoding step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from engine.sampling import SamplingConfig
from engine.trace import Counters

MAX_NEW_TOKENS = 4096


class MethodError(ValueError):
    """Impossible method parameters or an unusable configuration."""


@dataclass
class Job:
    lm: Any                      # engine.models.LM
    prompt: str
    input_ids: torch.Tensor      # [1, L] on the model's device
    max_new_tokens: int
    sampling: SamplingConfig
    counters: Counters = field(default_factory=Counters)
    record: bool = True          # False: build no step details (benchmarks of raw speed)
    output_ids: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # becomes trace.extra (e.g. extra["summary"])

    def finished(self, new_tokens: list[int]) -> bool:
        """True once max_new_tokens are out or an EOS was produced among `new_tokens`."""
        return len(self.output_ids) >= self.max_new_tokens or any(t in self.lm.eos_ids for t in new_tokens)

    def commit(self, tokens: list[int]) -> list[int]:
        """Append tokens, truncated at the first EOS and at max_new_tokens; return what was kept."""
        kept = []
        for t in tokens:
            if len(self.output_ids) >= self.max_new_tokens:
                break
            self.output_ids.append(int(t))
            kept.append(int(t))
            if t in self.lm.eos_ids:
                break
        self.counters.generated_tokens += len(kept)
        return kept


@dataclass
class MethodSpec:
    name: str
    family: str
    fn: Callable[..., Iterator[dict]]
    description: str
    options: dict[str, tuple[Any, str]]  # name -> (default, help)
    lossless: bool = True                # greedy output identical to autoregressive greedy

    def defaults(self) -> dict:
        return {k: v[0] for k, v in self.options.items()}


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, family: str, description: str, options: dict | None = None, lossless: bool = True):
    def deco(fn):
        REGISTRY[name] = MethodSpec(name, family, fn, description, options or {}, lossless)
        return fn
    return deco


def get(name: str) -> MethodSpec:
    _load_all()
    if name not in REGISTRY:
        raise MethodError(f"Unknown method '{name}'. Known: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def all_methods() -> dict[str, MethodSpec]:
    _load_all()
    return dict(REGISTRY)


def _load_all():
    import importlib
    import pkgutil
    import engine.methods as pkg
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"engine.methods.{m.name}")
