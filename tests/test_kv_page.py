"""AppTest: the KV-cache page runs a short generation with each policy, side by side, and rejects bad input."""

import pytest
from tests.conftest import app_test, shown, wait_done

from engine.methods.kv.policies import POLICIES
from engine.runner import DONE

PAGE = "pages/3_KV_Cache.py"




def _setup(at, policy, budget=24, max_new=3):
    at.selectbox(key="kv_policy").set_value(policy).run()   # the policy's own knobs appear with it
    if policy == "snapkv":
        at.number_input(key="kv_window_size").set_value(8)
    at.number_input(key="kv_budget").set_value(budget)
    at.number_input(key="kv_max_new").set_value(max_new)
    at.selectbox(key="kv_watch_layers_preset").set_value("mid")
    return at


@pytest.mark.parametrize("policy", POLICIES)
def test_kv_page_generates_with_each_policy(embedded_lm, policy):
    at = app_test(PAGE).run()
    assert not at.exception
    _setup(at, policy)
    at.button(key="kv_go").click().run()
    assert not at.exception, at.exception
    r = wait_done(at, "runner_kv_a")
    assert r.state == DONE and len(r.trace.steps) == 3, r.error
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 4  # eviction map, attention, scores, memory (+ agreement)
    if policy != "full":
        assert r.trace.steps[-1]["cache_len"] == 24
    # summary views of the eviction map
    at.selectbox(key="kva_head").set_value("all").run()
    assert not at.exception
    at.selectbox(key="kva_layer").set_value("all").run()
    assert not at.exception


def test_kv_page_two_policies_side_by_side(embedded_lm):
    at = app_test(PAGE).run()
    _setup(at, "h2o")
    at.checkbox(key="kv_two").check().run()
    at.selectbox(key="kv_policy_b").set_value("random")
    at.button(key="kv_go").click().run()
    ra, rb = wait_done(at, "runner_kv_a"), wait_done(at, "runner_kv_b")
    assert ra.state == DONE and rb.state == DONE
    assert ra.trace.meta["prompt"] == rb.trace.meta["prompt"]
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 8


def test_kv_page_bad_budget_is_an_error(embedded_lm):
    at = app_test(PAGE).run()
    _setup(at, "streaming_llm", budget=4)
    at.button(key="kv_go").click().run()
    assert not at.exception
    assert any("n_sink" in m for m in shown(at.error))
