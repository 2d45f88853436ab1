"""Dream's remasking rules as Dream's generation code defines them, checked step for step against a
reference written for this test from reading Dream's generation utilities (sample_tokens and the
diffusion loop of DreamLM/Dream, Dream-v0 generation_utils.py):

- the candidate x0 is drawn from the warped distribution (temperature, then top-p, then top-k);
- maskgit_plus scores the warped probability of that SAMPLED token (its top-1 only when greedy),
  topk_margin the warped top-1 minus top-2, entropy the warped sum p log(p + 1e-10);
- Dream's schedule: at step i, with ts = linspace(1, eps=1e-3, steps + 1), commit
  int(m * (1 - ts[i+1] / ts[i])) of the m positions still masked (all at the last step); none
  when that rounds to 0.

Dream draws x0 with torch.distributions.Categorical; the reference draws it by Gumbel-max with the
same uniform noise the engine draws (one [gen_length, V] matrix per step), the same distribution,
so that the two can be compared token for token.
"""
import pytest
import torch

from engine import methods, run
from engine.diffusion import rules as R
from engine.diffusion.adapters import DiffusionAdapter
from engine.diffusion.sampler import dream_transfer_count
from engine.errors import OptionError
from engine.sampling import SamplingConfig
from tests.conftest import make_tiny_lm

MASK = 16
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def lm():
    m = make_tiny_lm(seed=5)
    # Dream-style: logits shifted right by one, bidirectional attention
    m.diffusion = DiffusionAdapter(m.model, MASK, shift=True, bidirectional=True, name="tiny-dream",
                                   eos_ids=m.eos_ids)
    return m


# ---- the reference ---------------------------------------------------------------------------
def ref_top_p(z, top_p):
    """Dream's nucleus: in descending order, a token goes once the mass of the tokens before it
    (inclusive cumulative sum shifted by one) exceeds top_p; the most likely always stays."""
    order = torch.argsort(z, dim=-1, descending=True)
    cum = torch.softmax(z.gather(-1, order), dim=-1).cumsum(-1)
    drop_sorted = torch.zeros_like(cum, dtype=torch.bool)
    drop_sorted[..., 1:] = cum[..., :-1] > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return z.masked_fill(drop, torch.finfo(z.dtype).min)


def ref_top_k(z, k):
    kth = torch.topk(z, min(k, z.shape[-1]), dim=-1).values[..., -1:]
    return z.masked_fill(z < kth, torch.finfo(z.dtype).min)


def ref_count(m, i, steps, eps=1e-3):
    """How many Dream unmasks at step i: float32 time grid, as Dream builds it; int() floors."""
    if i == steps - 1:
        return m
    t = torch.linspace(1, eps, steps + 1)
    return int(torch.tensor(m, dtype=torch.float32) * (1 - t[i + 1] / t[i]))


def ref_even(m, steps):
    return [m // steps + (1 if i < m % steps else 0) for i in range(steps)]


def reference_dream(model, prompt, gen_length, steps, alg, temperature=0.0, top_p=None, top_k=None,
                    schedule="dream", seed=0):
    """x's generated region after every step of Dream's loop (one block: Dream has none)."""
    g = torch.Generator().manual_seed(seed)
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), MASK, dtype=torch.long)
    x[:, :P] = prompt
    even = ref_even(gen_length, steps)
    history = []
    for i in range(steps):
        L = x.shape[1]
        out = model(input_ids=x, attention_mask=torch.ones(1, 1, L, L, dtype=torch.bool)).logits[0].float()
        out = torch.cat([out[:1], out[:-1]])          # Dream: position i is predicted at i - 1
        out[:, MASK] = float("-inf")                  # the engine's adapters never predict [MASK]
        z = out[P:]
        if temperature > 0:
            z = z / temperature
        if top_p is not None and top_p < 1:
            z = ref_top_p(z, top_p)
        if top_k:
            z = ref_top_k(z, top_k)
        probs = torch.softmax(z.double(), dim=-1)
        if temperature > 0:
            u = torch.rand(z.shape, generator=g, dtype=torch.float64).clamp(1e-20, 1.0)
            x0 = (torch.log(probs) - torch.log(-torch.log(u))).argmax(-1)
            conf = probs.gather(-1, x0[:, None])[:, 0]
        else:
            conf, x0 = probs.max(-1)
        if alg == "topk_margin":
            top = probs.sort(-1, descending=True).values
            conf = top[:, 0] - top[:, 1]
        elif alg == "entropy":
            conf = (probs * torch.log(probs + 1e-10)).sum(-1)
        masked = x[0, P:] == MASK
        m = int(masked.sum())
        n = ref_count(m, i, steps) if schedule == "dream" else even[i]
        full = torch.where(masked, conf, torch.tensor(float("-inf"), dtype=torch.float64))
        if n > 0:
            idx = torch.topk(full, n).indices
            x[0, P + idx] = x0[idx]
        history.append(x[0, P:].tolist())
    return history


