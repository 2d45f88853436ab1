"""Jacobi decoding: greedy identical to autoregressive for every variant and initialiser, speculative Jacobi
keeps the sampling distribution, step records are consistent, figures build from a trace."""
import json
from collections import Counter

import pytest
import torch

from engine import run
from engine import sampling as S
from engine.methods import MethodError
from engine.methods.jacobi import INITS, VARIANTS, verify_speculative
from engine.sampling import SamplingConfig
from engine.trace import loads
from viz import jacobi as vz

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three colours.",
]
N_TOKENS = 16




@pytest.fixture(scope="module")
def ar_greedy(embedded_lm):
    return {p: run.run(embedded_lm, "ar", p, max_new_tokens=N_TOKENS).final_ids for p in PROMPTS}


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_identical_to_autoregressive(embedded_lm, ar_greedy, variant, init):
    for prompt in PROMPTS:
        tr = run.run(embedded_lm, "jacobi", prompt, max_new_tokens=N_TOKENS,
                     options={"variant": variant, "init": init, "block_size": 6, "hybrid_length": 8})
        assert tr.final_ids == ar_greedy[prompt], (variant, init, prompt)
        assert tr.counters.target_forwards == len(tr.steps) <= len(tr.final_ids)
        assert sum(s["committed"] for s in tr.steps) == len(tr.final_ids)


@pytest.mark.parametrize("block_size", [1, 64])
def test_block_size_extremes_identical(embedded_lm, ar_greedy, block_size):
    # 1: one guess per iteration; 64 >= max_new_tokens: the paper's parallel Jacobi over the whole output
    prompt = PROMPTS[1]
    tr = run.run(embedded_lm, "jacobi", prompt, max_new_tokens=N_TOKENS,
                 options={"block_size": block_size, "init": "repeat"})
    assert tr.final_ids == ar_greedy[prompt]
    if block_size == 64:
        assert len(tr.steps[0]["guess_ids"]) == N_TOKENS - 1  # the whole remaining output is one block


@pytest.mark.slow
def test_tiny_model_long_greedy_identical(one_thread, tiny_lm):
    ref = run.run(tiny_lm, "ar", "Once upon a time", max_new_tokens=40).final_ids
    for variant in VARIANTS:
        tr = run.run(tiny_lm, "jacobi", "Once upon a time", max_new_tokens=40,
                     options={"variant": variant, "init": "random", "block_size": 5, "hybrid_length": 17})
        assert tr.final_ids == ref, variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_records_are_consistent(one_thread, tiny_lm, variant):
    tr = run.run(tiny_lm, "jacobi", "The quick brown fox", max_new_tokens=30,
                 options={"variant": variant, "block_size": 4, "init": "repeat", "hybrid_length": 12})
    steps = tr.steps
    assert tr.counters.target_forwards == len(steps)
    pos = 0
    for i, s in enumerate(steps):
        assert s["kind"] == "jacobi" and s["index"] == i
        assert s["block_start"] == pos
        m = s["accepted"]
        assert s["front"] == pos + m
        assert s["committed"] == len(s["new_ids"]) >= 1
        assert s["new_ids"] == s["pred_ids"][: s["committed"]]
        assert len(s["pred_ids"]) == len(s["guess_ids"]) + 1
        # fixed guesses are unchanged; the front token changed (or is the bonus beyond the block)
        for j, f in enumerate(s["fixed"]):
            assert f == (j < m)
            if f:
                assert not s["changed"][j]
        assert s["changed"][m]
        assert ("changed" in s["events"]) == any(s["changed"][: len(s["guess_ids"])])
        pos += s["committed"]
        if i + 1 < len(steps):
            nxt = steps[i + 1]
            assert s["next_start"] == pos and nxt["guess_ids"] == s["next_guess_ids"]
            # carried guesses are this iteration's predictions
            assert nxt["guess_ids"][: s["carried"]] == s["pred_ids"][m + 1: m + 1 + s["carried"]]
            for j, first, last in s["forced"]:
                assert first > j and first >= pos and last == pos + len(nxt["guess_ids"])
            assert [s["front"], pos, pos + len(nxt["guess_ids"])] in s["forced"]  # the front forces all
    assert pos == len(tr.final_ids)
    if variant == "hybrid":
        assert all(s["phase"] == "ar" and s["guess_ids"] == [] for s in steps if s["block_start"] >= 12)
    if variant == "gauss_seidel":  # a block never extends past its end
        for s in steps:
            blk = [t for t in steps if t.get("block_index") == s["block_index"]]
            assert s["block_start"] + len(s["guess_ids"]) <= blk[0]["block_start"] + len(blk[0]["guess_ids"])


