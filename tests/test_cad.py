"""Context-aware decoding (engine/methods/cad.py): equal to a reference written here from the paper's formula
(full forwards without a cache), alpha 0 equal to ordinary decoding with the context, bad options refused
before any forward, the Search page runs it and draws its block, trace text escaped in its figures."""
import json

import pytest
import torch

from engine import run, trace as T
from engine.errors import OptionError
from engine.methods.cad import joined
from engine.runner import DONE
from engine.sampling import SamplingConfig
from tests.conftest import app_test, make_tiny_lm, shown, wait_done
from viz import cad as vz

CONTEXT = "The Eiffel Tower was moved to Rome in 2031, where it now stands beside the Colosseum."
QUESTION = "Where is the Eiffel Tower? Answer in one sentence."


def reference(lm, context: str, question: str, alpha: float, n: int) -> list[int]:
    """Greedy argmax of (1 + alpha) log p(y | c, x) - alpha log p(y | x), each step one full forward of each
    whole sequence (no cache)."""
    with_ids = lm.encode(joined(context, question))[0].tolist()
    q_ids = lm.encode(question)[0].tolist()
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            lc = lm.model(input_ids=torch.tensor([with_ids + out])).logits[0, -1].float().log_softmax(-1)
            lq = lm.model(input_ids=torch.tensor([q_ids + out])).logits[0, -1].float().log_softmax(-1)
            tok = int(((1 + alpha) * lc - alpha * lq).argmax())
            out.append(tok)
            if tok in lm.eos_ids:
                break
    return out


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lm(seed=5)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_equals_the_formula_on_a_tiny_model(tiny, one_thread, alpha):
    tr = run.run(tiny, "cad", "Tell me a story", max_new_tokens=10, options={"context": "Once upon a time", "alpha": alpha})
    assert tr.final_ids == reference(tiny, "Once upon a time", "Tell me a story", alpha, 10)
    assert tr.counters.target_forwards == 2 * len(tr.steps)


@pytest.mark.parametrize("alpha,question", [(0.5, QUESTION), (1.0, "Who built the tower, and where is it now?")])
def test_equals_the_formula_on_the_embedded_model(embedded_lm, alpha, question):
    tr = run.run(embedded_lm, "cad", question, max_new_tokens=12, options={"context": CONTEXT, "alpha": alpha})
    assert tr.final_ids == reference(embedded_lm, CONTEXT, question, alpha, 12)


def test_alpha_zero_is_decoding_with_the_context_and_the_demo_follows_the_context(embedded_lm):
    plain = run.run(embedded_lm, "ar", joined(CONTEXT, QUESTION), max_new_tokens=20)
    tr0 = run.run(embedded_lm, "cad", QUESTION, max_new_tokens=20, options={"context": CONTEXT, "alpha": 0.0})
    assert tr0.final_ids == plain.final_ids
    assert not any("changed" in (s.get("events") or []) for s in tr0.steps)
    tr = run.run(embedded_lm, "cad", QUESTION, max_new_tokens=20, options={"context": CONTEXT, "alpha": 0.5})
    # the page's demo: with the context alone the 135M model keeps its prior (Paris); the contrast follows it
    assert "Rome" not in tr0.final_text and "Rome" in tr.final_text
    assert tr.extra["summary"]["changed_steps"] >= 1
    assert sum("changed" in (s.get("events") or []) for s in tr.steps) == tr.extra["summary"]["changed_steps"]
    b = tr.steps[0]["cad"]
    assert {r["id"] for r in b["rows"]} >= {b["top_with"], b["top_without"], b["top_cad"], tr.steps[0]["token_id"]}
    T.loads(tr.to_json())   # the block passes the schema


def test_a_context_of_several_lines_is_taken_as_given(tiny, one_thread):
    ctx = "Line one of the passage.\nLine two.\n\nA third paragraph."
    tr = run.run(tiny, "cad", "Question?", max_new_tokens=3, options={"context": ctx})
    assert tr.meta["params"]["context"] == ctx


def test_sampling_is_seeded(tiny, one_thread):
    cfg = SamplingConfig(temperature=0.9, seed=3)
    a = run.run(tiny, "cad", "Hi", max_new_tokens=8, sampling=cfg, options={"context": "Story:"})
    b = run.run(tiny, "cad", "Hi", max_new_tokens=8, sampling=cfg, options={"context": "Story:"})
    assert a.final_ids == b.final_ids


@pytest.mark.parametrize("options,match", [
    ({"context": "   "}, r"context is empty"),
    ({"alpha": -0.1}, r"alpha must be a number in \[0, 10\]"),
    ({"alpha": 11.0}, r"alpha must be a number in \[0, 10\]"),
    ({"context": "x" * 20_001}, r"context is 20001 characters long; at most 20000"),
])
def test_bad_options_refused_before_any_forward(tiny, options, match, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a forward ran")
    monkeypatch.setattr(tiny.model, "forward", boom)
    with pytest.raises(OptionError, match=match):
        run.prepare(tiny, "cad", "Hello", max_new_tokens=4, options=options)


def test_figures_escape_trace_text(tiny, one_thread):
    tr = run.run(tiny, "cad", "Hello", max_new_tokens=4, options={"context": "Story:", "alpha": 3.0})
    obj = json.loads(tr.to_json())
    for s in obj["steps"]:
        s["token_text"] = "<img src=x onerror=alert(1)>"
        for r in s["cad"]["rows"]:
            r["text"] = "<img src=x onerror=alert(1)>"
        s.setdefault("events", []).append("changed")
    t = T.loads(json.dumps(obj))
    for fig in (vz.step_figure(t.steps[-1]), vz.run_figure(t.steps, len(t.steps) - 1)):
        blob = json.dumps(fig.to_plotly_json(), default=str)
        assert "<img" not in blob and "&lt;img" in blob


def test_search_page_runs_cad_and_draws_its_block(embedded_lm):
    at = app_test("pages/9_Search.py").run()
    assert not at.exception
    at.selectbox(key="search_method").set_value("cad").run()
    assert at.text_area(key="cad_prompt").value.startswith("Where is the Eiffel Tower")
    at.number_input(key="cad_max_new").set_value(6)
    at.button(key="cad_go").click().run()
    r = wait_done(at, "runner_cad", 180)
    assert r.state == DONE and r.trace.steps[0]["kind"] == "ar" and "cad" in r.trace.steps[0]
    assert r.trace.meta["params"]["context"].startswith("The Eiffel Tower was moved")
    at.run()
    assert not at.exception
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert len(keys) >= 4
    at.text_area(key="cad_context_text").input("   ").run()
    at.button(key="cad_go").click().run()
    assert any("context is empty" in m for m in shown(at.error))
