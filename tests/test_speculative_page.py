"""AppTest: the Speculative page runs a short generation with each drafter and draws its figures."""

import pytest

from engine.methods.speculative import DRAFTERS
from engine.runner import DONE
from tests.conftest import app_test, wait_done

KEY = "runner_spec"


pytestmark = pytest.mark.usefixtures("one_thread_module")



def start(drafter: str, **extra):
    at = app_test("pages/2_Speculative.py").run()
    assert not at.exception
    at.selectbox(key="spec_drafter").set_value(drafter).run()
    at.number_input(key="spec_max_new").set_value(6)
    if drafter == "prompt_lookup":
        at.number_input(key="spec_prompt_lookup_num_tokens").set_value(4)
    else:
        at.number_input(key="spec_num_assistant_tokens").set_value(2)
    if drafter in ("early_exit", "kangaroo"):
        at.number_input(key="spec_exit_layer").set_value(4)
    if drafter == "draft_model":
        at.selectbox(key="spec_draft_model_preset").set_value("custom...").run()
        at.text_input(key="spec_draft_model").input("self:4")
    for k, v in extra.items():
        at.selectbox(key=k).set_value(v)
    at.button(key="spec_go").click().run()
    return at


@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_page_generates_with_each_drafter(embedded_lm, drafter):
    at = start(drafter)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    r = wait_done(at, KEY, 300)
    assert r.state == DONE and r.trace.steps
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3   # tree, mask, acceptance over time
    if len(r.trace.steps) > 1:
        at.button(key=f"{KEY}_back").click().run()
        assert r.cursor == len(r.trace.steps) - 2 and not at.exception


def test_page_tree_and_speedup(embedded_lm):
    at = start("prompt_lookup", spec_tree_preset="2.2.2")
    r = wait_done(at, KEY, 300)
    assert r.state == DONE
    at.run()
    at.button(key="spec_speedup").click().run()
    assert not at.exception
    sp = r.trace.extra["vs_ar"]
    assert sp["identical"] and sp["same_as_recorded"] and sp["speedup"] > 0


def test_page_bad_options_show_errors(embedded_lm):
    at = app_test("pages/2_Speculative.py").run()
    at.selectbox(key="spec_tree_preset").set_value("custom...").run()
    at.text_input(key="spec_tree").input("2.x")
    at.button(key="spec_go").click().run()
    assert not at.exception
    assert any("tree shape" in e.value for e in at.error)
    at.text_input(key="spec_tree").input("2.2")
    at.selectbox(key="spec_verify").set_value("typical").run()
    at.button(key="spec_go").click().run()
    assert any("temperature" in e.value for e in at.error)
    assert KEY not in at.session_state or at.session_state[KEY] is None


def test_open_ended_example_picks_the_fastest_measured_drafter(embedded_lm):
    """The 'open-ended chat' example sets its prompt and the trained EAGLE head (chain of 4), the drafter that
    measured fastest on open-ended prompts; it decodes with the shipped heads, equal to greedy."""
    at = app_test("pages/2_Speculative.py").run()
    at.radio(key="spec_example").set_value("open-ended chat").run()
    assert at.text_area(key="spec_prompt").value.startswith("Write a short story")
    assert at.selectbox(key="spec_drafter").value == "eagle"
    assert at.number_input(key="spec_num_assistant_tokens").value == 4
    at.number_input(key="spec_max_new").set_value(8)
    at.button(key="spec_go").click().run()
    r = wait_done(at, KEY)
    at.run()
    assert r.state == DONE and not at.exception and not at.error, [e.value for e in at.error]
    s = r.trace.extra["summary"]
    assert s["drafter"] == "eagle" and s["heads"] == "trained (shipped)" and s["draft_vocab"] == 5406
    at.radio(key="spec_example").set_value("input-grounded (summarise a text)").run()
    assert at.selectbox(key="spec_drafter").value == "prompt_lookup" and not at.exception
