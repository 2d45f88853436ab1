"""Speculative sampling is lossless: on a tiny model the first tokens' distribution over many seeded
runs matches exact autoregressive sampling within a statistical bound (chain, sampled tree, and a
tree of point-mass proposals)."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from engine import run
from engine import sampling as S
from engine.sampling import SamplingConfig

PROMPT = "a b a b a c a d a"
CFG = dict(temperature=1.0, top_k=4)
T = 2          # tokens per sample
RUNS = 600

pytestmark = pytest.mark.usefixtures("one_thread_module")



def exact_distribution(lm, ids: list[int]) -> dict[tuple, float]:
    """P(first T tokens) under autoregressive sampling from the warped target (EOS ends a sequence)."""
    cfg = SamplingConfig(**CFG)
    out = {}

    def rec(prefix, prob):
        if len(prefix) == T or (prefix and prefix[-1] in lm.eos_ids):
            out[tuple(prefix)] = out.get(tuple(prefix), 0.0) + prob
            return
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([ids + prefix])).logits[0, -1]
        p = S.warp(logits, cfg).softmax(-1)
        for t in torch.nonzero(p > 0).flatten().tolist():
            rec(prefix + [t], prob * float(p[t]))
    rec([], 1.0)
    return out


def draft_first_token(lm, ids, exit_layer=1) -> torch.Tensor:
    """The early-exit draft's distribution of the first token (to show the test has power)."""
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        h = lm.model.model.norm(out.hidden_states[exit_layer][:, -1])
        return S.warp(lm.model.lm_head(h)[0], SamplingConfig(**CFG)).softmax(-1)


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def null_bound(exact: dict, n: int, reps: int = 300) -> float:
    """mean + 5 std of the TV distance between exact and an empirical sample of size n drawn from it."""
    keys = list(exact)
    probs = torch.tensor([exact[k] for k in keys])
    g = torch.Generator().manual_seed(0)
    vals = []
    for _ in range(reps):
        counts = torch.bincount(torch.multinomial(probs, n, replacement=True, generator=g), minlength=len(keys))
        vals.append(0.5 * float((counts / n - probs).abs().sum()))
    v = torch.tensor(vals)
    return float(v.mean() + 5 * v.std())


@pytest.fixture(scope="module")
def exact(tiny_lm):
    ids = tiny_lm.encode(PROMPT, chat=False)[0].tolist()
    return ids, exact_distribution(tiny_lm, ids)


@pytest.mark.slow
@pytest.mark.parametrize("opts", [
    {"drafter": "early_exit", "exit_layer": 1, "tree": "chain", "num_assistant_tokens": 2},
    {"drafter": "early_exit", "exit_layer": 1, "tree": "2.2"},
    {"drafter": "early_exit", "exit_layer": 1, "tree": "[[0],[2],[0,0],[2,0]]"},  # rank gap: point masses
], ids=["chain", "sampled-tree", "point-mass-tree"])
def test_sampling_preserves_target_distribution(tiny_lm, exact, opts):
    ids, p = exact
    q1 = draft_first_token(tiny_lm, ids)
    p1 = {}
    for k, v in p.items():
        p1[k[0]] = p1.get(k[0], 0.0) + v
    # the draft really differs from the target: a verifier that kept drafts would be caught
    assert 0.5 * sum(abs(p1.get(t, 0.0) - float(q1[t])) for t in set(p1) | set(torch.nonzero(q1).flatten().tolist())) > 0.2

    counts = Counter()
    statuses = Counter()
    stochastic = set()
    for seed in range(RUNS):
        tr = run.run(tiny_lm, "speculative", PROMPT, max_new_tokens=T, chat=False, options=opts,
                     sampling=SamplingConfig(seed=seed, **CFG), record=seed < 40)
        counts[tuple(tr.final_ids)] += 1
        stochastic.update(st["stochastic"] for st in tr.steps if st["tree_size"])
        for st in tr.steps:
            statuses.update(n["status"] for n in st.get("nodes", []))
    emp = {k: v / RUNS for k, v in counts.items()}
    bound = null_bound(p, RUNS)
    assert tv(emp, p) < bound, (tv(emp, p), bound)
    # both decisions were exercised
    assert statuses["accepted"] > 0 and statuses["rejected"] > 0
    assert stochastic == ({False} if "[2]" in opts["tree"] else {True})
