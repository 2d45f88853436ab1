"""Autoregressive method: greedy equals HF generate, seeded sampling reproducible, warpers correct."""
import pytest
import torch

from engine import run
from engine.sampling import SamplingConfig

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Summarise: The cat sat on the mat. The cat was happy on the mat because the mat was warm.",
    "List three colours.",
    "Translate 'good morning' into Spanish and German.",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_hf_generate(embedded_lm, prompt):
    lm = embedded_lm
    trace = run.run(lm, "ar", prompt, max_new_tokens=24)
    ids = lm.encode(prompt)
    with torch.inference_mode():
        ref = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                pad_token_id=lm.tokenizer.eos_token_id)
    assert trace.final_ids == ref[0, ids.shape[1]:].tolist()
    assert trace.counters.generated_tokens == len(trace.final_ids)
    assert len(trace.steps) == len(trace.final_ids)
    assert trace.counters.target_forwards == len(trace.final_ids)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(tiny_lm):
    cfg = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, seed=123)
    a = run.run(tiny_lm, "ar", "Once upon a time", max_new_tokens=20, sampling=cfg)
    b = run.run(tiny_lm, "ar", "Once upon a time", max_new_tokens=20, sampling=cfg)
    c = run.run(tiny_lm, "ar", "Once upon a time", max_new_tokens=20, sampling=SamplingConfig(temperature=1.0, seed=7))
    assert a.final_ids == b.final_ids
    assert a.final_ids != c.final_ids


@pytest.mark.slow
def test_step_records_have_candidates(tiny_lm):
    cfg = SamplingConfig(temperature=0.8, top_k=5, seed=1)
    tr = run.run(tiny_lm, "ar", "Hello", max_new_tokens=5, sampling=cfg)
    for s in tr.steps:
        assert s["kind"] == "ar"
        ids = [c["id"] for c in s["candidates"]]
        assert s["token_id"] in ids
        kept = [c for c in s["candidates"] if c["p_warped"] > 0]
        assert 1 <= len(kept) <= 5  # top-k = 5 after warping
        assert abs(sum(c["p_warped"] for c in s["candidates"]) - 1.0) < 1e-3
        assert s["entropy"] >= 0
