"""Remasking rules: which still-masked positions of the current block to commit this step.

Each rule is a small function `rule(v: StepView, **params) -> Choice`: a boolean commit mask
over the generated positions, the score it ranked them by, and the threshold it used (if any).
The sampler (engine.diffusion.sampler) guarantees at least one commit per step, so a rule whose
threshold nothing clears still makes progress (Fast-dLLM's own loop can spin there).

Schedule rules commit the k best-scored positions, k from the rule's `schedule` option: "even"
(LLaDA's get_num_transfer_tokens, the default) or "dream" (Dream's int(m * (1 - s / t)) of the m
still masked; engine.diffusion.sampler.dream_transfer_count). The sampler reads `schedule` itself
(SAMPLER_OPTIONS): the rule sees the count as `v.k`. Threshold rules commit what clears their
threshold and finish a block whenever it is filled, ignoring the step budget.

Dream's rules (maskgit_plus, topk_margin, entropy) score, as Dream's sample_tokens does, the
distribution the candidate was drawn from: the logits after temperature, top-k and top-p
(`StepView.warped()`). maskgit_plus is the probability of the SAMPLED token there (the top-1
only when greedy), margin and entropy are those of that warped distribution. `score_probs="raw"`
keeps the unwarped softmax (this lab's scores before issue 31). Greedy without top-k / top-p,
the two are the same. The warpers are the engine's (engine.sampling.warp, Hugging Face's order:
top-k before top-p, and min-p / typical when set); Dream applies top-p before top-k, which can
differ only when both are set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from engine import sampling as S
from engine.options import Components, Opt

NEG = float("-inf")
# The registry of remasking rules. A new rule is one function registered here with its options:
# the diffusion method, its CLI flags and the page's widgets pick it up. Options are passed to the
# rule as keyword arguments.
RULES = Components("rule")
THRESHOLD = Opt(0.9, "confidence threshold", min=0.0, max=1.0, min_open=True, slider=True, step=0.01)
SCHEDULES = ("even", "dream")
SCHEDULE = Opt("even", "tokens committed per step: even = LLaDA's schedule (floor(masked / steps), the first "
                       "remainder steps one more); dream = Dream's int(m * (1 - s / t)) of the m still masked, t and s "
                       "from linspace(1, 0.001, steps + 1), everything left at the block's last step (a step may "
                       "commit nothing, as in Dream)", choices=SCHEDULES)
SCORE_PROBS = Opt("warped", "distribution Dream's rules score: warped = as Dream's sample_tokens, after temperature / "
                            "top-k / top-p (maskgit_plus scores the sampled token); raw = the unwarped softmax "
                            "(maskgit_plus scores the top-1). Identical when greedy without top-k / top-p",
                  choices=("warped", "raw"))
# Options a rule declares that the sampler consumes (they are not passed to the rule function).
SAMPLER_OPTIONS = ("schedule",)


@dataclass
class StepView:
    probs: torch.Tensor | None  # [N, V] softmax of the (unwarped) logits; None when only the
                                # per-position statistics below were computed (the fused kernel)
    logits: torch.Tensor       # [N, V] unwarped
    x0: torch.Tensor           # [N] candidate token per position (argmax of the Gumbel-noised warped logits:
                               # a draw from the warped distribution; the argmax when greedy)
    conf: torch.Tensor         # [N] unwarped probability of x0
    max_prob: torch.Tensor     # [N] unwarped top-1 probability
    margin: torch.Tensor       # [N] unwarped top-1 minus top-2 probability
    neg_entropy: torch.Tensor  # [N] unwarped sum p log p
    candidates: torch.Tensor   # [N] bool: still masked and inside the current block
    k: int                     # tokens the even schedule commits this step
    step: int                  # step index inside the block
    steps: int                 # steps budgeted for the block
    progress: float            # fraction of all generated positions already committed
    eos_ids: set = field(default_factory=set)
    generator: torch.Generator | None = None
    state: dict = field(default_factory=dict)  # per-run memory (CreditDecoding's credits)
    sampling: S.SamplingConfig | None = None   # the warpers x0 was drawn with (None: greedy, no filters)
    _warped: tuple | None = field(default=None, repr=False)

    def warped(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(p(x0), top-1 minus top-2, sum p log p) under the WARPED distribution x0 was drawn from
        (temperature, top-k, top-p, min-p, typical: engine.sampling.warp), as Dream's sample_tokens
        scores. Greedy without filters it is the unwarped softmax; computed once per step, on demand."""
        if self._warped is None:
            cfg = self.sampling
            if cfg is None or (cfg.greedy and not _filters(cfg)):
                self._warped = (self.conf, self.margin, self.neg_entropy)
            else:
                p = torch.softmax(S.warp(self.logits, cfg).double(), dim=-1)
                top2 = p.topk(2, dim=-1).values
                neg_entropy = (p * torch.log(p.clamp_min(1e-30))).sum(-1)
                self._warped = (p.gather(-1, self.x0[:, None])[:, 0], top2[:, 0] - top2[:, 1], neg_entropy)
        return self._warped


