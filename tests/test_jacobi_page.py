"""AppTest: the Jacobi & lookahead page runs a short generation with each method, steps through it, shows
its figures, compares with autoregressive, and reports bad input as an error."""

from tests.conftest import app_test, wait_done

from engine.runner import DONE

PAGE = "pages/4_Jacobi_Lookahead.py"
KEY = "runner_jacobi"



def _generate(at, method: str, n: int = 10):
    at.radio(key="jl_method").set_value(method).run()
    at.text_area(key="jl_prompt").input("Count: one, two, three, four,")
    at.number_input(key="jl_max_new").set_value(n)
    at.button(key="jl_go").click().run()
    r = wait_done(at, KEY, 180)
    assert r.state == DONE and r.trace.steps and r.trace.steps[0]["kind"] == method
    at.run()
    assert not at.exception
    return r


def test_jacobi_page_generates_and_steps(embedded_lm):
    at = app_test(PAGE).run()
    assert not at.exception
    at.selectbox(key="jl_jacobi_variant").set_value("gauss_seidel")
    at.number_input(key="jl_jacobi_block_size").set_value(4)
    r = _generate(at, "jacobi")
    assert r.trace.steps[0]["variant"] == "gauss_seidel"
    assert len(at.get("plotly_chart")) >= 2  # trajectory grid, dependency graph, progress
    if len(r.trace.steps) > 1:
        at.button(key=f"{KEY}_back").click().run()
        assert r.cursor == len(r.trace.steps) - 2
        assert not at.exception
    at.button(key="jl_vs_ar").click().run()
    assert not at.exception
    assert r.trace.extra["vs_ar"]["identical"] is True


def test_lookahead_page_generates(embedded_lm):
    at = app_test(PAGE).run()
    r = _generate(at, "lookahead", 12)
    assert r.trace.meta["method"] == "lookahead"
    assert len(at.get("plotly_chart")) >= 2  # window, progress
    assert len(at.dataframe) >= 1          # n-gram pool table
    assert not at.exception


def test_empty_prompt_is_an_error(embedded_lm):
    at = app_test(PAGE).run()
    at.text_area(key="jl_prompt").input("  ")
    at.button(key="jl_go").click().run()
    assert not at.exception
    assert any("empty" in e.value for e in at.error)
