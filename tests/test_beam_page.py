"""The Search page (pages/9_Search.py) and its figures (viz/beam.py): a short beam search runs, steps back and
forth, draws the beam tree, the n-best list and the scores; bad options are shown as errors; trace strings
are escaped in every figure."""
import json

import pytest

from engine import run, trace as T
from engine.runner import DONE
from tests.conftest import app_test, make_tiny_lm, shown, wait_done
from viz import beam as vz

PAGE = "pages/9_Search.py"
KEY = "runner_beam"


@pytest.fixture(scope="module")
def tiny_trace():
    lm = make_tiny_lm(seed=11)
    tr = run.run(lm, "beam", "Once upon a time", max_new_tokens=12,
                 options={"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.8})
    return T.loads(tr.to_json())


@pytest.mark.slow
def test_tree_nodes_and_tables(tiny_trace):
    steps = tiny_trace.steps
    for cur in (0, len(steps) // 2, len(steps) - 1):
        g = vz.tree_graph(steps, cur)
        kinds = [d["kind"] for _, d in g.nodes(data=True)]
        shown = min(vz.TREE_STEPS, cur + 1)
        assert kinds.count("on_path") + kinds.count("dead") >= 4 * (shown - 1)
        assert "pruned" in kinds
        assert all(g.in_degree(n) == 1 for n, d in g.nodes(data=True) if d["layer"] > 0)
        fig = vz.tree_figure(steps, cur)
        assert fig.data
        assert vz.scores_figure(steps, cur).data
    last = len(steps) - 1
    rows = vz.nbest_rows(steps, last)
    assert [r["text"] for r in rows] == [h["text"] for h in tiny_trace.extra["nbest"]]
    assert rows[0]["text"] == tiny_trace.final_text
    beams = vz.beam_rows(steps, len(steps) - 2)
    assert len(beams) == 4 and {b["group"] for b in beams} == {0, 1}


def test_long_beams_show_their_last_tokens(tiny_trace):
    steps = tiny_trace.steps
    toks, cut = vz.beam_tokens(steps, len(steps) - 2, 0, max_tokens=3)
    assert len(toks) == 3 and cut
    assert vz.beam_text(steps, 0, 0) == steps[0]["beams"][0]["text"]


def test_trace_strings_are_escaped(tiny_trace):
    obj = json.loads(tiny_trace.to_json())
    for s in obj["steps"]:
        for c in s["beams"] + s["pruned"] + s["finished"]:
            c["text"] = "<img src=x onerror=alert(1)>"
    tr = T.loads(json.dumps(obj))
    fig = vz.tree_figure(tr.steps, len(tr.steps) - 1)
    blob = json.dumps(fig.to_plotly_json(), default=str)
    assert "<img" not in blob and "&lt;img" in blob


def test_replay_renderer_draws_a_saved_trace(tiny_trace):
    from streamlit.testing.v1 import AppTest

    def script(text):
        from engine import trace as T
        from engine.runner import TraceView
        from ui import renderers
        tr = T.loads(text)
        renderers.render(TraceView(tr, len(tr.steps) - 1), "t")
        renderers.render(TraceView(tr, 0), "u")
    at = AppTest.from_function(script, kwargs={"text": tiny_trace.to_json()}, default_timeout=60)
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 4 and len(at.dataframe) == 2   # the n-best at the end, the beams at 0


def test_search_page_generates_and_steps(embedded_lm):
    at = app_test(PAGE).run()
    assert not at.exception
    at.text_area(key="beam_prompt").input("What is 2 + 2? Answer with a number only.")
    at.number_input(key="beam_max_new").set_value(8)
    at.number_input(key="beam_num_beams").set_value(3)
    at.button(key="beam_go").click().run()
    r = wait_done(at, KEY, 180)
    assert r.state == DONE and r.trace.steps[0]["kind"] == "beam"
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 2 and len(at.dataframe) >= 1
    n = len(r.trace.steps)
    if n > 1:
        at.button(key=f"{KEY}_back").click().run()
        assert r.cursor == n - 2 and not at.exception
        at.button(key=f"{KEY}_fwd").click().run()
        assert r.cursor == n - 1 and not at.exception


def test_search_page_bad_groups_is_an_error(embedded_lm):
    at = app_test(PAGE).run()
    at.number_input(key="beam_num_beams").set_value(4)
    at.number_input(key="beam_num_beam_groups").set_value(3)
    at.button(key="beam_go").click().run()
    assert not at.exception
    assert any("num_beam_groups must divide num_beams: 3 groups of 4 beams" in m for m in shown(at.error))
