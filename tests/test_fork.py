"""What-if forks (engine/fork.py): a fork with no edit continues exactly as the original (every forkable
family, greedy); an AR fork with another token equals plain greedy decoding of prompt + prefix + that token
(HF generate as the reference); a fork costs one prefill, not a replay; bad edits are refused up front."""
import time

import pytest
import torch

from engine import fork, quality, run
from engine.errors import InputError, OptionError
from engine.sampling import SamplingConfig
from tests.conftest import PREFIX_FAMILIES

PROMPT = "a b a b a b c d"
N = 16


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


def _greedy_reference(lm, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    return out[0, len(ids):].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("method,options", PREFIX_FAMILIES)
def test_a_fork_without_edit_continues_as_the_original(one_thread, lm, method, options):
    orig = run.run(lm, method, PROMPT, max_new_tokens=N, options=options, ignore_eos=True)
    for k in (0, 1, len(orig.steps) // 2, len(orig.steps) - 1):
        branch = fork.run_fork(lm, orig, k)
        assert fork.output_ids(branch) == orig.final_ids, (method, k)
        assert branch.meta["fork"]["at_step"] == k and branch.meta["method"] == method


def test_an_ar_fork_with_another_token_is_greedy_decoding_of_the_new_prefix(one_thread, lm):
    orig = run.run(lm, "ar", PROMPT, max_new_tokens=N, ignore_eos=True)
    k = 5
    step = orig.steps[k]
    other = next(c["id"] for c in step["candidates"] if c["id"] != step["token_id"])
    branch = fork.run_fork(lm, orig, k, token=other)
    got = fork.output_ids(branch)
    prefix = orig.final_ids[:k] + [other]
    assert got[:k + 1] == prefix and len(got) == N
    assert got[k + 1:] == _greedy_reference(lm, orig.meta["prompt_ids"] + prefix, N - k - 1)
    assert branch.meta["fork"]["edit"]["token"]["was"] == step["token_id"] and branch.meta["edited"]
    # one prefill for the inherited prefix, then one forward per new token: no replay of the original
    assert branch.counters.target_forwards == len(branch.final_ids)


def test_a_token_given_as_text(one_thread, lm):
    orig = run.run(lm, "ar", PROMPT, max_new_tokens=8, ignore_eos=True)
    text = lm.token_text(orig.steps[2]["candidates"][1]["id"])
    branch = fork.run_fork(lm, orig, 2, token=text)
    assert fork.output_ids(branch)[2] == lm.tokenizer.encode(text, add_special_tokens=False)[0]


def test_switching_method_at_a_step_keeps_greedy_output(one_thread, lm):
    orig = run.run(lm, "ar", PROMPT, max_new_tokens=N, ignore_eos=True)
    for method, opts in (("speculative", {"drafter": "prompt_lookup"}), ("lookahead", {})):
        branch = fork.run_fork(lm, orig, 4, method=method, options=opts)
        assert fork.output_ids(branch) == orig.final_ids
        assert branch.meta["fork"]["edit"]["method"] == method


def test_a_fork_of_a_fork(one_thread, lm):
    orig = run.run(lm, "ar", PROMPT, max_new_tokens=N, ignore_eos=True)
    b1 = fork.run_fork(lm, orig, 3, token=7)
    b2 = fork.run_fork(lm, b1, 2)       # no edit: continues b1 exactly
    assert fork.output_ids(b2) == fork.output_ids(b1)
    assert quality.first_divergence(fork.output_ids(b1), orig.final_ids) in (3, None)   # both N long


def test_sampling_change_from_a_step(one_thread, lm):
    orig = run.run(lm, "ar", PROMPT, max_new_tokens=N, ignore_eos=True)
    cfg = SamplingConfig(temperature=1.0, seed=3)
    a = fork.run_fork(lm, orig, 6, sampling=cfg)
    b = fork.run_fork(lm, orig, 6, sampling=cfg)
    assert fork.output_ids(a) == fork.output_ids(b)           # seeded: reproducible
    assert fork.output_ids(a)[:6] == orig.final_ids[:6]
    assert a.meta["fork"]["edit"]["sampling"]["temperature"] == 1.0


@pytest.mark.parametrize("kw,words", [
    ({"step": 99}, "no step"),
    ({"step": -1}, "no step"),
    ({"step": True}, "no step"),
    ({"step": 2, "token": 10 ** 9}, "outside the vocabulary"),
    ({"step": 2, "token": -3}, "outside the vocabulary"),
    ({"step": 2, "token": "hello world and more"}, "not one"),
    ({"step": 2, "token": ""}, "1-200"),
    ({"step": 2, "token": 2.5}, "token id or a token's text"),
    ({"step": 2, "method": "kv"}, "evicted cache"),
    ({"step": 2, "method": "diffusion"}, "canvas"),
    ({"step": 2, "max_new_tokens": 0}, "Nothing is left"),
])
def test_bad_forks_are_refused_before_any_forward(one_thread, lm, kw, words):
    orig = run.run(lm, "ar", PROMPT, max_new_tokens=8, ignore_eos=True)
    before = time.perf_counter()
    with pytest.raises(InputError, match=words):
        fork.prepare(lm, orig, **kw)
    assert time.perf_counter() - before < 2


def test_unforkable_runs_and_bad_options(one_thread, lm):
    kv = run.run(lm, "kv", PROMPT, max_new_tokens=6, options={"policy": "h2o", "budget": 8})
    with pytest.raises(InputError, match="forks to kv only"):
        fork.prepare(lm, kv, 1, method="ar")
    ar = run.run(lm, "ar", PROMPT, max_new_tokens=6)
    with pytest.raises(InputError, match="autoregressive fork"):
        fork.prepare(lm, run.run(lm, "jacobi", PROMPT, max_new_tokens=6), 1, token=5)
    with pytest.raises(OptionError, match="drafter"):
        fork.prepare(lm, ar, 1, method="speculative", options={"drafter": "nonsense"})
    ar.meta["prompt_ids"] = None
    with pytest.raises(InputError, match="prompt's token ids"):
        fork.prepare(lm, ar, 1)


def test_a_forked_trace_saves_and_loads(one_thread, lm, tmp_path):
    from engine import trace as T
    orig = run.run(lm, "ar", PROMPT, max_new_tokens=8, ignore_eos=True)
    branch = fork.run_fork(lm, orig, 3, token=9)
    path = tmp_path / "b.json"
    branch.save(path)
    back = T.load(path)
    assert back.meta["fork"] == branch.meta["fork"] and fork.output_ids(back) == fork.output_ids(branch)
