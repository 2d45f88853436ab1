"""Contrastive search (engine/methods/contrastive.py), its view (ui/render_contrastive.py, viz/contrastive.py).

The engine equals a reference written here from the paper's formula (Su et al. 2022: of the k likeliest tokens
v, the one maximising (1 - alpha) * p(v | x_<t) - alpha * max_j cos(h_v, h_j), with h the last layer's hidden
states, the prompt's positions included as in Hugging Face's implementation), computed without a KV cache: a
full forward of the whole sequence for the context and one of the sequence + candidate for each candidate
(the k of them batched). alpha = 0 equals greedy.

Hugging Face's own implementation does not run offline in this transformers (5.23): contrastive search moved
to the Hub repository transformers-community/contrastive-search, so `generate(penalty_alpha=0.6, top_k=4)`
asks for trust_remote_code=True and then for a download. `test_hf_generate_if_available` compares with it
where it runs and is skipped with that reason here.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from engine import run, trace as T
from engine.errors import MethodError, OptionError
from engine.runner import DONE
from engine.sampling import SamplingConfig
from tests.conftest import app_test, make_tiny_lm, wait_done
from viz import contrastive as vz

PROMPTS = ["Name three animals.", "Write a sentence about the sea.", "What is 2 + 2? Answer with a number only."]


def reference(lm, prompt: str, n: int, alpha: float, k: int) -> list[int]:
    """The paper's rule, one token at a time, every hidden state recomputed from scratch (no cache)."""
    ids = lm.encode(prompt)[0].tolist()
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            o = lm.model(input_ids=torch.tensor([ids + out]), output_hidden_states=True)
            context = o.hidden_states[-1][0].float()               # every earlier position, the prompt's included
            p = o.logits[0, -1].float().softmax(-1)
            top_p, top_i = torch.topk(p, k)
            # each candidate appended to the whole sequence: k full sequences in one batch, no cache, no mask
            seqs = torch.tensor([ids + out + [v] for v in top_i.tolist()])
            h = lm.model(input_ids=seqs, output_hidden_states=True).hidden_states[-1][:, -1].float()
            best, best_score = None, None
            for pv, v, hv in zip(top_p.tolist(), top_i.tolist(), h):
                penalty = F.cosine_similarity(hv[None], context, dim=-1).max().item()
                score = (1 - alpha) * pv - alpha * penalty
                if best_score is None or score > best_score:
                    best, best_score = v, score
            out.append(best)
            if best in lm.eos_ids:
                break
    return out


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lm(seed=7)


@pytest.fixture(scope="module")
def tiny_trace(tiny):
    tr = run.run(tiny, "contrastive", "Once upon a time", max_new_tokens=10, ignore_eos=True)
    return T.loads(tr.to_json())


@pytest.mark.slow
@pytest.mark.parametrize("alpha,k", [(0.6, 4), (0.4, 6), (1.0, 3)])
def test_equals_reference_tiny(tiny, one_thread, alpha, k):
    tr = run.run(tiny, "contrastive", "Once upon a time", max_new_tokens=12, ignore_eos=True,
                 options={"penalty_alpha": alpha, "num_candidates": k})
    ref = reference(tiny, "Once upon a time", 12, alpha, k)
    assert tr.final_ids == ref[:len(tr.final_ids)] and len(tr.final_ids) == 12


@pytest.mark.parametrize("prompt", PROMPTS)
def test_equals_reference_embedded(embedded_lm, one_thread, prompt):
    lm = embedded_lm
    tr = run.run(lm, "contrastive", prompt, max_new_tokens=12)
    ref = reference(lm, prompt, 12, 0.6, 4)
    assert tr.final_ids == ref
    assert tr.extra["summary"]["not_likeliest"] >= 1      # the penalty changed a choice: not just greedy
    # the recorded scores are the formula's
    for s in tr.steps:
        b = s["contrastive"]
        assert b["argmax_prob_id"] == b["candidates"][0]["id"]
        assert sum(c["chosen"] for c in b["candidates"]) == 1
        for c in b["candidates"]:
            assert c["score"] == pytest.approx(0.4 * c["p"] - 0.6 * c["penalty"], abs=2e-6)
        ch = next(c for c in b["candidates"] if c["chosen"])
        assert ch["id"] == s["token_id"] and ch["score"] == max(c["score"] for c in b["candidates"])
    # one forward per token after the prefill, k tokens each
    assert tr.counters.target_forwards == 1 + len(tr.steps)
    assert tr.extra["summary"]["forwarded_tokens"] == lm.encode(prompt).shape[1] + 4 * len(tr.steps)


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_alpha_zero_is_greedy(embedded_lm, one_thread, prompt):
    n = 20
    greedy = run.run(embedded_lm, "ar", prompt, max_new_tokens=n).final_ids
    for k in (1, 4):
        tr = run.run(embedded_lm, "contrastive", prompt, max_new_tokens=n,
                     options={"penalty_alpha": 0.0, "num_candidates": k})
        assert tr.final_ids == greedy
        assert tr.extra["summary"]["not_likeliest"] == 0


def test_alpha_zero_is_greedy_tiny(tiny, one_thread):
    greedy = run.run(tiny, "ar", "Hello there", max_new_tokens=16, ignore_eos=True).final_ids
    tr = run.run(tiny, "contrastive", "Hello there", max_new_tokens=16, ignore_eos=True,
                 options={"penalty_alpha": 0.0})
    assert tr.final_ids == greedy


