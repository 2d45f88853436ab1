"""The masked-diffusion sampler (LLaDA's generate.py, generalised over rules and adapters).

(~305 lines, one file on purpose: the schedules, the step's choice and the one loop, diffuse, that uses them,
read together.)

x = prompt + gen_length masks, split into blocks of block_length decoded left to right
(semi-autoregressive; block_length = gen_length is pure diffusion). Each step: one forward over
the sequence (or, with Fast-dLLM's prefix cache, over the current block and what follows it),
candidate tokens x0 = argmax of the Gumbel-noised warped logits, and a rule picks which masked
positions of the current block to commit. Committed tokens stay.

How many a schedule rule commits per step: LLaDA's even schedule (`num_transfer_tokens`, the
default) or Dream's (`dream_transfer_count`, the rule option schedule="dream").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from engine import sampling as S
from engine.diffusion import rules as R
from engine.methods import MethodError
from kernels import dispatch as KD


def num_transfer_tokens(masked: int, steps: int) -> list[int]:
    """LLaDA's even schedule: floor(masked / steps) per step, the first `remainder` steps +1."""
    base, rem = divmod(masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


DREAM_EPS = 1e-3  # Dream's generation config default `eps`: the last time step


def dream_transfer_count(masked: int, step: int, steps: int, eps: float = DREAM_EPS) -> int:
    """Dream's schedule: at step i of `steps` (times t = ts[i], s = ts[i + 1], ts = linspace(1, eps, steps + 1)
    in float32, as Dream computes them) commit int(masked * (1 - s / t)) of the `masked` positions still
    masked, and all of them at the last step. int() rounds down, so a step can commit nothing (with
    steps = masked the first one does)."""
    if step >= steps - 1:
        return int(masked)
    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float32)
    return int(torch.tensor(float(masked), dtype=torch.float32) * (1 - ts[step + 1] / ts[step]))


