"""AppTest: after every click the step controls, the status line and the metrics are the run's state after
that click (issue 30): Resume shows Pause, Pause shows Resume and the step that was in progress, Cancel
disables what no longer applies; breakpoints changed while paused apply; diffusion metrics count committed
tokens while live; the metrics say which step they count to; Speculative says whether the output equals
greedy; a long prompt's prefill says how many tokens it prefills."""
import re
import time
from types import SimpleNamespace

import pytest
from tests.conftest import app_test, wait_done

from engine.runner import CANCELLED, DONE, PAUSED, RUNNING, Breakpoint
from engine.trace import Trace

AR = "pages/1_Autoregressive.py"
STATUS = re.compile(r"^\*\*(running|paused|done|cancelled|error)\*\*")


def status(at) -> str:
    return next(m.value for m in at.markdown if STATUS.match(m.value))


def keys(at) -> set[str]:
    return {b.key for b in at.button}


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def wait_for(cond, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end and not cond():
        time.sleep(0.05)
    return cond()


def ar_page(prompt="Count from one to one hundred.", max_new=300):
    at = app_test(AR).run()
    at.text_area(key="ar_prompt").input(prompt)
    at.number_input(key="ar_max_new").set_value(max_new)
    at.checkbox(key="ar_ignore_eos").check()
    return at


def test_buttons_and_status_follow_each_click(embedded_lm):
    at = ar_page()
    at.button(key="ar_go_paused").click().run()
    r = at.session_state["runner_ar"]
    assert r._viewed is None    # AppTest: no browser page, so no heartbeat and never cancelled for want of one
    assert at.button(key="runner_ar_resume").label == "Resume" and "runner_ar_pause" not in keys(at)
    assert status(at).startswith("**paused** · no steps yet")
    at.button(key="runner_ar_fwd").click().run()
    assert len(r.trace.steps) == 1 and status(at).startswith("**paused** · showing step 0 (steps 0–0)")

    at.button(key="runner_ar_resume").click().run()
    assert r.state == RUNNING
    assert "runner_ar_pause" in keys(at) and "runner_ar_resume" not in keys(at)
    assert status(at).startswith("**running**")
    assert wait_for(lambda: len(r.trace.steps) >= 4)

    at.button(key="runner_ar_pause").click().run()
    assert r.state == PAUSED and not r.working
    n = len(r.trace.steps)
    assert at.button(key="runner_ar_resume").label == "Resume" and "runner_ar_pause" not in keys(at)
    assert status(at).startswith(f"**paused** · showing step {n - 1} (steps 0–{n - 1})"), status(at)
    time.sleep(0.5)
    assert len(r.trace.steps) == n        # the step that was in progress when Pause was clicked is shown

    at.button(key="runner_ar_cancel").click().run()
    assert r.state == CANCELLED
    assert status(at).startswith("**cancelled**")
    assert at.button(key="runner_ar_cancel").disabled
    last = at.button(key="runner_ar_resume")
    assert last.label == "Last step ▶▶" and last.disabled     # already showing it
    assert at.button(key="runner_ar_fwd").disabled
    at.button(key="runner_ar_back").click().run()
    assert not at.button(key="runner_ar_resume").disabled and not at.button(key="runner_ar_fwd").disabled
    assert not at.exception


def test_a_breakpoint_added_while_paused_stops_the_run(embedded_lm):
    at = ar_page()
    at.button(key="ar_go_paused").click().run()
    r = at.session_state["runner_ar"]
    at.button(key="runner_ar_fwd").click().run()
    at.number_input(key="ar_bp_conf").set_value(0.99).run()
    assert r.breakpoints == [Breakpoint("confidence_below", 0.99)]
    assert any("apply to the run in progress" in c.value for c in at.caption)
    # typed and clicked at once: the Resume callback reads the widgets before it resumes
    at.text_input(key="ar_bp_text").input("zq@@unlikely")
    at.button(key="runner_ar_resume").click().run()
    assert Breakpoint("token", "zq@@unlikely") in r.breakpoints
    assert wait_for(lambda: r.state == PAUSED and r.break_reason, 90), (r.state, len(r.trace.steps))
    at.run()
    assert "breakpoint: step" in status(at) and "confidence" in status(at)
    assert len(r.trace.steps) < 300
    r.cancel()
    assert not at.exception


def test_diffusion_metrics_count_committed_tokens_while_live(embedded_lm):
    at = app_test("pages/5_Diffusion.py").run()
    at.button(key="dlm_go_paused").click().run()
    r = at.session_state["runner_diffusion"]
    for _ in range(3):
        at.button(key="runner_diffusion_fwd").click().run()
    assert len(r.trace.steps) == 3 and not r.finished and r.trace.counters.generated_tokens == 0
    committed = sum(len(s["new_ids"]) for s in r.trace.steps)
    assert committed >= 3
    assert metric(at, "tokens") == str(committed)
    assert metric(at, "tokens / forward") == f"{committed / 3:.2f}"
    assert metric(at, "tokens/s (compute)") not in ("-", "0", "0.0")
    assert any(c.value.startswith("So far: up to step 2") for c in at.caption)
    at.button(key="runner_diffusion_back").click().run()
    assert metric(at, "tokens") == str(sum(len(s["new_ids"]) for s in r.trace.steps[:2]))
    assert any(c.value.startswith("At step 1 (of steps 0–2)") for c in at.caption)
    r.cancel()
    assert not at.exception


def test_speculative_speedup_says_whether_output_equals_greedy(embedded_lm):
    at = app_test("pages/2_Speculative.py").run()
    at.number_input(key="spec_max_new").set_value(12)
    at.button(key="spec_go").click().run()
    r = wait_done(at, "runner_spec")
    assert r.state == DONE
    at.run()
    at.button(key="spec_speedup").click().run()
    assert r.trace.extra["vs_ar"]["identical"] is True
    assert metric(at, "same as greedy") == "yes"
    assert re.fullmatch(r"\d+\.\d\dx", metric(at, "speedup vs AR"))
    assert any("output identical to greedy: **yes**" in c.value for c in at.caption)
    assert any("measured on a separate run" in c.value for c in at.caption)
    assert not at.exception


def test_a_long_prompt_says_how_many_tokens_it_prefills(embedded_lm, monkeypatch):
    from ui import controls
    monkeypatch.setattr(controls, "STEP_WAIT_S", 0.0)    # show the page while the first step computes
    at = ar_page(prompt="The quick brown fox jumps over the lazy dog. " * 300, max_new=4)
    at.button(key="ar_go_paused").click().run()
    r = at.session_state["runner_ar"]
    n = len(r.trace.meta["prompt_ids"])
    assert n > 2500
    at.button(key="runner_ar_fwd").click().run()
    if r.trace.steps:
        pytest.skip("the prefill finished before the page was drawn")
    assert "computing step 0, then pausing" in status(at)
    assert any(f"Prefilling the prompt ({n:,} tokens)" in i.value for i in at.info)
    r.wait_idle(120)
    r.cancel()
    assert not at.exception


def test_prefill_message_and_speeds():
    from ui import controls
    r = SimpleNamespace(trace=Trace(meta={"prompt_ids": [1] * 5000}), started_at=time.time() - 7)
    msg = controls.prefill_message(r)
    assert msg.startswith("Prefilling the prompt (5,000 tokens) · 7 s so far")
    assert [controls.rate(x) for x in (0.0123, 0.5, 3.456, 12.34, 1234.5, 0, None)] == \
        ["0.0123", "0.5", "3.46", "12.3", "1234", "0", "-"]