def test_bad_options_raise_before_model_work(one_thread, tiny_lm):
    for opts, word in (({"variant": "newton"}, "variant"), ({"init": "zeros"}, "init"),
                       ({"block_size": 0}, "block_size"), ({"block_size": 1000}, "block_size"),
                       ({"hybrid_length": -1}, "hybrid_length")):
        with pytest.raises(MethodError, match=word):
            run.prepare(tiny_lm, "jacobi", "Hello", max_new_tokens=4, options=opts)


@pytest.mark.slow
def test_speculative_acceptance_rule_is_exact():
    """The committed token at position 0 is distributed as p0; given guess 0 accepted, position 1 ~ p1."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    q1 = torch.tensor([0.4, 0.1, 0.1, 0.4])
    trials = 20000
    first, second = Counter(), Counter()
    for _ in range(trials):
        guesses = [0, int(torch.multinomial(q1, 1, generator=g))]  # guess 0 fixed (point mass), guess 1 ~ q1
        info = verify_speculative(guesses, [None, q1], p, g)
        toks = guesses[: info["m"]] + [info["token"]]
        first[toks[0]] += 1
        if toks[0] == 0 and len(toks) > 1:
            second[toks[1]] += 1
    for t in range(4):
        assert abs(first[t] / trials - float(p[0, t])) < 0.015
    n2 = sum(second.values())
    for t in range(4):
        assert abs(second[t] / n2 - float(p[1, t])) < 0.02


@pytest.mark.slow
def test_speculative_jacobi_matches_model_distribution(one_thread, tiny_lm):
    """End to end on a tiny model: the first two sampled tokens follow p(t0) p(t1 | t0) (top-k 3)."""
    lm = tiny_lm
    cfg = dict(temperature=1.0, top_k=3)
    prompt = "Hello there"
    ids = lm.encode(prompt)
    with torch.inference_mode():
        p0 = S.warp(lm.model(ids).logits[0, -1], SamplingConfig(**cfg)).softmax(-1)
        exact = {}
        for t0 in torch.nonzero(p0).flatten().tolist():
            x = torch.cat([ids, torch.tensor([[t0]])], 1)
            p1 = S.warp(lm.model(x).logits[0, -1], SamplingConfig(**cfg)).softmax(-1)
            for t1 in torch.nonzero(p1).flatten().tolist():
                exact[(t0, t1)] = float(p0[t0] * p1[t1])
    runs = 500
    seen = Counter()
    for seed in range(runs):
        tr = run.run(lm, "jacobi", prompt, max_new_tokens=3, sampling=SamplingConfig(seed=seed, **cfg),
                     options={"block_size": 3, "init": "random"}, record=False)
        seen[tuple(tr.final_ids[:2])] += 1
    assert set(seen) <= set(exact)
    chi2 = sum((seen[k] - runs * e) ** 2 / (runs * e) for k, e in exact.items())
    assert chi2 < 30.0, (chi2, seen, exact)  # 8 degrees of freedom: p < 0.001 above 26.1


def test_sampling_reproducible_and_records_tests(one_thread, tiny_lm):
    cfg = SamplingConfig(temperature=0.9, seed=11)
    a = run.run(tiny_lm, "jacobi", "Hi", max_new_tokens=12, sampling=cfg, options={"init": "random"})
    b = run.run(tiny_lm, "jacobi", "Hi", max_new_tokens=12, sampling=cfg, options={"init": "random"})
    assert a.final_ids == b.final_ids
    assert all(s["tests"] and 0 <= s["tests"][0]["accept_prob"] <= 1 for s in a.steps if s["guess_ids"])
    assert 0 <= a.extra["summary"]["guess_acceptance_rate"] <= 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_figures_build_and_trace_round_trips(one_thread, tiny_lm, variant):
    tr = run.run(tiny_lm, "jacobi", "Tell me a story", max_new_tokens=20,
                 options={"variant": variant, "block_size": 4, "hybrid_length": 8})
    back = loads(tr.to_json())
    steps = back.steps
    grid = vz.trajectory_grid(steps, final_ids=back.final_ids)
    assert len(grid.data[0].z) == len(steps)
    g = vz.dependency_dag(steps)
    chain = vz.critical_chain(steps, g)
    assert chain and chain[-1][0] == steps[-1]["index"]
    for a, b in zip(chain, chain[1:]):
        assert g.has_edge(a, b) and b[0] == a[0] + 1 and b[1] > a[1]
    assert vz.dependency_graph(steps, len(steps) - 1, first_row=2).data
    assert vz.progress_figure(steps).data
    s = vz.jacobi_stats(steps)
    assert s["tokens"] == len(back.final_ids) and s["forwards"] == len(steps)
    json.dumps(grid.to_plotly_json(), default=str)
