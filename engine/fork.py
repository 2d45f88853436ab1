"""What-if forks: continue a recorded run from its step k with one change, beside the original.

(This module validates a fork and makes the prefix forks; the diffusion / KV resume builders, the tokens before a
step and an edit's token are in engine/fork_state.py, re-exported here.)

A fork recomputes the state at step k from the prefix: the original prompt's token ids + the output tokens
committed before step k (+ the edited token), in ONE prefill forward, then decodes on with the (possibly new)
method, options and sampling settings. For the families whose whole state at a step is the committed prefix
(autoregressive, speculative, Jacobi, lookahead: their KV cache holds exactly the committed tokens, their
drafters' tables are rebuilt from the context), recomputation is exact: a fork with no edit continues
token for token as the original did (greedy).

Two families keep more state than the prefix, and fork to themselves only (STATEFUL):
- diffusion: the state at step k is the canvas before it (the step record's "committed" positions; every
  other one masked) and the schedule position (block, step in block, the block's masked count at its start).
  The branch is a diffusion run resumed there (run.prepare(resume=...), engine.diffusion.sampler), with one
  edit: a position set to a token or masked again (position=, token= / mask=True), or other rule / rule
  options / sampling from k on. Exact (no edit: the same steps and answer) when greedy with a deterministic
  rule; sampled runs (and the random rule) draw a fresh stream from the seed, so a no-edit fork is another
  sample (meta["fork"]["exact"] False). The credit rule's per-run credits are not recorded: a credit run forks
  at step 0 only. With the prefix cache a fork is exact at a block's first step (the cache is computed there,
  from the canvas then) and refused inside a block. Cost: no extra forward.
- kv: the state at step k is the evicted cache (and the policy's statistics), which is not the prefix. The branch
  replays the parent's recorded tokens through the parent's policies up to k (forced tokens: the same forwards and
  evictions, the random policy's seeded draws too), then switches policy / budget / knobs (run.prepare(resume=...),
  engine/methods/kv/resume.py). A run made in this process keeps snapshots of that state at step 1 and every
  S = min(16, prompt tokens) steps (at most 256 MiB per run; over it every other one goes and the spacing doubles):
  the replay starts from the latest one at or before k, so it costs at most S - 1 one-token forwards, fewer token
  positions than the prompt's prefill (the decoder process keeps a finished kv run's trace while the UI holds its
  runner, so a page's fork, Decoder.fork(parent_run=...), uses them too). A trace without snapshots (loaded from a
  file, a record=False run) replays from the prompt: k forwards over prompt + k - 1 positions. meta["fork"] says what ran
  (cost_forwards, cost_tokens, replay_from), not shown as the branch's steps; the full-cache shadow (compare_full)
  is rebuilt by one forward over the prefix at the branch's first step. Exact whatever the sampling (the tokens are
  forced; the policies keep the root run's seed). The switched-to policy's statistics start at k (the entries
  already cached count as new).

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
from engine.errors import ForkError   # engine.fork.ForkError: a fork that cannot be made
from engine.fork_state import (DIFFUSION_FIXED, block_masked, prepare_diffusion, prepare_kv,  # noqa: F401
                               sampling_of, tokens_before)
from engine.fork_state import token_id as _token_id
from engine.sampling import SamplingConfig
from engine.trace import Trace

FORKABLE = ("ar", "speculative", "jacobi", "lookahead")   # their state at a step is the committed prefix
STATEFUL = ("diffusion", "kv")   # their state at a step is more than the prefix: they fork to themselves only
NOT_YET = {"kv": "a KV-eviction run starts from its own evicted cache, not from a prefix (fork a KV run to change "
                 "its policy)",
           "diffusion": "a diffusion run starts from its canvas, not from a prefix (fork a diffusion run to edit "
                        "its canvas)"}   # why another run cannot continue with these methods


def prepare(lm, trace: Trace, step: int, *, token=None, position: int | None = None, mask: bool = False,
            method: str | None = None, options: dict | None = None, sampling: SamplingConfig | None = None,
            max_new_tokens: int | None = None, record: bool = True, force: dict | None = None,
            guesses=None) -> tuple[Trace, Iterator[dict]]:
    """Validate the fork and return (the branch's empty trace, the iterator that fills it).
    position / mask: a diffusion fork's canvas edit (position of the answer set to `token`, or masked).
    force: a speculative round's verdict overridden, {"node": id, "accept": True | False} (force_edit).
    guesses: a Jacobi / lookahead branch's first guesses (token ids, or a text tokenized into them)."""
    if not isinstance(trace, Trace):
        raise ForkError("fork needs a Trace to fork from.")
    meta = trace.meta
    parent = meta.get("method")
    family = meta.get("family") or parent
    if parent not in FORKABLE + STATEFUL:
        why = f"method {parent!r} ({family}) cannot be forked"
        raise ForkError(f"This run cannot be forked: {why}. Forkable: {', '.join(FORKABLE + STATEFUL)}.")
    if meta.get("model") not in (None, lm.name):
        raise ForkError(f"The run was made with {meta.get('model')!r}; the loaded model is {lm.name!r}.")
    prompt_ids = meta.get("prompt_ids")
    if not isinstance(prompt_ids, list) or not prompt_ids:
        raise ForkError("The trace does not record its prompt's token ids (an old trace): it cannot be forked.")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(trace.steps):
        raise ForkError(f"There is no step {step!r} to fork at: the run has steps 0..{len(trace.steps) - 1}.")
    new_method = parent if method is None else method
    if parent in STATEFUL:
        if new_method != parent:
            raise ForkError(f"A {parent} run forks to {parent} only (its state at a step is not a prefix another "
                            f"method could continue); change its options or sampling instead.")
        if not isinstance(mask, bool):
            raise ForkError("mask must be True or False.")
        kw = dict(options=options, sampling=sampling, max_new_tokens=max_new_tokens, record=record)
        if parent == "diffusion":
            return prepare_diffusion(lm, trace, step, token, position, mask, **kw)
        if token is not None or position is not None or mask:
            raise ForkError("A KV-cache run forks with another policy, budget or knobs (options) or sampling from "
                            "the step on; choosing a token is an autoregressive fork.")
        return prepare_kv(lm, trace, step, **kw)
    if position is not None or mask:
        raise ForkError("position / mask edit a diffusion run's canvas; this run is not a diffusion run.")
    if force is not None and parent != "speculative":
        raise ForkError("force accepts or rejects a drafted node of a speculative round; this run is not speculative.")
    if force is not None and token is not None:
        raise ForkError("A fork makes one edit: a forced verdict or another token, not both.")
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
    if force is not None:
        forced, edit["force"] = force_edit(trace.steps[step], force)
        prefix += forced
    resume = None
    if guesses is not None:
        if new_method not in ("jacobi", "lookahead"):
            raise ForkError(f"guesses are a Jacobi or lookahead run's first guesses; the branch runs {new_method}.")
        g = _guess_ids(lm, guesses)
        resume = {"guesses": g}
        edit["guesses"] = {"ids": g, "text": [lm.token_text(t) for t in g]}
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
        sampling = sampling_of(params)
    else:
        edit["sampling"] = sampling.as_dict()
    branch, steps = run.prepare(lm, new_method, str(meta.get("prompt", "")), max_new_tokens=left, sampling=sampling,
                                options=options, record=record, chat=meta.get("chat"),
                                ignore_eos=bool(params.get("ignore_eos")), prompt_ids=list(prompt_ids) + prefix,
                                resume=resume)
    branch.meta["prompt_ids"] = list(prompt_ids)
    branch.meta["fork"] = {"parent_method": parent, "at_step": step, "prefix_ids": prefix, "edit": edit}
    if token is not None or force is not None:
        branch.meta["edited"] = True     # its answer is no longer the model's own choice at the fork
    if force is not None:
        branch.meta["fork"]["not_lossless"] = True   # a verdict the verifier did not give: not the target's output
    return branch, steps


MAX_GUESSES = 64


def _guess_ids(lm, guesses) -> list[int]:
    """Token ids (in the vocabulary) or a text tokenized into them; 1..MAX_GUESSES of them."""
    if isinstance(guesses, str):
        if not guesses or len(guesses) > 2000:
            raise ForkError("guesses as text must be 1-2000 characters.")
        ids = lm.tokenizer.encode(guesses, add_special_tokens=False)
    elif isinstance(guesses, (list, tuple)):
        ids = list(guesses)
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int):
                raise ForkError(f"guesses must be token ids (integers), got {str(t)[:40]!r}.")
            _token_id(lm, t)
    else:
        raise ForkError(f"guesses must be token ids or a text, got {type(guesses).__name__}.")
    if not 1 <= len(ids) <= MAX_GUESSES:
        raise ForkError(f"give 1..{MAX_GUESSES} guesses, got {len(ids)}.")
    return [int(t) for t in ids]


