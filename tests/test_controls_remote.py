"""Runs in the decoder process tell the truth after each control, and a run whose page is gone stops.

- After Pause or Cancel, RemoteRunner.wait_idle returns once the step that was in progress is in the mirror:
  nothing arrives afterwards that the page would not show.
- `working` says a paused run is still computing (the step in progress, or one single step).
- Breakpoints set while the run is live apply from its next step (Runner and RemoteRunner).
- The heartbeat (engine.remote: RemoteRunner.watch, armed by the UI only): a watched run computing with no
  heartbeat for its timeout is cancelled with a reason; a paused one is kept; an unwatched run never is.
"""
import time

import pytest

from engine import remote
from engine.runner import CANCELLED, DONE, PAUSED, RUNNING, Breakpoint, Runner
from tests.test_remote import PROMPT, handle, local, tiny_dir  # noqa: F401 -- fixtures
from tests.test_runner import fake_steps

LONG = dict(max_new_tokens=1500, ignore_eos=True)   # a tiny-model run that lasts a few seconds at least


def wait_for(cond, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.slow
def test_after_pause_no_step_arrives_unseen(handle):
    r = remote.decoder().start(handle, "ar", PROMPT, **LONG)
    assert wait_for(lambda: len(r.trace.steps) >= 3)
    r.pause()
    r.wait_idle(timeout=5)
    n = len(r.trace.steps)
    assert r.state == PAUSED and not r.working
    time.sleep(0.5)
    assert len(r.trace.steps) == n and r.cursor == n - 1
    r.step_forward()
    assert r.working or len(r.trace.steps) == n + 1    # until the decoder says the one step is back
    r.wait_idle(timeout=5)
    assert len(r.trace.steps) == n + 1 and not r.working and r.state == PAUSED
    r.resume()
    assert r.state == RUNNING
    assert wait_for(lambda: len(r.trace.steps) > n + 3)
    r.cancel()
    r.wait_idle(timeout=5)
    n = len(r.trace.steps)
    assert r.state == CANCELLED and not r.working
    time.sleep(0.5)
    assert len(r.trace.steps) == n


@pytest.mark.slow
def test_breakpoints_set_while_running_apply(handle):
    r = remote.decoder().start(handle, "ar", PROMPT, **LONG)
    assert wait_for(lambda: len(r.trace.steps) >= 2)
    r.set_breakpoints([Breakpoint("confidence_below", 1.01)])   # every step: stops at the next one
    assert wait_for(lambda: r.state == PAUSED, 10), r.state
    r.wait_idle(5)
    assert r.break_reason and "confidence" in r.break_reason
    n = len(r.trace.steps)
    r.set_breakpoints([])
    r.resume()
    assert wait_for(lambda: len(r.trace.steps) > n + 5)
    r.cancel()


def test_in_process_runner_takes_breakpoints_while_live():
    t, it = fake_steps(50, delay=0.01)
    r = Runner(t, it).start()
    assert wait_for(lambda: len(t.steps) >= 5)
    r.set_breakpoints([Breakpoint("token", "t40")])
    r.wait_idle(5)
    assert r.state == PAUSED and len(t.steps) == 41 and "t40" in r.break_reason
    r.cancel()


@pytest.mark.slow
def test_a_watched_run_whose_page_is_gone_is_cancelled(handle, monkeypatch):
    monkeypatch.setattr(remote, "HEARTBEAT_EVERY_S", 0.1)   # quicker than the app's 1 s / 5 s: the tiny run is fast
    r = remote.decoder().start(handle, "ar", PROMPT, max_new_tokens=2000, ignore_eos=True)
    viewed = [True]
    r.watch(lambda: viewed[0], timeout_s=0.6)
    time.sleep(1.5)        # heartbeats keep it going
    assert r.state in (RUNNING, DONE), r.stop_reason
    if r.state == DONE:
        pytest.skip("the tiny run finished before its page could go away")
    viewed[0] = False      # the tab was closed
    t = time.time()
    assert wait_for(lambda: r.finished, 10)
    assert r.state == CANCELLED and time.time() - t < 3, (r.state, time.time() - t)
    assert "no open page" in r.stop_reason


@pytest.mark.slow
def test_a_paused_watched_run_is_kept_and_an_unwatched_one_never_cancelled(handle):
    paused = remote.decoder().start(handle, "ar", PROMPT, start_paused=True, **LONG)
    paused.watch(lambda: False, timeout_s=0.5)
    free = remote.decoder().start(handle, "ar", PROMPT, **LONG)   # the engine API / CLI / tests: not watched
    time.sleep(2.0)
    assert paused.state == PAUSED
    paused.step_forward()          # a control is the page acting on the run: it counts as a heartbeat
    paused.wait_idle(5)
    assert paused.state == PAUSED and len(paused.trace.steps) == 1
    assert free.state in (RUNNING, DONE)
    free.cancel()
    paused.cancel()
    assert free.stop_reason is None