def position_stats(logits: torch.Tensor, x0: torch.Tensor):
    """Per generated position: (probs or None, p(x0), top-1 p, top1 - top2 margin, sum p log p).

    Where the kernels are enabled (CUDA) one fused pass over the vocabulary gives the statistics
    without writing the [N, V] probability matrix (LLaDA's vocabulary is 126k)."""
    if KD.enabled(logits.device):
        c = KD.confidence(logits, 1.0, ids=x0)
        return None, c.token_prob.double(), c.max_prob.double(), c.margin.double(), -c.entropy.double()
    probs = torch.softmax(logits.double(), dim=-1)
    top2 = probs.topk(2, dim=-1).values
    neg_entropy = (probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    return probs, probs.gather(-1, x0[:, None])[:, 0], top2[:, 0], top2[:, 0] - top2[:, 1], neg_entropy


def candidate_tokens(logits: torch.Tensor, cfg: S.SamplingConfig, gen: torch.Generator | None) -> torch.Tensor:
    """argmax of the logits (greedy) or of warped logits + Gumbel noise (a sample at temperature)."""
    if cfg.greedy:
        return logits.argmax(-1)
    warped = S.warp(logits, cfg).double()
    u = torch.rand(warped.shape, generator=gen, dtype=torch.float64).clamp_(1e-20, 1.0)
    return (warped - torch.log(-torch.log(u))).argmax(-1)


@dataclass
class Step:
    x: torch.Tensor            # [N] generated region after this step (mask_id where still masked)
    was_masked: torch.Tensor   # [N] bool: masked before this step
    committed: torch.Tensor    # [N] bool: committed this step
    x0: torch.Tensor           # [N] the prediction at every position this step (ghosts under masks)
    conf: torch.Tensor         # [N] probability of x0
    score: torch.Tensor        # [N] the rule's score (-inf outside the candidates)
    candidates: torch.Tensor   # [N] bool
    threshold: float | None
    k: int                     # the schedule's count for this step
    block: int
    block_range: tuple[int, int]  # [start, end) in generated positions
    step_in_block: int
    nfe: int
    forwarded: int             # tokens run through the model this step
    done: bool


def validate(gen_length: int, block_length: int, steps: int, rule: str, prompt_len: int, cfg_scale: float,
             prefix_cache: bool) -> tuple[int, int]:
    R.RULES.get(rule)   # OptionError naming the known rules
    if gen_length < 1:
        raise MethodError(f"gen_length must be >= 1, got {gen_length}.")
    if block_length <= 0:
        block_length = gen_length
    if block_length > gen_length or gen_length % block_length:
        raise MethodError(f"block_length ({block_length}) must divide gen_length ({gen_length}).")
    blocks = gen_length // block_length
    if steps <= 0:
        steps = gen_length
    if steps % blocks:
        raise MethodError(f"steps ({steps}) must be a multiple of the number of blocks ({blocks}).")
    if steps > gen_length:
        raise MethodError(f"steps ({steps}) cannot exceed gen_length ({gen_length}): a step commits >= 1 token.")
    if cfg_scale < 0:
        raise MethodError(f"cfg_scale must be >= 0, got {cfg_scale}.")
    if cfg_scale > 0 and prefix_cache:
        raise MethodError("Classifier-free guidance and the prefix cache cannot be combined here.")
    if prompt_len < 1:
        raise MethodError("The prompt is empty.")
    return block_length, steps


def resolve_rule(rule: str, rule_params: dict | None = None):
    """(the rule function, the options passed to it, the schedule kind): `schedule` is one of the
    R.SAMPLER_OPTIONS, read by the sampler, not by the rule."""
    fn = R.RULES.get(rule).obj   # OptionError naming the known rules
    params = dict(rule_params or {})
    schedule_kind = params.pop("schedule", "even")
    if schedule_kind not in R.SCHEDULES:
        raise MethodError(f"schedule must be one of {', '.join(R.SCHEDULES)}, got {schedule_kind!r}.")
    return fn, params, schedule_kind


def step_count(schedule_kind: str, schedule: list[int], masked: int, step: int, steps_per_block: int) -> int:
    """The k a schedule rule commits at step `step` of a block: the even schedule's entry (everything left
    once it is used up) or Dream's count of the `masked` positions still masked."""
    if schedule_kind == "dream":
        return dream_transfer_count(masked, step, steps_per_block)
    return schedule[step] if step < len(schedule) else masked


def choose(fn, params: dict, view: R.StepView, schedule_kind: str = "even") -> tuple[R.Choice, torch.Tensor]:
    """One step's choice: the rule's commit mask, limited to the candidates, and at least one commit per
    step (the best-scored candidate, by confidence where no score is finite), except where Dream's schedule
    says none. Returns (the rule's Choice, the commit mask)."""
    cand = view.candidates
    choice = fn(view, **params)
    commit = choice.commit & cand
    if not bool(commit.any()) and not (schedule_kind == "dream" and view.k == 0):
        best = torch.where(cand, choice.score.double(), torch.tensor(float("-inf"), dtype=torch.float64))
        if not bool(torch.isfinite(best).any()):
            best = torch.where(cand, view.conf, torch.tensor(-1.0, dtype=view.conf.dtype))
        commit[int(best.argmax())] = True
    return choice, commit


def choose_batch(logits: torch.Tensor, candidates: torch.Tensor, fn, params: dict, schedule_kind: str,
                 ks: list[int], step: int, steps_per_block: int, progress: list[float], eos_ids: set,
                 states: list[dict], generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched step (greedy): logits [B, N, V] of N positions per row (mask id at -inf), candidates
    [B, N] bool. Each row's choice is the per-run one (`choose` on the StepView diffuse builds, with the
    row's k, progress and rule state); a row without candidates commits nothing. Returns (x0 [B, N], the
    argmax, and commit [B, N] bool)."""
    x0 = logits.argmax(-1)
    commit = torch.zeros_like(candidates)
    cfg = S.SamplingConfig()
    for r in range(logits.shape[0]):
        if not bool(candidates[r].any()):
            continue
        probs, conf, max_prob, margin, neg_entropy = position_stats(logits[r], x0[r])
        view = R.StepView(probs=probs, logits=logits[r], x0=x0[r], conf=conf, max_prob=max_prob, margin=margin,
                          neg_entropy=neg_entropy, candidates=candidates[r], k=ks[r], step=step,
                          steps=steps_per_block, progress=progress[r], eos_ids=eos_ids, generator=generator,
                          state=states[r], sampling=cfg)
        commit[r] = choose(fn, params, view, schedule_kind)[1]
    return x0, commit


def diffuse(adapter, prompt: torch.Tensor, gen_length: int = 64, block_length: int = 0, steps: int = 0,
            rule: str = "low_confidence", rule_params: dict | None = None,
            sampling: S.SamplingConfig | None = None, cfg_scale: float = 0.0, prefix_cache: bool = False,
            stop_at_eos: bool = True, resume: dict | None = None) -> Iterator[Step]:
    """Yield one Step per denoising step. prompt: [1, P] ids. One loop kept whole (~100 lines): blocks, steps,
    the forward, the rule's choice and the commit are the algorithm of LLaDA / Fast-dLLM and read best in order.

    resume (a fork of a recorded run, checked by check_resume): start from a partly filled canvas instead of
    all masks, {"canvas": [gen_length ids, mask_id where masked], "block": b, "step_in_block": i,
    "block_masked": m}: blocks before b that are filled are skipped as usual, block b resumes at its step i
    with the schedule its start had (m masked positions then), later blocks start as usual. A recorded run's
    canvas before its step k with that step's block position continues exactly as the run did (greedy, a
    deterministic rule): the sampler's only other state is the random stream and a rule's `state` (credit)."""
    cfg = sampling or S.SamplingConfig()
    P = prompt.shape[1]
    block_length, steps = validate(gen_length, block_length, steps, rule, P, cfg_scale, prefix_cache)
    if prefix_cache and not adapter.supports_prefix_cache():
        raise MethodError(f"The prefix cache is not available for {adapter.name}.")
    fn, params, schedule_kind = resolve_rule(rule, rule_params)
    mask_id = adapter.mask_id
    dev = prompt.device
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long, device=dev)
    x[:, :P] = prompt
    if resume is not None:
        x[0, P:] = torch.tensor(resume["canvas"], dtype=torch.long, device=dev)
    blocks = gen_length // block_length
    steps_per_block = steps // blocks
    gen = cfg.generator("cpu")
    state: dict = {}
    nfe = 0
    N = gen_length
    for b in range(blocks):
        lo, hi = b * block_length, (b + 1) * block_length   # generated positions of the block
        in_block = torch.zeros(N, dtype=torch.bool)
        in_block[lo:hi] = True
        masked0 = int((x[0, P + lo:P + hi] == mask_id).sum())
        if masked0 == 0:
            continue
        schedule = num_transfer_tokens(masked0, steps_per_block)
        i = 0
        if resume is not None and b == resume["block"]:     # the block's schedule from its start, at step i
            schedule = num_transfer_tokens(max(int(resume["block_masked"]), 1), steps_per_block)
            i = int(resume["step_in_block"])
        cache = None
        while bool((x[0, P + lo:P + hi] == mask_id).any()):
            # ---- one forward -------------------------------------------------------------------
            if prefix_cache and i == 0:
                lg, cache, clen = adapter.prefix_cache(x, P + lo)
                forwarded = x.shape[1]
                logits = lg[0, P:]
            elif prefix_cache:
                lg = adapter.logits_from(x, cache, clen)
                forwarded = x.shape[1] - clen
                logits = torch.zeros(N, lg.shape[-1], dtype=lg.dtype)
                first = P - clen  # index in lg of generated position 0 (may be negative)
                logits[max(0, -first):] = lg[0, max(0, first):]
            elif cfg_scale > 0:
                un = x.clone()
                un[:, :P] = mask_id
                both = adapter.logits(torch.cat([x, un], 0))
                cond, unc = both[0, P:], both[1, P:]
                logits = unc + (cfg_scale + 1) * (cond - unc)
                logits[:, mask_id] = float("-inf")  # -inf - -inf is nan there
                forwarded = 2 * x.shape[1]
            else:
                logits = adapter.logits(x)[0, P:]
                forwarded = x.shape[1]
            nfe += 1
            # ---- choose ------------------------------------------------------------------------
            x0 = candidate_tokens(logits, cfg, gen)
            probs, conf, max_prob, margin, neg_entropy = position_stats(logits, x0)
            was_masked = x[0, P:] == mask_id
            cand = was_masked & in_block
            k = step_count(schedule_kind, schedule, int(cand.sum()), i, steps_per_block)
            committed_before = N - int(was_masked.sum())
            view = R.StepView(probs=probs, logits=logits, x0=x0, conf=conf, max_prob=max_prob, margin=margin,
                              neg_entropy=neg_entropy, candidates=cand, k=k, step=i,
                              steps=steps_per_block, progress=committed_before / N, eos_ids=adapter.eos_ids,
                              generator=gen, state=state, sampling=cfg)
            choice, commit = choose(fn, params, view, schedule_kind)
            if bool((x0[commit] == mask_id).any()):  # would never finish: fail loudly instead
                raise MethodError("The model predicted the mask token itself; its logits are not usable.")
            x[0, P:][commit] = x0[commit]
            i += 1
            done = not bool((x[0, P:] == mask_id).any())
            if stop_at_eos and not done:
                done = _eos_settled(x[0, P:], mask_id, adapter.eos_ids)
            yield Step(x=x[0, P:].clone(), was_masked=was_masked, committed=commit, x0=x0, conf=conf,
                       score=choice.score, candidates=cand, threshold=choice.threshold, k=k, block=b,
                       block_range=(lo, hi), step_in_block=i - 1, nfe=nfe, forwarded=forwarded, done=done)
            if done:
                return


def check_resume(resume, gen_length: int, block_length: int, steps: int, mask_id: int, vocab: int,
                 prefix_cache: bool) -> dict:
    """A resume dict for diffuse, checked (MethodError naming what is wrong): the canvas has gen_length entries,
    each a token id of the vocabulary or the mask (None or mask_id), the block and its step exist, and with the
    prefix cache the step is a block's first (the cache is of the canvas at the block's start)."""
    if not isinstance(resume, dict):
        raise MethodError("resume must be a dict with canvas, block, step_in_block and block_masked.")
    canvas = resume.get("canvas")
    if not isinstance(canvas, (list, tuple)) or len(canvas) != gen_length:
        n = len(canvas) if isinstance(canvas, (list, tuple)) else type(canvas).__name__
        raise MethodError(f"The canvas must hold gen_length ({gen_length}) positions, got {n}.")
    ids = []
    for i, t in enumerate(canvas):
        if t is None:
            t = mask_id
        if isinstance(t, bool) or not isinstance(t, int) or not (0 <= t < vocab or t == mask_id):
            raise MethodError(f"Canvas position {i}: {str(t)[:40]} is not a token id (0..{vocab - 1}) or the mask "
                              f"({mask_id}).")
        ids.append(int(t))
    if block_length <= 0:
        block_length = gen_length
    blocks = gen_length // block_length
    spb = (steps if steps > 0 else gen_length) // blocks
    b, i, m = resume.get("block"), resume.get("step_in_block"), resume.get("block_masked")
    for name, v, hi in (("block", b, blocks - 1), ("step_in_block", i, spb - 1), ("block_masked", m, block_length)):
        lo = 1 if name == "block_masked" else 0
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise MethodError(f"resume: {name} must be an integer in {lo}..{hi}, got {str(v)[:40]}.")
    if prefix_cache and i > 0:
        raise MethodError(f"With the prefix cache a run can resume only at a block's first step (this is step {i} "
                          "of its block): the cache is computed there, from the canvas at the block's start.")
    return {"canvas": ids, "block": b, "step_in_block": i, "block_masked": m}


def _eos_settled(gen: torch.Tensor, mask_id: int, eos_ids: set[int]) -> bool:
    """True once an EOS is committed with no mask before it: the text is final."""
    for t in gen.tolist():
        if t == mask_id:
            return False
        if t in eos_ids:
            return True
    return False