def force_edit(rec: dict, force) -> tuple[list[int], dict]:
    """A speculative round's verdict overridden at node `force["node"]`: (the tokens the branch commits after
    what the run had before the round, the edit's description). accept: the drafted path from the root to
    the node, taken whatever the verifier said. reject: the path to the node's parent, then the target's
    best token other than the node's (recorded in the round as "alt", from the verify forward's logits). The
    branch then decodes on from there: its output is no longer the target's (not lossless)."""
    if not isinstance(force, dict) or set(force) - {"node", "accept"} or "node" not in force:
        raise ForkError('force is {"node": a drafted node id, "accept": true or false}.')
    nodes = rec.get("nodes") if isinstance(rec, dict) else None
    if rec.get("kind") != "speculative" or not isinstance(nodes, list):
        raise ForkError("That step is not a recorded speculative round (no draft tree): nothing to force.")
    drafted = [n for n in nodes if isinstance(n, dict) and n.get("id") and not n.get("appended")]
    by_id = {n["id"]: n for n in drafted}
    i, accept = force["node"], force.get("accept", True)
    if not isinstance(accept, bool):
        raise ForkError("force's accept must be true or false.")
    if isinstance(i, bool) or not isinstance(i, int) or i not in by_id:
        raise ForkError(f"Node {i!r} is not a drafted node of this round (drafted: "
                        f"{', '.join(map(str, sorted(by_id))) or 'none'}).")
    path, j = [], i
    while j in by_id:
        path.append(by_id[j])
        j = by_id[j]["parent"]
    path.reverse()
    tokens = [int(n["token"]) for n in path]
    n = by_id[i]
    if accept:
        if n.get("status") == "accepted":
            raise ForkError(f"Node {i} was accepted already: force-accept changes nothing (force-reject it, or "
                            "accept a rejected node).")
        return tokens, {"node": i, "accept": True, "tokens": tokens, "was": n.get("status")}
    if n.get("status") != "accepted" and all(p.get("status") == "accepted" for p in path[:-1]):
        raise ForkError(f"Node {i} was rejected already: force-reject changes nothing.")
    alt = n.get("alt")
    if isinstance(alt, bool) or not isinstance(alt, int):
        raise ForkError("This round does not record the target's other choice at the node (a trace from before "
                        "forced verdicts): force-accept works, or re-run to fork it.")
    return tokens[:-1] + [alt], {"node": i, "accept": False, "tokens": tokens[:-1] + [alt], "was": n.get("status"),
                                 "rejected": int(n["token"])}


def run_fork(lm, trace: Trace, step: int, **kw) -> Trace:
    branch, steps = prepare(lm, trace, step, **kw)
    for _ in steps:
        pass
    return branch


def output_ids(branch: Trace) -> list[int]:
    """The branch's whole answer: the tokens it inherited (and the edited one), then its own."""
    return list((branch.meta.get("fork") or {}).get("prefix_ids") or []) + list(branch.final_ids)
