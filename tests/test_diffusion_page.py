"""AppTest: the Diffusion page runs the embedded diffusion model with three rules, side by side too."""

import pytest

from engine.runner import DONE
from tests.conftest import app_test, shown, wait_done

PAGE = "pages/5_Diffusion.py"




def small(at, rule):
    at.text_area(key="dlm_prompt").input("Name a fruit.")
    at.number_input(key="dlm_gen_length").set_value(8)
    at.number_input(key="dlm_block_length").set_value(4)
    at.number_input(key="dlm_steps").set_value(4)
    at.selectbox(key="dlm_rule").set_value(rule)


@pytest.mark.parametrize("rule", ["low_confidence", "threshold", "local_leap"])
def test_diffusion_page_generates(embedded_lm, rule):
    at = app_test(PAGE).run()
    assert not at.exception
    small(at, rule)
    at.button(key="dlm_go").click().run()
    r = wait_done(at, "runner_diffusion")
    assert r.state == DONE and len(r.trace.steps) >= 1, r.error
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3  # grid, confidence vs threshold, tokens per step
    assert all(len(s["new_ids"]) >= 1 for s in r.trace.steps)
    if len(r.trace.steps) > 1:
        at.button(key="runner_diffusion_back").click().run()
        assert r.cursor == len(r.trace.steps) - 2
        assert not at.exception


def test_diffusion_page_two_rules_side_by_side(embedded_lm):
    at = app_test(PAGE).run()
    small(at, "low_confidence")
    at.button(key="dlm_compare_go").click().run()
    a, b = wait_done(at, "runner_diffusion_a"), wait_done(at, "runner_diffusion_b")
    assert a.state == DONE and b.state == DONE
    assert a.trace.meta["params"]["rule"] == "low_confidence" and b.trace.meta["params"]["rule"] == "threshold"
    at.run()
    assert not at.exception
    # each side has its own step controls, and the pair steps together
    assert at.button(key="runner_diffusion_a_back") is not None and at.button(key="runner_diffusion_b_back") is not None
    ca, cb = a.cursor, b.cursor
    at.button(key="dlm_both_back").click().run()
    assert not at.exception and (a.cursor, b.cursor) == (ca - 1, cb - 1)
    at.button(key="dlm_both_fwd").click().run()
    assert (a.cursor, b.cursor) == (ca, cb)
    at.button(key="runner_diffusion_b_back").click().run()
    assert (a.cursor, b.cursor) == (ca, cb - 1)


def test_diffusion_page_bad_input_is_an_error(embedded_lm):
    at = app_test(PAGE).run()
    at.number_input(key="dlm_gen_length").set_value(10)
    at.number_input(key="dlm_block_length").set_value(4)
    at.button(key="dlm_go").click().run()
    assert not at.exception
    assert any("divide" in e.value for e in at.error)
    at.text_area(key="dlm_prompt").input("  ")
    at.button(key="dlm_go").click().run()
    assert any("empty" in e.value for e in at.error)


def test_diffusion_page_compares_the_two_embedded_weights(embedded_lm):
    """Same rule, default vs fast weights (certainty forcing + a confident-error penalty): what that training
    changes. The pickers offer the two shipped deltas only; their help says how to rebuild the others."""
    at = app_test(PAGE).run()
    assert not at.exception
    for key in ("dlm_adapter", "dlm_adapter_b"):   # the options as shown: each variant's label
        shown_opts = at.selectbox(key=key).options
        assert len(shown_opts) == 2, shown_opts
        assert shown_opts[0].startswith("smol-diffusion (") and shown_opts[1].startswith("smol-diffusion-fast ("), shown_opts
    assert "training.rebuild_variant" in at.selectbox(key="dlm_adapter").help
    small(at, "threshold")
    at.selectbox(key="dlm_rule_a").set_value("threshold")
    at.selectbox(key="dlm_adapter_b").set_value("embedded-fast")
    at.button(key="dlm_compare_go").click().run()
    a, b = wait_done(at, "runner_diffusion_a"), wait_done(at, "runner_diffusion_b")
    assert a.state == DONE and b.state == DONE, (a.error, b.error)
    assert a.trace.meta["params"]["adapter"] == "embedded" and b.trace.meta["params"]["adapter"] == "embedded-fast"
    assert b.trace.extra["summary"]["model"].startswith("smol-diffusion-fast")
    at.run()
    assert not at.exception
    assert any("smol-diffusion-fast" in c for c in shown(at.caption))
    # the sidebar choice switches the single-rule view too
    at.selectbox(key="dlm_adapter").set_value("embedded-fast").run()
    assert not at.exception
    assert any("smol-diffusion-fast" in m.value for m in at.sidebar.text)
    at.selectbox(key="dlm_adapter").set_value("embedded").run()  # and back to the default
    assert not at.exception
    assert any(m.value.startswith("smol-diffusion (") for m in at.sidebar.text)


def test_measured_2x_setting_button_sets_up_the_benchmark_comparison(embedded_lm):
    """One click puts the page in the setting benchmarks/diffusion.py measured (smol-diffusion-fast, threshold 0.7,
    one block of 64, greedy); side by side, the threshold rule then needs fewer steps than one token per step."""
    at = app_test(PAGE).run()
    at.button(key="dlm_preset_fast").click().run()
    assert not at.exception
    assert at.selectbox(key="dlm_adapter").value == "embedded-fast"
    assert at.selectbox(key="dlm_rule").value == "threshold"
    assert at.slider(key="dlm_threshold").value == pytest.approx(0.7)
    assert at.number_input(key="dlm_gen_length").value == 64 and at.number_input(key="dlm_block_length").value == 0
    at.text_area(key="dlm_prompt").input("Write one sentence about a violin.")
    at.button(key="dlm_compare_go").click().run()
    a, b = wait_done(at, "runner_diffusion_a"), wait_done(at, "runner_diffusion_b")
    assert a.state == DONE and b.state == DONE, (a.error, b.error)
    pa, pb = a.trace.meta["params"], b.trace.meta["params"]
    assert (pa["rule"], pa["adapter"]) == ("low_confidence", "embedded-fast")
    assert (pb["rule"], pb["adapter"], pb["threshold"], pb["block_length"]) == ("threshold", "embedded-fast", 0.7, 0)
    steps_a, steps_b = a.trace.extra["summary"]["steps"], b.trace.extra["summary"]["steps"]
    assert steps_b < steps_a, (steps_a, steps_b)
    at.run()
    assert not at.exception
