"""The state a fork starts from: the tokens committed before a step, an edit's token, and the resume builders of
the two families whose state is more than the prefix (engine.fork.STATEFUL): a diffusion run resumed from its
canvas and schedule position, a KV run that replays its parent's tokens through its policies, then switches.

engine/fork.py's docstring is the contract (what each fork keeps, when it is exact, what it costs); engine.fork
validates a fork, builds prefix forks itself and calls `prepare_diffusion` / `prepare_kv` here. It re-exports
`tokens_before`, `block_masked` and `DIFFUSION_FIXED`, so `engine.fork.<name>` keeps working. Imports nothing of
engine.fork (no cycle).
"""
from __future__ import annotations

from engine import methods, run
from engine.errors import ForkError
from engine.sampling import SamplingConfig
from engine.trace import Trace

DIFFUSION_FIXED = ("gen_length", "block_length", "steps", "adapter", "mask_id", "cfg_scale", "prefix_cache")


def tokens_before(trace: Trace, step: int) -> int:
    """Output tokens committed before step `step` (the step records' running totals)."""
    if step == 0:
        return 0
    prev = trace.steps[step - 1]
    totals = prev.get("totals") if isinstance(prev, dict) else None
    if isinstance(totals, dict) and isinstance(totals.get("tokens"), int):
        return int(totals["tokens"])
    return sum(len(s.get("new_ids") or []) for s in trace.steps[:step])


def token_id(lm, token) -> int:
    """An edit's token: an id in the vocabulary, or a text that is exactly one token."""
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


def sampling_of(params: dict) -> SamplingConfig:
    """The run's sampling settings (its params["sampling"]), as a SamplingConfig."""
    return SamplingConfig(**{k: v for k, v in (params.get("sampling") or {}).items()
                             if k in SamplingConfig.__dataclass_fields__})


def _base(lm, trace: Trace, method: str) -> tuple[dict, dict, dict]:
    """(the run's params, its method options, the common run.prepare keywords)."""
    meta = trace.meta
    params = meta.get("params") or {}
    spec = methods.get(method)
    opts = {k: v for k, v in params.items() if k in spec.options}
    kw = {"chat": meta.get("chat"), "ignore_eos": bool(params.get("ignore_eos"))}
    return params, opts, kw


def _start(lm, trace: Trace, method: str, opts: dict, sampling, max_new: int, record: bool, resume, fork_meta):
    params, _, kw = _base(lm, trace, method)
    branch, steps = run.prepare(lm, method, str(trace.meta.get("prompt", "")), max_new_tokens=max_new,
                                sampling=sampling, options=opts, record=record, prompt_ids=list(trace.meta["prompt_ids"]),
                                resume=resume, **kw)
    branch.meta["fork"] = fork_meta
    return branch, steps


def block_masked(trace: Trace, step: int) -> int:
    """Masked positions of step `step`'s block when the block started (its schedule's count)."""
    rec = trace.steps[step]
    b, lo, hi = rec["block"], rec["block_range"][0], rec["block_range"][1]
    first = step - int(rec["step_in_block"])
    if first >= 0:
        r0 = trace.steps[first]
        if isinstance(r0, dict) and r0.get("block") == b and r0.get("step_in_block") == 0:
            return sum(1 for s in (r0.get("state") or [])[lo:hi] if s != "committed")
    res = (trace.meta.get("fork") or {}).get("resume") or {}
    if res.get("block") == b and isinstance(res.get("block_masked"), int):   # a branch that started in the block
        return int(res["block_masked"])
    raise ForkError(f"Step {step}'s block does not start in this trace: its schedule is not known.")


def prepare_diffusion(lm, trace, step, token, position, mask, *, options, sampling, max_new_tokens, record):
    """A diffusion run resumed from its canvas before `step` (engine/fork.py)."""
    rec = trace.steps[step]
    state = rec.get("state") if isinstance(rec, dict) else None
    toks = rec.get("tokens") if isinstance(rec, dict) else None
    if not isinstance(state, list) or not isinstance(toks, list) or len(state) != len(toks) or \
            not isinstance(rec.get("block_range"), list) or not isinstance(rec.get("step_in_block"), int):
        raise ForkError(f"Step {step} has no canvas recorded (a run without step details): it cannot be forked.")
    n = len(state)
    canvas = [int(t) if s == "committed" else None for s, t in zip(state, toks)]
    params, opts, _ = _base(lm, trace, "diffusion")
    edit: dict = {}
    if token is not None or position is not None or mask:
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < n:
            raise ForkError(f"position {str(position)[:40]} is outside the answer: positions 0..{n - 1}.")
        if mask == (token is not None):
            raise ForkError("A canvas edit either sets the position to a token or masks it (mask=True), not both.")
        was = canvas[position]
        if mask:
            canvas[position] = None
            edit["canvas"] = {"position": position, "id": None, "text": "[MASK]", "was": was}
        else:
            tok = token_id(lm, token)
            canvas[position] = tok
            edit["canvas"] = {"position": position, "id": tok, "text": lm.token_text(tok), "was": was}
    if options is not None:
        given = dict(options)
        changed = [k for k in DIFFUSION_FIXED if k in given and given[k] != opts.get(k)]
        if changed:
            raise ForkError(f"A diffusion fork keeps the run's {', '.join(changed)} (its canvas and schedule are "
                            "those): change the rule, its options, stop_at_eos or the sampling.")
        new_opts = {**opts, **given}
        if new_opts != opts:
            edit["options"] = {k: v for k, v in given.items() if opts.get(k) != v}
        opts = new_opts
    if params.get("rule") == "credit" and step > 0:
        raise ForkError("The credit rule's per-position credits are not recorded: a credit run forks at step 0 only.")
    if params.get("prefix_cache") and rec["step_in_block"] > 0:
        first = step - rec["step_in_block"]
        raise ForkError(f"With the prefix cache a fork is exact only at a block's first step (the cache is computed "
                        f"there, from the canvas then): fork at step {first} or earlier"
                        f"{'' if first >= 0 else ' (in the parent run)'}.")
    old = sampling_of(params)
    if sampling is None:
        sampling = old
    else:
        edit["sampling"] = sampling.as_dict()
    resume = {"canvas": canvas, "block": int(rec["block"]), "step_in_block": int(rec["step_in_block"]),
              "block_masked": block_masked(trace, step)}
    exact = sampling.greedy and old.greedy and opts.get("rule") != "random" and params.get("rule") != "random"
    left = int(params.get("max_new_tokens") or 64) if max_new_tokens is None else max_new_tokens
    fork_meta = {"parent_method": "diffusion", "at_step": step, "prefix_ids": [], "edit": edit,
                 "resume": {k: v for k, v in resume.items() if k != "canvas"}, "canvas": canvas, "exact": bool(exact),
                 "cost_forwards": 0}
    branch, steps = _start(lm, trace, "diffusion", opts, sampling, left, record, resume, fork_meta)
    if edit.get("canvas"):
        branch.meta["edited"] = True
    return branch, steps