def _filters(cfg: S.SamplingConfig) -> bool:
    return cfg.top_k > 0 or cfg.top_p < 1.0 or cfg.min_p > 0.0 or cfg.typical_p < 1.0


@dataclass
class Choice:
    commit: torch.Tensor       # [N] bool
    score: torch.Tensor        # [N] float (-inf outside the candidates)
    threshold: float | None = None


def _masked(score: torch.Tensor, v: StepView) -> torch.Tensor:
    return torch.where(v.candidates, score.double(), torch.full_like(score, NEG, dtype=torch.float64))


def top_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k best-scored positions (ties broken towards the lower position, as torch.topk)."""
    out = torch.zeros(score.shape[0], dtype=torch.bool)
    k = min(k, int(torch.isfinite(score).sum()))
    if k > 0:
        out[torch.topk(score, k).indices] = True
    return out


def _by_score(score, v):
    s = _masked(score, v)
    return Choice(top_k(s, v.k), s)


# --- schedule rules (LLaDA, Dream) ------------------------------------------------------------
@RULES.register("low_confidence", "LLaDA: commit the k most probable predictions", options={"schedule": SCHEDULE})
def low_confidence(v: StepView) -> Choice:
    """LLaDA: the (unwarped) probability of the chosen token."""
    return _by_score(v.conf, v)


@RULES.register("random", "LLaDA: commit k random masked positions", options={"schedule": SCHEDULE})
def random(v: StepView) -> Choice:
    """LLaDA: a uniform random score, i.e. a random order of unmasking."""
    return _by_score(torch.rand(v.conf.shape[0], generator=v.generator, dtype=torch.float64), v)


DREAM_OPTIONS = {"schedule": SCHEDULE, "score_probs": SCORE_PROBS}


@RULES.register("maskgit_plus", "Dream: probability of the sampled token (top-1 when greedy)", options=DREAM_OPTIONS)
def maskgit_plus(v: StepView, score_probs: str = "warped") -> Choice:
    """Dream: the warped probability of the sampled candidate (raw: the unwarped top-1 probability)."""
    return _by_score(v.warped()[0] if score_probs == "warped" else v.max_prob, v)


@RULES.register("topk_margin", "Dream: top-1 minus top-2 probability", options=DREAM_OPTIONS)
def topk_margin(v: StepView, score_probs: str = "warped") -> Choice:
    """Dream: top-1 minus top-2 probability of the warped distribution (raw: of the unwarped one)."""
    return _by_score(v.warped()[1] if score_probs == "warped" else v.margin, v)


@RULES.register("entropy", "Dream: lowest entropy first", options=DREAM_OPTIONS)
def entropy(v: StepView, score_probs: str = "warped") -> Choice:
    """Dream: negative entropy of the warped distribution (raw: of the unwarped one)."""
    return _by_score(v.warped()[2] if score_probs == "warped" else v.neg_entropy, v)


# --- parallel rules ---------------------------------------------------------------------------
@RULES.register("threshold", "Fast-dLLM: every prediction with confidence >= threshold (at least one)",
                options={"threshold": THRESHOLD})
def threshold(v: StepView, threshold: float = 0.9) -> Choice:
    """Fast-dLLM: commit every candidate whose confidence >= threshold."""
    s = _masked(v.conf, v)
    return Choice(s >= threshold, s, threshold)


@RULES.register("prophet", "Prophet: commit everything once the top1-top2 logit gap is large enough")
def prophet(v: StepView, gaps: tuple = (7.5, 5.0, 2.5)) -> Choice:
    """Prophet: low_confidence step, but once the smallest top1-top2 logit gap among the
    candidates clears a threshold that falls with progress (7.5 / 5.0 / 2.5 before 33% /
    67% / later), commit every remaining candidate at once."""
    top2 = v.logits.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    s = _masked(gap, v)
    tau = gaps[0] if v.progress < 1 / 3 else gaps[1] if v.progress < 2 / 3 else gaps[2]
    cand_gap = s[v.candidates]
    if cand_gap.numel() and bool(cand_gap.min() >= tau):
        return Choice(v.candidates.clone(), s, tau)
    base = _masked(v.conf, v)
    return Choice(top_k(base, v.k), s, tau)


@RULES.register("eos_ascending", "EOS early rejection + ascending step size",
                options={"eos_gamma": Opt(3.0, "EOS early rejection strength", min=0.0, max=16.0)})
def eos_ascending(v: StepView, eos_gamma: float = 3.0) -> Choice:
    """EOS early rejection + ascending step size: an EOS candidate's confidence is damped by
    (step / steps) ** eos_gamma early in the block, and the number committed per step grows
    linearly with the step (k_i proportional to i + 1) instead of staying flat."""
    frac = (v.step + 1) / max(v.steps, 1)
    is_eos = torch.tensor([int(t) in v.eos_ids for t in v.x0.tolist()], dtype=torch.bool)
    damp = torch.where(is_eos, torch.full_like(v.conf, frac ** eos_gamma), torch.ones_like(v.conf))
    s = _masked(v.conf * damp, v)
    remaining_steps = max(v.steps - v.step, 1)
    n = int(v.candidates.sum())
    # ascending: of the n left over the remaining steps, step j (0-based from now) gets weight (v.step + j + 1)
    weights = [v.step + j + 1 for j in range(remaining_steps)]
    k = n if remaining_steps == 1 else max(1, math.floor(n * weights[0] / sum(weights)))
    return Choice(top_k(s, k), s)


@RULES.register("credit", "CreditDecoding: threshold on credit-fused confidence",
                options={"threshold": THRESHOLD,
                         "decay": Opt(0.7, "CreditDecoding credit decay per step", min=0.0, max=1.0, slider=True),
                         "alpha": Opt(0.6, "CreditDecoding credit weight", min=0.0, max=10.0)})
def credit(v: StepView, threshold: float = 0.9, decay: float = 0.7, alpha: float = 0.6) -> Choice:
    """CreditDecoding: each position keeps a credit per token it predicted before (decayed by
    `decay` each step, increased by the predicted probability); the credit is fused into the
    logits (logit + alpha * log(1 + credit)) and the threshold rule runs on the fused confidence."""
    cred = v.state.get("credit")
    if cred is None or cred.shape != v.logits.shape:
        cred = torch.zeros(v.logits.shape, dtype=torch.float64, device=v.logits.device)
    cred = cred * decay
    top = v.logits.argmax(-1)
    cred[torch.arange(cred.shape[0]), top] += v.max_prob
    v.state["credit"] = cred
    fused = torch.softmax(v.logits + alpha * torch.log1p(cred), dim=-1)
    fused_conf = fused.gather(-1, v.x0[:, None])[:, 0]
    s = _masked(fused_conf, v)
    return Choice(s >= threshold, s, threshold)


@RULES.register("local_leap", "LocalLeap: anchors + their neighbourhood under a relaxed threshold",
                options={"anchor": Opt(0.9, "LocalLeap anchor confidence", min=0.0, max=1.0, min_open=True,
                                       slider=True),
                         "relaxed": Opt(0.6, "LocalLeap relaxed confidence near anchors (<= anchor)", min=0.0,
                                        max=1.0, min_open=True, slider=True),
                         "radius": Opt(2, "LocalLeap neighbourhood radius", min=0, max=64)})
def local_leap(v: StepView, anchor: float = 0.9, relaxed: float = 0.6, radius: int = 2) -> Choice:
    """LocalLeap: candidates with confidence >= anchor are anchors; candidates within `radius`
    positions of an anchor are committed too when their confidence >= relaxed."""
    s = _masked(v.conf, v)
    anchors = s >= anchor
    near = torch.zeros_like(anchors)
    idx = anchors.nonzero()[:, 0].tolist()
    for a in idx:
        near[max(0, a - radius):a + radius + 1] = True
    commit = anchors | (near & (s >= relaxed))
    return Choice(commit, s, anchor)
