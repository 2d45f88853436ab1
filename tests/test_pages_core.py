"""AppTest: the home page and the Autoregressive page render and run a short generation."""

from tests.conftest import app_test, wait_done

from engine.runner import DONE




def test_home_page_renders(embedded_lm):
    at = app_test("app.py").run()
    assert not at.exception
    assert any("Loaded" in s.value for s in at.success)


def test_home_page_unknown_model_shows_error(embedded_lm):
    at = app_test("app.py").run()
    at.text_input(key="home_model_input").input("no-such-org/no-such-model-xyz")
    at.button(key="home_load").click().run()
    assert not at.exception
    assert any("not found" in e.value for e in at.error)


def test_autoregressive_page_generates(embedded_lm):
    at = app_test("pages/1_Autoregressive.py").run()
    assert not at.exception
    at.text_area(key="ar_prompt").input("Name a fruit.")
    at.number_input(key="ar_max_new").set_value(8)
    at.button(key="ar_go").click().run()
    r = wait_done(at, "runner_ar")
    assert r.state == DONE and len(r.trace.steps) >= 1
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 2
    # step back and forward through the recorded steps
    if len(r.trace.steps) > 1:
        at.button(key="runner_ar_back").click().run()
        assert r.cursor == len(r.trace.steps) - 2
        at.button(key="runner_ar_fwd").click().run()
        assert r.cursor == len(r.trace.steps) - 1
    assert not at.exception


def test_autoregressive_page_empty_prompt_is_an_error(embedded_lm):
    at = app_test("pages/1_Autoregressive.py").run()
    at.text_area(key="ar_prompt").input("   ")
    at.button(key="ar_go").click().run()
    assert not at.exception
    assert any("empty" in e.value for e in at.error)


def test_start_paused_then_step(embedded_lm):
    at = app_test("pages/1_Autoregressive.py").run()
    at.text_area(key="ar_prompt").input("Count to five.")
    at.number_input(key="ar_max_new").set_value(6)
    at.button(key="ar_go_paused").click().run()
    r = at.session_state["runner_ar"]
    assert len(r.trace.steps) == 0
    at.button(key="runner_ar_fwd").click().run()
    assert len(r.trace.steps) == 1
    at.button(key="runner_ar_fwd").click().run()
    assert len(r.trace.steps) == 2
    assert not at.exception
    r.cancel()
