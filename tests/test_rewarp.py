"""Re-warp of recorded AR steps (engine/rewarp.py) equals warping freshly computed logits with
engine.sampling, for several settings; without recorded logits it is over the candidates and says so."""
import pytest
import torch

from engine import rewarp, run
from engine import sampling as S
from engine.errors import InputError, OptionError

PROMPT = "a b a b c"
SETTINGS = [S.SamplingConfig(), S.SamplingConfig(temperature=0.7), S.SamplingConfig(temperature=1.3, top_k=5),
            S.SamplingConfig(temperature=1.0, top_p=0.8), S.SamplingConfig(temperature=0.9, min_p=0.05),
            S.SamplingConfig(temperature=1.0, typical_p=0.9)]


def _fresh_logits(lm, tr, k):
    ids = torch.tensor([tr.meta["prompt_ids"] + tr.final_ids[:k]])
    with torch.inference_mode():
        return lm.model(ids).logits[0, -1].float()


def test_rewarp_with_recorded_logits_equals_fresh_warping(one_thread, tiny_lm):
    tr = run.run(tiny_lm, "ar", PROMPT, max_new_tokens=6, options={"record_logits": True}, ignore_eos=True)
    for k in (0, 3, 5):
        fresh = _fresh_logits(tiny_lm, tr, k)
        for cfg in SETTINGS:
            got = rewarp.step(tr.steps[k], cfg, top=8)
            want = S.warp(fresh, cfg).softmax(-1)
            # the choice: the argmax, up to float16 rounding among near-ties (a random tiny model is flat)
            assert got["exact"] and float(want[got["choice"]]) >= float(want.max()) - 2e-3
            for c in got["candidates"]:
                assert abs(c["p_warped"] - float(want[c["id"]])) < 2e-3, (k, cfg, c)
            assert abs(got["chosen_p"] - float(want[tr.steps[k]["token_id"]])) < 2e-3
    # the settings the run used give back what it recorded
    same = rewarp.step(tr.steps[2], S.SamplingConfig())
    for c in same["candidates"]:
        if c["was_p_warped"] is not None:
            assert abs(c["p_warped"] - c["was_p_warped"]) < 2e-3


def test_rewarp_without_logits_is_over_the_candidates(one_thread, tiny_lm):
    tr = run.run(tiny_lm, "ar", PROMPT, max_new_tokens=4, ignore_eos=True)
    got = rewarp.step(tr.steps[1], S.SamplingConfig(temperature=0.5))
    assert not got["exact"] and abs(sum(c["p_warped"] for c in got["candidates"]) - 1) < 1e-4
    assert got["choice"] == max(tr.steps[1]["candidates"], key=lambda c: c["p_raw"])["id"]   # T keeps the order
    assert [r is None for r in rewarp.trace_steps(tr.steps, S.SamplingConfig())] == [False] * len(tr.steps)


def test_bad_inputs(one_thread, tiny_lm):
    with pytest.raises(OptionError, match="record_logits"):
        run.prepare(tiny_lm, "ar", PROMPT, max_new_tokens=600, options={"record_logits": True})
    with pytest.raises(InputError, match="autoregressive"):
        rewarp.step({"kind": "jacobi"}, S.SamplingConfig())
    with pytest.raises(InputError, match="damaged"):
        rewarp.step({"kind": "ar", "token_id": 1, "logits_f16": "###"}, S.SamplingConfig())
    with pytest.raises(InputError, match="damaged"):
        rewarp.step({"kind": "ar", "token_id": 1, "logits_f16": "AAA="}, S.SamplingConfig())
    with pytest.raises(InputError, match="SamplingConfig"):
        rewarp.step({"kind": "ar"}, {"temperature": 1})