def engine_history(m, gen_length, steps, rule, sampling, **opts):
    trace = run.run(m, "diffusion", PROMPT, max_new_tokens=gen_length, sampling=sampling,
                    options={"rule": rule, "steps": steps, "stop_at_eos": False, **opts})
    return trace, [[t if s != "mask" else MASK for s, t in zip(st["state"], st["tokens"])] for st in trace.steps]


CASES = [
    ("maskgit_plus", dict(temperature=0.8)),
    ("maskgit_plus", dict(temperature=1.0, top_k=40)),
    ("topk_margin", dict(temperature=0.7, top_p=0.9)),
    ("topk_margin", dict(temperature=1.3)),
    ("entropy", dict(temperature=0.9, top_k=25)),
    ("entropy", dict(temperature=0.0)),
    ("maskgit_plus", dict(temperature=0.0)),
]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["dream", "even"])
@pytest.mark.parametrize("rule,samp", CASES)
def test_dream_rules_match_the_reference_step_for_step(lm, rule, samp, schedule):
    gen, steps = 12, 6
    cfg = SamplingConfig(seed=11, **samp)
    trace, hist = engine_history(lm, gen, steps, rule, cfg, schedule=schedule)
    with torch.inference_mode():
        ref = reference_dream(lm.model, lm.encode(PROMPT), gen, steps, rule, temperature=samp["temperature"],
                              top_p=samp.get("top_p"), top_k=samp.get("top_k"), schedule=schedule, seed=11)
    assert hist == ref
    assert len(trace.steps) == steps == trace.counters.target_forwards


@pytest.mark.slow
def test_dream_schedule_one_token_per_step_starts_with_an_empty_step(lm):
    """steps = gen_length: Dream's int(m (1 - s/t)) rounds the first step down to 0 and the last commits 2."""
    gen = 10
    trace, hist = engine_history(lm, gen, gen, "maskgit_plus", SamplingConfig(), schedule="dream")
    counts = [len(s["new_ids"]) for s in trace.steps]
    assert counts == [0] + [1] * (gen - 2) + [2]
    assert [s["k"] for s in trace.steps] == counts
    assert trace.steps[0]["events"] == [] and "mask" not in trace.steps[-1]["state"]
    with torch.inference_mode():
        assert hist == reference_dream(lm.model, lm.encode(PROMPT), gen, gen, "maskgit_plus")


@pytest.mark.parametrize("masked,steps", [(64, 64), (64, 32), (64, 16), (256, 128), (7, 7), (13, 5), (512, 512)])
def test_dream_transfer_count_matches_the_reference(masked, steps):
    m, left = masked, []
    for i in range(steps):
        k = dream_transfer_count(m, i, steps)
        assert k == ref_count(m, i, steps)
        m -= k
        left.append(m)
    assert left[-1] == 0 and all(a >= b for a, b in zip(left, left[1:]))