def test_hf_generate_if_available(embedded_lm, one_thread):
    lm = embedded_lm
    prompt, n = PROMPTS[0], 14
    ids = lm.encode(prompt)
    try:
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                    penalty_alpha=0.6, top_k=4, trust_remote_code=True,
                                    pad_token_id=lm.tokenizer.eos_token_id, eos_token_id=sorted(lm.eos_ids))
    except (ValueError, OSError, ImportError, RuntimeError) as e:
        pytest.skip(f"Hugging Face contrastive search does not run offline here: {str(e)[:160]}")
    hf = out[0, ids.shape[1]:].tolist()
    tr = run.run(lm, "contrastive", prompt, max_new_tokens=n)
    assert hf[:len(tr.final_ids)] == tr.final_ids


@pytest.mark.slow
def test_trace_round_trips_and_schema(tiny_trace):
    steps = tiny_trace.steps
    assert len(steps) == 10 and all(s["kind"] == "ar" for s in steps)
    s = steps[0]
    for f in ("token_id", "token_text", "new_ids", "new_text", "prob", "confidence", "candidates"):
        assert f in s
    b = s["contrastive"]
    assert b["alpha"] == 0.6 and len(b["candidates"]) == 4
    assert {"id", "text", "p", "penalty", "score", "chosen"} <= set(b["candidates"][0])
    again = T.loads(tiny_trace.to_json())
    assert again.steps == steps
    obj = json.loads(tiny_trace.to_json())
    obj["steps"][0]["contrastive"]["candidates"][0]["penalty"] = 3.0
    with pytest.raises(Exception, match="penalty"):
        T.loads(json.dumps(obj))


def _forbid_forwards(lm, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a forward ran before the options were checked")
    monkeypatch.setattr(lm.model, "forward", boom)


@pytest.mark.slow
@pytest.mark.parametrize("options,sampling,error,text", [
    ({"num_candidates": 0}, None, OptionError, "num_candidates"),
    ({"penalty_alpha": 1.5}, None, OptionError, "penalty_alpha"),
    ({"penalty_alpha": -0.1}, None, OptionError, "penalty_alpha"),
    ({}, SamplingConfig(temperature=0.7), MethodError, "temperature to 0"),
])
def test_bad_options_rejected_before_any_forward(monkeypatch, options, sampling, error, text):
    lm = make_tiny_lm(seed=1)
    _forbid_forwards(lm, monkeypatch)
    with pytest.raises(error, match=text):
        run.prepare(lm, "contrastive", "Hello", max_new_tokens=4, options=options, sampling=sampling)


def test_figure_marks_chosen_and_likeliest(tiny_trace):
    steps = tiny_trace.steps
    diff = [i for i, s in enumerate(steps) if vz.differs(s)]
    assert diff, "a random tiny model with alpha 0.6 should leave greedy at some step"
    fig = vz.candidates_figure(steps[diff[0]])
    names = [d.name for d in fig.data]
    assert "chosen" in names and "likeliest (greedy's choice)" in names
    s = vz.summary(steps, len(steps) - 1)
    assert s["steps"] == 10 and s["not_likeliest"] == len(diff) == tiny_trace.extra["summary"]["not_likeliest"]


def test_trace_strings_are_escaped(tiny_trace):
    obj = json.loads(tiny_trace.to_json())
    for s in obj["steps"]:
        s["token_text"] = "<img src=x onerror=alert(1)>"
        for c in s["contrastive"]["candidates"]:
            c["text"] = "<img src=x onerror=alert(1)>"
    tr = T.loads(json.dumps(obj))
    for s in tr.steps:
        blob = json.dumps(vz.candidates_figure(s).to_plotly_json(), default=str)
        assert "<img" not in blob and "&lt;img" in blob


def test_replay_renderer_draws_the_block(tiny_trace):
    from streamlit.testing.v1 import AppTest

    def script(text):
        from engine import trace as T
        from engine.runner import TraceView
        from ui import renderers
        tr = T.loads(text)
        renderers.render(TraceView(tr, len(tr.steps) - 1), "t")
    at = AppTest.from_function(script, kwargs={"text": tiny_trace.to_json()}, default_timeout=60)
    at.run()
    assert not at.exception
    specs = [el.proto.spec for el in at.get("plotly_chart")]
    assert any("degeneration penalty" in s for s in specs)
    assert any("steps chose a token other than the likeliest" in c.value for c in at.caption)


def test_search_page_runs_contrastive(embedded_lm):
    at = app_test("pages/9_Search.py").run()
    assert not at.exception
    at.selectbox(key="search_method").set_value("contrastive").run()
    assert not at.exception
    at.text_area(key="contrastive_prompt").input("Write a sentence about the sea.")
    at.number_input(key="contrastive_max_new").set_value(6)
    at.number_input(key="contrastive_num_candidates").set_value(3)
    at.button(key="contrastive_go").click().run()
    r = wait_done(at, "runner_contrastive", 180)
    assert r.state == DONE and r.trace.steps[0]["kind"] == "ar" and "contrastive" in r.trace.steps[0]
    assert len(r.trace.steps[0]["contrastive"]["candidates"]) == 3
    at.run()
    assert not at.exception
    specs = [el.proto.spec for el in at.get("plotly_chart")]
    assert any("degeneration penalty" in s for s in specs)
    assert any("differs from greedy" in c.value or "greedy's choice" in c.value for c in at.caption)
