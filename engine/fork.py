"""What-if forks: continue a recorded run from its step k with one change, beside the original.

A fork recomputes the state at step k from the prefix: the original prompt's token ids + the output tokens
committed before step k (+ the edited token), in ONE prefill forward, then decodes on with the (possibly new)
method, options and sampling settings. For the families whose whole state at a step is the committed prefix
(autoregressive, speculative, Jacobi, lookahead: their KV cache holds exactly the committed tokens, their
drafters' tables are rebuilt from the context), recomputation is exact: a fork with no edit continues
token for token as the original did (greedy). A KV-eviction run's state at k is its evicted cache and a
diffusion run's is its canvas; forks of those are refused with a message until their state is snapshotted.

    tr, steps = fork.prepare(lm, original, step=5, token=" cat")      # AR: another token at step 5
    tr, steps = fork.prepare(lm, original, step=3, method="speculative", options={"drafter": "prompt_lookup"})
    for _ in steps: ...
    fork.output_ids(tr)        # inherited + new tokens: the branch's whole answer

The branch's trace holds its own steps only; meta["fork"] says where it came from (parent method, step,
inherited token ids, the edit). Every bad edit raises an InputError before any forward.
"""
from __future__ import annotations

from typing import Iterator

from engine import methods, run
from engine.errors import InputError
from engine.sampling import SamplingConfig
from engine.trace import Trace

FORKABLE = ("ar", "speculative", "jacobi", "lookahead")   # their state at a step is the committed prefix
NOT_YET = {"kv": "a KV-eviction run's state at a step is its evicted cache, which is not snapshotted yet",
           "diffusion": "a diffusion run's state at a step is its partly filled canvas, which is not snapshotted "
                        "yet"}


class ForkError(InputError):
    """A fork that cannot be made: the message says why and what is allowed."""


def tokens_before(trace: Trace, step: int) -> int:
    """Output tokens committed before step `step` (the step records' running totals)."""
    if step == 0:
        return 0
    prev = trace.steps[step - 1]
    totals = prev.get("totals") if isinstance(prev, dict) else None
    if isinstance(totals, dict) and isinstance(totals.get("tokens"), int):
        return int(totals["tokens"])
    return sum(len(s.get("new_ids") or []) for s in trace.steps[:step])


def _token_id(lm, token) -> int:
    vocab = int(getattr(lm.model.config, "vocab_size", 0) or len(lm.tokenizer))
    if isinstance(token, bool):
        raise ForkError("token must be a token id or a token's text.")
    if isinstance(token, int):
        if not 0 <= token < vocab:
            raise ForkError(f"token id {token} is outside the vocabulary (0..{vocab - 1}).")
        return token
    if isinstance(token, str):
        if not token or len(token) > 200:
            raise ForkError("token text must be 1-200 characters.")
        ids = lm.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ForkError(f"{token[:40]!r} is {len(ids)} tokens for this tokenizer, not one "
                            f"({', '.join(repr(lm.token_text(i)) for i in ids[:6])}); pick a single token.")
        return int(ids[0])
    raise ForkError(f"token must be a token id or a token's text, got {type(token).__name__}.")


def prepare(lm, trace: Trace, step: int, *, token=None, method: str | None = None, options: dict | None = None,
            sampling: SamplingConfig | None = None, max_new_tokens: int | None = None,
            record: bool = True) -> tuple[Trace, Iterator[dict]]:
    """Validate the fork and return (the branch's empty trace, the iterator that fills it)."""
    if not isinstance(trace, Trace):
        raise ForkError("fork needs a Trace to fork from.")
    meta = trace.meta
    parent = meta.get("method")
    family = meta.get("family") or parent
    if parent not in FORKABLE:
        why = NOT_YET.get(family) or NOT_YET.get(parent) or f"method {parent!r} cannot be forked"
        raise ForkError(f"This run cannot be forked: {why}. Forkable: {', '.join(FORKABLE)}.")
    if meta.get("model") not in (None, lm.name):
        raise ForkError(f"The run was made with {meta.get('model')!r}; the loaded model is {lm.name!r}.")
    prompt_ids = meta.get("prompt_ids")
    if not isinstance(prompt_ids, list) or not prompt_ids:
        raise ForkError("The trace does not record its prompt's token ids (an old trace): it cannot be forked.")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(trace.steps):
        raise ForkError(f"There is no step {step!r} to fork at: the run has steps 0..{len(trace.steps) - 1}.")
    new_method = parent if method is None else method
    if new_method not in FORKABLE:
        why = NOT_YET.get(new_method, f"{new_method!r} is not a method that continues a prefix")
        raise ForkError(f"A fork cannot continue with {new_method!r}: {why}. Use one of {', '.join(FORKABLE)}.")
    methods.get(new_method)
    if token is not None and parent != "ar":
        raise ForkError("Choosing another token is an autoregressive fork; for this run change its method, "
                        "options or sampling from the step on.")
    inherited = list((meta.get("fork") or {}).get("prefix_ids") or [])   # a fork of a fork
    done = len(inherited) + tokens_before(trace, step)
    ids = inherited + list(trace.final_ids)
    if done > len(ids):
        raise ForkError(f"Step {step} says {done} tokens were committed before it, the run has {len(ids)}.")
    prefix = ids[:done]
    edit: dict = {}
    if token is not None:
        tok = _token_id(lm, token)
        prefix.append(tok)
        edit["token"] = {"id": tok, "text": lm.token_text(tok),
                         "was": trace.steps[step].get("token_id") if isinstance(trace.steps[step], dict) else None}
    params = meta.get("params") or {}
    total = int(params.get("max_new_tokens") or 64) + len(inherited)
    left = (total - len(prefix)) if max_new_tokens is None else max_new_tokens
    if isinstance(left, bool) or not isinstance(left, int) or left < 1:
        raise ForkError(f"Nothing is left to generate after {len(prefix)} inherited tokens (the run's budget "
                        f"is {total}); give max_new_tokens.")
    if new_method == parent and options is None:
        spec = methods.get(parent)
        options = {k: v for k, v in params.items() if k in spec.options}
    elif options is not None:
        edit["options"] = dict(options)
    if method is not None and method != parent:
        edit["method"] = new_method
    if sampling is None:
        sampling = SamplingConfig(**{k: v for k, v in (params.get("sampling") or {}).items()
                                     if k in SamplingConfig.__dataclass_fields__})
    else:
        edit["sampling"] = sampling.as_dict()
    branch, steps = run.prepare(lm, new_method, str(meta.get("prompt", "")), max_new_tokens=left, sampling=sampling,
                                options=options, record=record, chat=meta.get("chat"),
                                ignore_eos=bool(params.get("ignore_eos")), prompt_ids=list(prompt_ids) + prefix)
    branch.meta["prompt_ids"] = list(prompt_ids)
    branch.meta["fork"] = {"parent_method": parent, "at_step": step, "prefix_ids": prefix, "edit": edit}
    if token is not None:
        branch.meta["edited"] = True     # its answer is no longer the model's own choice at the fork
    return branch, steps


def run_fork(lm, trace: Trace, step: int, **kw) -> Trace:
    branch, steps = prepare(lm, trace, step, **kw)
    for _ in steps:
        pass
    return branch


def output_ids(branch: Trace) -> list[int]:
    """The branch's whole answer: the tokens it inherited (and the edited one), then its own."""
    return list((branch.meta.get("fork") or {}).get("prefix_ids") or []) + list(branch.final_ids)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first output position where two answers differ (None: one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None