def _kv_history(trace: Trace) -> tuple[list[int], list[dict], dict, int]:
    """(tokens replayed before the trace's own steps, its policy switches, the run's base options, its policies'
    seed: the root run's, kept by every fork of it)."""
    f = trace.meta.get("fork") or {}
    res = f.get("resume") or {}
    seed = res.get("policy_seed")
    if isinstance(seed, bool) or not isinstance(seed, int):   # a root run, or a branch from before policy_seed
        seed = sampling_of(trace.meta.get("params") or {}).seed or 0
    return list(res.get("force_ids") or []), [dict(s) for s in res.get("switches") or []], \
        dict(f.get("base_options") or {}), int(seed)


def prepare_kv(lm, trace, step, *, options, sampling, max_new_tokens, record):
    """A KV run that replays the parent's tokens to `step` under its policy, then switches (engine/fork.py)."""
    from engine.methods.kv.resume import SWITCHABLE, snapshots_of
    params, opts, _ = _base(lm, trace, "kv")
    force, switches, base, seed = _kv_history(trace)
    base = base or opts
    glob = len(force) + step                         # the step in the original run's numbering
    if tokens_before(trace, step) != step or len(trace.final_ids) < step:
        raise ForkError(f"Step {step}: the run's steps do not commit one token each; it cannot be replayed.")
    force = force + list(trace.final_ids[:step])
    current = dict(base)
    for sw in switches:
        if sw["at"] <= glob:
            current.update({k: v for k, v in sw.items() if k != "at"})
    at_glob = any(sw["at"] == glob for sw in switches)   # the parent switched right there: the branch does too
    switches = [sw for sw in switches if sw["at"] < glob]
    given = {} if options is None else dict(options)
    spec = methods.get("kv")
    full_given = spec.values({**current, **given})
    changed = {k: v for k, v in full_given.items() if current.get(k, spec.options[k].default) != v}
    edit: dict = {}
    if changed:
        edit["options"] = changed
    if glob == 0:       # nothing to replay: a fresh run with the options
        run_opts, resume = {**base, **changed}, None
    else:
        fixed = [k for k in changed if k not in SWITCHABLE]
        if fixed:
            raise ForkError(f"{', '.join(fixed)} cannot change in the middle of a KV run (from step {glob} on); "
                            f"a fork there changes {', '.join(SWITCHABLE)}. Fork at step 0 to change the rest.")
        if changed or at_glob:
            switches.append({"at": glob, **{k: v for k, v in full_given.items() if k in SWITCHABLE}})
        run_opts, resume = base, {"force_ids": force, "switches": switches, "policy_seed": seed}
    old = sampling_of(params)
    if sampling is None:
        sampling = old
    else:
        edit["sampling"] = sampling.as_dict()
    total = int(params.get("max_new_tokens") or 64) + len(_kv_history(trace)[0])
    left = (total - glob) if max_new_tokens is None else max_new_tokens
    if isinstance(left, bool) or not isinstance(left, int) or left < 1:
        raise ForkError(f"Nothing is left to generate after {glob} tokens (the run's budget is {total}); "
                        "give max_new_tokens.")
    fork_meta = {"parent_method": "kv", "at_step": step, "prefix_ids": force if glob else [], "edit": edit,
                 "resume": resume, "base_options": dict(run_opts), "exact": True,
                 "cost_forwards": 0, "cost_tokens": 0, "replay_from": 0}
    # the kv method picks the parent's snapshot and writes the replay's counted cost into fork_meta ("report")
    live = None if resume is None else {**resume, "snapshots": snapshots_of(trace), "report": fork_meta}
    return _start(lm, trace, "kv", run_opts, sampling, left, record, live, fork_meta)
