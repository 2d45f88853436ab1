"""Diffusion forks (engine/fork.py, engine.diffusion.sampler resume): the state at step k is the canvas before it
plus the schedule position, so a fork resumes the sampler there.

- A fork at step k with no edit reproduces the original's steps and answer token for token (greedy, a
  deterministic rule, prefix cache off). With the prefix cache a fork is exact at a block's first step (the
  cache is computed there, from the canvas then; tested) and refused inside a block, where the original's cache
  was of the canvas at the block's start.
- A fork that sets a position equals a masked-diffusion run started from that partly filled canvas at that
  schedule position: the reference below is a plain LLaDA loop (bidirectional forward, argmax, low-confidence
  top-k over the block, the block's even schedule), written here.
- Bad edits are typed errors before any forward.
"""
import time

import pytest
import torch

from engine import fork, run
from engine.diffusion.adapters import DiffusionAdapter
from engine.errors import InputError, MethodError
from engine.sampling import SamplingConfig
from tests.conftest import make_tiny_lm

MASK = 16
PROMPT = "Once upon a time"
OPTS = {"block_length": 4, "steps": 8, "stop_at_eos": False}
N = 8


@pytest.fixture(scope="module")
def lm():
    m = make_tiny_lm(seed=3)
    m.diffusion = DiffusionAdapter(m.model, MASK, shift=False, bidirectional=True, name="tiny-bidir",
                                   eos_ids=m.eos_ids)
    return m


@pytest.fixture(scope="module")
def orig(lm):
    return run.run(lm, "diffusion", PROMPT, max_new_tokens=N, options=OPTS)


def reference_from(model, prompt: list[int], canvas: list[int | None], block: int, step_in_block: int,
                   block_masked: int, steps: int, gen_length: int, block_length: int) -> list[list[int]]:
    """LLaDA's loop (greedy, low_confidence) started from `canvas` (None: masked) at step `step_in_block` of
    `block`, whose even schedule is that of its start (`block_masked` masked then). x after every step."""
    P = len(prompt)
    x = torch.tensor([prompt + [MASK if t is None else t for t in canvas]])
    spb = steps // (gen_length // block_length)
    history = []
    for b in range(block, gen_length // block_length):
        s, e = P + b * block_length, P + (b + 1) * block_length
        n = block_masked if b == block else int((x[0, s:e] == MASK).sum())
        sched = [n // spb + (1 if i < n % spb else 0) for i in range(spb)]
        i = step_in_block if b == block else 0
        while bool((x[0, s:e] == MASK).any()):
            L = x.shape[1]
            with torch.inference_mode():
                logits = model(input_ids=x, attention_mask=torch.ones(1, 1, L, L, dtype=torch.bool)).logits[0]
            logits = logits.float().double()
            logits[:, MASK] = float("-inf")
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0]
            masked = x[0] == MASK
            conf = torch.full_like(p, float("-inf"))
            conf[s:e] = p[s:e]
            conf = torch.where(masked, conf, torch.tensor(float("-inf"), dtype=torch.float64))
            left = int(masked[s:e].sum())
            k = min(sched[i] if i < spb else left, left)
            idx = torch.topk(conf, max(k, 1)).indices
            x[0, idx] = x0[idx]
            history.append(x[0, P:].tolist())
            i += 1
    return history


@pytest.mark.slow
def test_a_fork_without_edit_reproduces_the_original(one_thread, lm, orig):
    assert len(orig.steps) == 8 and [s["step_in_block"] for s in orig.steps] == [0, 1, 2, 3] * 2
    for k in range(len(orig.steps)):
        b = fork.run_fork(lm, orig, k)
        assert b.final_ids == orig.final_ids and fork.output_ids(b) == orig.final_ids, k
        assert [s["tokens"] for s in b.steps] == [s["tokens"] for s in orig.steps[k:]], k
        assert [s["state"] for s in b.steps] == [s["state"] for s in orig.steps[k:]], k
        assert b.meta["fork"]["exact"] and b.meta["fork"]["at_step"] == k and b.meta["fork"]["cost_forwards"] == 0
        assert b.counters.target_forwards == len(orig.steps) - k       # no replay: one forward per own step


@pytest.mark.slow
def test_a_fork_of_a_fork_and_a_saved_branch(one_thread, lm, orig, tmp_path):
    from engine import trace as T
    b = fork.run_fork(lm, orig, 2)
    bb = fork.run_fork(lm, b, 1)          # step 3 of the original, inside block 0 (its start is in orig only)
    assert bb.final_ids == orig.final_ids
    assert bb.meta["fork"]["resume"] == {"block": 0, "step_in_block": 3, "block_masked": 4}
    path = tmp_path / "b.json"
    T.Trace(meta=orig.meta, steps=orig.steps, final_ids=orig.final_ids, counters=orig.counters,
            branches=[T.Trace(meta={**b.meta, "fork": {**b.meta["fork"], "parent": 0}}, steps=b.steps,
                              final_ids=b.final_ids, counters=b.counters)]).save(path)
    assert T.load(path).branches[0].meta["fork"]["canvas"] == b.meta["fork"]["canvas"]


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 5])
def test_a_fork_that_sets_a_position_is_a_run_from_that_canvas(one_thread, lm, orig, k):
    rec = orig.steps[k]
    lo, hi = rec["block_range"]
    pos = next(i for i in range(lo, hi) if rec["state"][i] != "committed")   # still masked: filled by the edit
    tok = 42 if rec["tokens"][pos] != 42 else 43
    b = fork.run_fork(lm, orig, k, position=pos, token=tok)
    canvas = [t if s == "committed" else None for s, t in zip(rec["state"], rec["tokens"])]
    canvas[pos] = tok
    assert b.meta["fork"]["canvas"] == canvas and b.meta["edited"]
    assert b.meta["fork"]["edit"]["canvas"] == {"position": pos, "id": tok, "text": lm.token_text(tok), "was": None}
    first = k - rec["step_in_block"]
    m0 = sum(1 for s in orig.steps[first]["state"][lo:hi] if s != "committed")
    ref = reference_from(lm.model, orig.meta["prompt_ids"], canvas, rec["block"], rec["step_in_block"], m0,
                         OPTS["steps"], N, OPTS["block_length"])
    got = [[t if s != "mask" else MASK for s, t in zip(st["state"], st["tokens"])] for st in b.steps]
    assert got == ref
    assert b.final_ids == ref[-1] and b.final_ids[pos] == tok