def test_warped_scores_are_the_sampled_tokens_and_raw_keeps_the_unwarped_softmax():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    x0 = torch.tensor([0, 5, 9, 3, 3, 7])
    p = torch.softmax(logits.double(), -1)
    top2 = p.topk(2, -1).values
    cfg = SamplingConfig(temperature=0.5, seed=0)
    v = R.StepView(probs=p, logits=logits, x0=x0, conf=p.gather(-1, x0[:, None])[:, 0], max_prob=top2[:, 0],
                   margin=top2[:, 0] - top2[:, 1], neg_entropy=(p * p.log()).sum(-1),
                   candidates=torch.ones(6, dtype=torch.bool), k=2, step=0, steps=3, progress=0.0, sampling=cfg)
    w = torch.softmax(logits.double() / 0.5, -1)
    wtop = w.sort(-1, descending=True).values
    assert torch.allclose(R.maskgit_plus(v).score, w.gather(-1, x0[:, None])[:, 0])
    assert torch.allclose(R.topk_margin(v).score, wtop[:, 0] - wtop[:, 1])
    assert torch.allclose(R.entropy(v).score, (w * torch.log(w + 1e-10)).sum(-1), atol=1e-6)
    assert torch.equal(R.maskgit_plus(v, score_probs="raw").score, top2[:, 0])
    assert torch.equal(R.topk_margin(v, score_probs="raw").score, v.margin)
    assert torch.equal(R.entropy(v, score_probs="raw").score, v.neg_entropy)
    # greedy without filters (x0 = the argmax): warped is the unwarped softmax itself
    top1 = logits.argmax(-1)
    g = R.StepView(**{**v.__dict__, "x0": top1, "conf": top2[:, 0], "sampling": SamplingConfig(), "_warped": None})
    assert torch.equal(R.maskgit_plus(g).score, R.maskgit_plus(g, score_probs="raw").score)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["maskgit_plus", "topk_margin", "entropy"])
def test_greedy_runs_are_unchanged_by_the_warped_scores(lm, rule):
    _, warped = engine_history(lm, 12, 6, rule, SamplingConfig())
    _, raw = engine_history(lm, 12, 6, rule, SamplingConfig(), score_probs="raw")
    assert warped == raw


@pytest.mark.slow
def test_warped_and_raw_differ_when_sampling(lm):
    cfg = SamplingConfig(temperature=1.5, seed=3)
    a = [engine_history(lm, 16, 8, "maskgit_plus", cfg, score_probs=sp)[1] for sp in ("warped", "raw")]
    assert a[0] != a[1]   # the order of unmasking follows the sampled tokens' warped probability


def test_schedule_and_score_probs_are_typed_options(lm):
    with pytest.raises(OptionError, match="schedule"):
        run.prepare(lm, "diffusion", PROMPT, max_new_tokens=8, options={"rule": "maskgit_plus", "schedule": "cosine"})
    with pytest.raises(OptionError, match="score_probs"):
        run.prepare(lm, "diffusion", PROMPT, max_new_tokens=8, options={"rule": "entropy", "score_probs": "soft"})
    trace, _ = run.prepare(lm, "diffusion", PROMPT, max_new_tokens=8,
                           options={"rule": "threshold", "schedule": "dream", "score_probs": "raw"})
    assert set(trace.meta["ignored_options"]) == {"schedule", "score_probs"}   # threshold rules have no schedule
    spec = methods.get("diffusion")
    assert spec.options["schedule"].when == {"rule": ("low_confidence", "random", "maskgit_plus", "topk_margin",
                                                      "entropy")}
    assert "dream" in spec.options["schedule"].describe()


@pytest.mark.slow
def test_a_dream_schedule_trace_with_empty_steps_passes_the_schema(lm):
    from engine.trace import loads
    trace, _ = engine_history(lm, 8, 8, "entropy", SamplingConfig(temperature=0.9, seed=2), schedule="dream")
    assert trace.steps[0]["new_ids"] == []
    back = loads(trace.to_json())
    assert [s["k"] for s in back.steps] == [s["k"] for s in trace.steps]
