"""Method registry. Each method is a generator function `fn(job, **options)` yielding step records.

A method declares its options once, as typed specs (engine.options.Opt); engine.run.prepare
validates them before any model work, the CLI makes a flag of each and the pages a widget.
A method that chooses among interchangeable parts (drafters, KV policies, remasking rules) lists
their registries in `components`: their options join the method's, tagged with when they apply.
An optional `check(values, ctx)` hook does the cross-option checks (sizes against the model,
the prompt, the context window) -- cheap checks only, still before any forward.

A method appends the tokens it commits to `job.output_ids`, counts its forwards and tokens in
`job.counters`, times model work with `job.counters.compute()` and record building with
`job.counters.recording()`, and yields one JSON-able dict per decoding step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

from engine.errors import MethodError, OptionError  # noqa: F401  (re-exported: methods raise these)
from engine.options import Components, Opt, as_opt, check_values, ignored, merge_options
from engine.sampling import SamplingConfig
from engine.trace import Counters

MAX_NEW_TOKENS = 4096


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
    ignore_eos: bool = False     # decode exactly max_new_tokens (benchmarks of long runs)
    resume: dict | None = None   # a recorded run's state to start from (engine.run.RESUMABLE; engine.fork)

    @property
    def eos_ids(self) -> set[int]:
        """The tokens that end the output (none with ignore_eos)."""
        return set() if self.ignore_eos else self.lm.eos_ids

    def finished(self, new_tokens: list[int]) -> bool:
        """True once max_new_tokens are out or an EOS was produced among `new_tokens`."""
        eos = self.eos_ids
        return len(self.output_ids) >= self.max_new_tokens or any(t in eos for t in new_tokens)

    def commit(self, tokens: list[int]) -> list[int]:
        """Append tokens, truncated at the first EOS and at max_new_tokens; return what was kept."""
        kept = []
        eos = self.eos_ids
        for t in tokens:
            if len(self.output_ids) >= self.max_new_tokens:
                break
            self.output_ids.append(int(t))
            kept.append(int(t))
            if t in eos:
                break
        self.counters.generated_tokens += len(kept)
        return kept


@dataclass(frozen=True)
class CheckContext:
    """What a method's `check` hook may look at: the model (no forwards), the sampling settings,
    the prompt's length in tokens, the token budget and the model's context window (None: unknown)."""
    lm: Any
    sampling: SamplingConfig
    prompt_len: int
    max_new_tokens: int
    context: int | None

    def need_positions(self, n: int, what: str) -> None:
        """Refuse a run that would need more positions than the model has."""
        if self.context is not None and n > self.context:
            raise MethodError(f"{what} needs {n} positions but the model's context window is {self.context} "
                              f"(the prompt is {self.prompt_len} tokens): shorten the prompt or ask for fewer tokens.")


@dataclass
class MethodSpec:
    name: str
    family: str
    fn: Callable[..., Iterator[dict]]
    description: str
    own_options: dict[str, Opt]
    lossless: bool = True                # greedy output identical to autoregressive greedy
    check: Callable[[dict, CheckContext], None] | None = None
    components: Mapping[str, Components] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Opt]:
        """Own options, then the components' (computed each time: a component may register late)."""
        return merge_options(self.own_options, self.components)

    def defaults(self) -> dict:
        return {k: v.default for k, v in self.options.items()}

    def values(self, given: Mapping[str, Any] | None) -> dict:
        """Every option's value: `given` coerced and range-checked, defaults for the rest."""
        return check_values(self.options, dict(given or {}), f"method '{self.name}'")

    def ignored(self, given: Mapping[str, Any] | None, values: Mapping[str, Any]) -> dict[str, str]:
        """Given options whose (non-default) value has no effect with the other values: name -> why."""
        return ignored(self.options, dict(given or {}), values)

    def applicable(self, values: Mapping[str, Any]) -> dict:
        """The options that have an effect with these values (what a trace should show)."""
        return {k: v for k, v in values.items() if self.options[k].applies(values)}


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, family: str, description: str, options: dict | None = None, lossless: bool = True,
             check: Callable | None = None, components: Mapping[str, Components] | None = None):
    """Register a method. `options`: name -> Opt (or the old (default, help) pairs)."""
    def deco(fn):
        own = {k: as_opt(v) for k, v in (options or {}).items()}
        for sel, reg in (components or {}).items():
            if sel not in own:
                raise MethodError(f"method {name}: components selector '{sel}' needs an option of that name")
            own[sel] = Opt(own[sel].default, own[sel].help or reg.help_text(), choices=reg.names,
                           label=own[sel].label)
        REGISTRY[name] = MethodSpec(name, family, fn, description, own, lossless, check, dict(components or {}))
        return fn
    return deco


def get(name: str) -> MethodSpec:
    _load_all()
    if not isinstance(name, str) or name not in REGISTRY:
        from engine.errors import shorten
        raise MethodError(f"Unknown method {shorten(name)}. Known: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def all_methods() -> dict[str, MethodSpec]:
    _load_all()
    return dict(REGISTRY)


_LOADED = False


def _load_all():
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil
    import engine.methods as pkg
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"engine.methods.{m.name}")
    _LOADED = True
