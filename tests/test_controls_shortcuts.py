"""Keyboard shortcuts on the live pages (ui/controls.step_controls): the first runner a page run draws answers
J / K / L (its buttons carry the shortcut and say the key); a second runner on the same page (KV's full-cache
run, diffusion side by side) gets none, so no key clicks two buttons; every page run decides afresh."""
import pytest
from streamlit.testing.v1 import AppTest

from engine import run
from engine.runner import Runner
from tests.conftest import make_tiny_lm


def _script(first: str, second: str):
    from ui import controls
    controls.step_controls(first)
    controls.step_controls(second)


def _runner(lm):
    tr, it = run.prepare(lm, "ar", "Hello", max_new_tokens=3)
    r = Runner(tr, it).start()
    import time
    end = time.time() + 30
    while not r.finished and time.time() < end:
        time.sleep(0.05)
    return r


@pytest.mark.slow
def test_the_first_runner_owns_the_keys(one_thread):
    lm = make_tiny_lm(seed=1)
    at = AppTest.from_function(_script, kwargs={"first": "ra", "second": "rb"})
    at.session_state["ra"], at.session_state["rb"] = _runner(lm), _runner(lm)
    for _ in range(2):                      # and again on the next page run
        at.run()
        assert not at.exception
        shortcuts = {b.key: b.proto.shortcut.upper() for b in at.button}
        assert shortcuts["ra_back"] == "J" and shortcuts["ra_fwd"] == "L" and shortcuts["ra_resume"] == "K"
        assert not any(shortcuts[k] for k in ("rb_back", "rb_fwd", "rb_resume"))
        assert "(key J)" in at.button(key="ra_back").proto.help and "key" not in at.button(key="rb_back").proto.help
    at.button(key="ra_back").click().run()  # the keys still act on the first runner's buttons
    assert at.session_state["ra"].cursor == 1
