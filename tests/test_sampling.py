"""Warpers against direct reference computations (and HF's own warpers)."""

import numpy as np
import pytest
import torch

from engine import sampling as S


def ref_probs(logits, T=1.0, top_k=0, top_p=1.0, min_p=0.0, typical=1.0):
    """Straightforward per-row numpy reference, in HF's order."""
    x = np.asarray(logits, dtype=np.float64) / T
    keep = np.ones_like(x, dtype=bool)

    def softmax(v, k):
        v = np.where(k, v, -np.inf)
        e = np.exp(v - v[k].max())
        return e / e.sum()

    if top_k:
        order = np.argsort(-x, kind="stable")
        keep[order[top_k:]] = False
    if top_p < 1:
        p = softmax(x, keep)
        order = np.argsort(-p, kind="stable")
        cum = 0.0
        new = np.zeros_like(keep)
        for i in order:
            if not keep[i]:
                continue
            new[i] = True
            cum += p[i]
            if cum >= top_p:
                break
        keep = new
    if min_p > 0:
        p = softmax(x, keep)
        keep &= p >= min_p * p.max()
    if typical < 1:
        p = softmax(x, keep)
        with np.errstate(divide="ignore"):
            logp = np.log(p)
        H = -np.sum(p[p > 0] * logp[p > 0])
        dev = np.abs(-logp - H)
        order = np.argsort(dev, kind="stable")
        cum, new = 0.0, np.zeros_like(keep)
        for i in order:
            if p[i] == 0:
                continue
            new[i] = True
            cum += p[i]
            if cum >= typical:
                break
        keep = new
    return softmax(x, keep)


@pytest.mark.parametrize("kw", [
    dict(T=0.7), dict(T=1.0, top_k=5), dict(T=1.3, top_p=0.8), dict(T=1.0, min_p=0.1),
    dict(T=1.0, typical=0.6), dict(T=0.9, top_k=20, top_p=0.9, min_p=0.02),
])
def test_warpers_match_reference(kw):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = torch.randn(1000, generator=g) * 3
        cfg = S.SamplingConfig(temperature=kw.get("T", 1.0), top_k=kw.get("top_k", 0), top_p=kw.get("top_p", 1.0),
                               min_p=kw.get("min_p", 0.0), typical_p=kw.get("typical", 1.0))
        got = S.probs(logits, cfg).numpy()
        want = ref_probs(logits.numpy(), **kw)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_warpers_match_hf():
    from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 500, generator=g) * 2
    ids = torch.zeros(4, 1, dtype=torch.long)
    hf = TypicalLogitsWarper(0.7)(ids, MinPLogitsWarper(0.05)(ids, TopPLogitsWarper(0.9)(ids, TopKLogitsWarper(40)(
        ids, TemperatureLogitsWarper(0.8)(ids, x.clone())))))
    ours = S.warp(x, S.SamplingConfig(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, typical_p=0.7))
    torch.testing.assert_close(hf.softmax(-1), ours.softmax(-1))


def test_greedy_probs_is_one_hot_argmax():
    x = torch.tensor([0.1, 3.0, -1.0])
    assert S.probs(x, S.SamplingConfig()).tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(min_p=1.0), dict(typical_p=0.0)])
def test_impossible_parameters_raise(bad):
    with pytest.raises(S.SamplingError):
        S.SamplingConfig(**bad)


def test_sampling_frequencies_follow_warped_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    cfg = S.SamplingConfig(temperature=1.0, top_k=3)
    p = S.probs(logits, cfg)
    g = torch.Generator().manual_seed(0)
    draws = S.sample(p.expand(20000, -1), g)
    freq = torch.bincount(draws, minlength=5).float() / 20000
    assert freq[3:].sum() == 0
    assert torch.allclose(freq, p, atol=0.02)