def test_masking_a_position_again_and_changing_the_rule(one_thread, lm, orig):
    k = 6
    rec = orig.steps[k]
    pos = rec["state"].index("committed")
    b = fork.run_fork(lm, orig, k, position=pos, mask=True)
    assert b.meta["fork"]["canvas"][pos] is None and len(b.final_ids) == N and MASK not in b.final_ids
    assert b.meta["fork"]["edit"]["canvas"]["was"] == rec["tokens"][pos]
    t = fork.run_fork(lm, orig, k, options={"rule": "threshold", "threshold": 0.5})
    assert t.meta["params"]["rule"] == "threshold" and t.meta["fork"]["edit"]["options"]["rule"] == "threshold"
    assert t.steps[0]["threshold"] == 0.5 and t.meta["fork"]["exact"]
    s = fork.run_fork(lm, orig, k, sampling=SamplingConfig(temperature=1.0, seed=3))
    assert not s.meta["fork"]["exact"] and s.meta["fork"]["edit"]["sampling"]["temperature"] == 1.0


def test_the_prefix_cache_forks_exactly_at_a_block_start_only(one_thread, lm):
    o = dict(OPTS, prefix_cache=True)
    orig = run.run(lm, "diffusion", PROMPT, max_new_tokens=N, options=o)
    b = fork.run_fork(lm, orig, 4)        # block 1's first step: its cache is computed from the canvas then
    assert [s["tokens"] for s in b.steps] == [s["tokens"] for s in orig.steps[4:]]
    with pytest.raises(InputError, match="block's first step"):
        fork.prepare(lm, orig, 5)


@pytest.mark.parametrize("kw,words", [
    ({"step": 99}, "no step"),
    ({"step": -1}, "no step"),
    ({"step": 2, "position": 8, "token": 5}, "outside the answer"),
    ({"step": 2, "position": -1, "token": 5}, "outside the answer"),
    ({"step": 2, "position": True, "token": 5}, "outside the answer"),
    ({"step": 2, "token": 5}, "outside the answer"),
    ({"step": 2, "position": 3}, "not both"),
    ({"step": 2, "position": 3, "token": 5, "mask": True}, "not both"),
    ({"step": 2, "position": 3, "token": 10 ** 9}, "outside the vocabulary"),
    ({"step": 2, "position": 3, "token": "hello world and more"}, "not one"),
    ({"step": 2, "options": {"block_length": 8}}, "keeps the run's block_length"),
    ({"step": 2, "options": {"rule": "nope"}}, "rule"),
    ({"step": 2, "method": "ar"}, "forks to diffusion only"),
])
def test_bad_edits_are_typed_errors_before_any_forward(one_thread, lm, orig, kw, words):
    before = time.perf_counter()
    calls = []
    h = lm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match=words):
            fork.prepare(lm, orig, **kw)
    finally:
        h.remove()
    assert not calls and time.perf_counter() - before < 2


def test_the_sampler_checks_a_canvas(one_thread, lm):
    ok = {"canvas": [None] * N, "block": 0, "step_in_block": 0, "block_masked": 4}
    for bad, words in (({"canvas": [None] * 7}, "gen_length"), ({"canvas": [None] * 7 + [10 ** 9]}, "not a token id"),
                       ({"block": 2}, "block must"), ({"step_in_block": 4}, "step_in_block must"),
                       ({"block_masked": 0}, "block_masked must")):
        with pytest.raises(MethodError, match=words):
            run.prepare(lm, "diffusion", PROMPT, max_new_tokens=N, options=OPTS, resume={**ok, **bad})
    with pytest.raises(MethodError, match="resume is a dict, for diffusion, kv, jacobi, lookahead only"):
        run.prepare(lm, "ar", PROMPT, max_new_tokens=N, resume=ok)
    # a canvas with the mask id where masked is the same as None there
    a = run.run(lm, "diffusion", PROMPT, max_new_tokens=N, options=OPTS, resume={**ok, "canvas": [MASK] * N})
    b = run.run(lm, "diffusion", PROMPT, max_new_tokens=N, options=OPTS)
    assert a.final_ids == b.final_ids
