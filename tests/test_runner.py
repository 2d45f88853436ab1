"""The step-through runner: pause, step, back, jump, cancel, breakpoints, errors."""
import time

from engine import run
from engine.runner import CANCELLED, DONE, ERROR, PAUSED, Breakpoint, Runner
from engine.trace import Trace


def fake_steps(n, fail_at=None, delay=0.0):
    trace = Trace.new("fake", "ar", {}, "p")

    def it():
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("boom")
            time.sleep(delay)
            rec = {"kind": "ar", "index": i, "new_text": f"t{i}", "confidence": 0.1 if i == 3 else 0.9,
                   "events": ["kv_evicted"] if i == 5 else []}
            trace.steps.append(rec)
            yield rec
    return trace, it()


def test_runs_to_completion():
    t, it = fake_steps(10)
    r = Runner(t, it).start()
    assert r.wait(5)
    assert r.state == DONE and len(t.steps) == 10 and r.cursor == 9


def test_start_paused_step_forward_back_jump():
    t, it = fake_steps(10)
    r = Runner(t, it, start_paused=True).start()
    r.wait_idle()
    assert len(t.steps) == 0 and r.state == PAUSED
    for k in range(3):
        r.step_forward()
        r.wait_idle()
        assert len(t.steps) == k + 1 and r.cursor == k
    r.step_back()
    assert r.cursor == 1 and len(t.steps) == 3
    r.step_forward()  # moves the view forward through recorded steps without computing
    r.wait_idle()
    assert r.cursor == 2 and len(t.steps) == 3
    r.jump(0)
    assert r.cursor == 0
    r.jump(99)
    assert r.cursor == 2
    r.resume()
    assert r.wait(5) and r.state == DONE and r.cursor == 9


def test_breakpoints_pause_the_worker():
    for bp, expect in [(Breakpoint("token", "t4"), 4), (Breakpoint("confidence_below", 0.5), 3),
                       (Breakpoint("event", "kv_evicted"), 5)]:
        t, it = fake_steps(10)
        r = Runner(t, it, breakpoints=[bp]).start()
        r.wait_idle()
        assert r.state == PAUSED and len(t.steps) == expect + 1, bp
        assert r.break_reason
        r.breakpoints = []
        r.resume()
        assert r.wait(5) and r.state == DONE


def test_cancel_stops_a_running_worker():
    t, it = fake_steps(1000, delay=0.01)
    r = Runner(t, it).start()
    time.sleep(0.05)
    r.cancel()
    assert r.wait(5)
    assert r.state == CANCELLED and len(t.steps) < 1000


def test_error_is_reported_not_raised():
    t, it = fake_steps(10, fail_at=2)
    r = Runner(t, it).start()
    assert r.wait(5)
    assert r.state == ERROR and "boom" in r.error and len(t.steps) == 2


def test_real_method_under_runner(tiny_lm):
    trace, steps = run.prepare(tiny_lm, "ar", "hello", max_new_tokens=6)
    r = Runner(trace, steps, start_paused=True).start()
    r.step_forward()
    r.wait_idle()
    assert len(trace.steps) == 1
    r.resume()
    assert r.wait(30) and r.state == DONE
    assert trace.final_ids == run.run(tiny_lm, "ar", "hello", max_new_tokens=6).final_ids
