"""Replay: every shipped example trace loads and renders with no model loaded."""
from pathlib import Path

import pytest

from engine import models, trace as T
from tests.conftest import ROOT, app_test

EXAMPLES = sorted((Path(ROOT) / "examples" / "traces").glob("*.json"))


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("replay must not load a model")
    monkeypatch.setattr(models, "load", refuse)


def test_examples_exist_for_families():
    kinds = {T.load(p).steps[0]["kind"] for p in EXAMPLES}
    assert kinds == {"ar", "speculative", "kv", "jacobi", "lookahead", "diffusion"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_trace_replays_without_a_model(path, no_model):
    tr = T.load(path)
    assert tr.steps, path
    at = app_test("pages/7_Replay.py")
    at.query_params["trace"] = path.stem
    at.query_params["step"] = "1"
    at.run()
    assert not at.exception, at.exception
    r = at.session_state["runner_replay"]
    assert r.trace.final_ids == tr.final_ids
    assert r.cursor == min(1, len(tr.steps) - 1)
    # step forward and back through the recorded steps
    at.button(key="runner_replay_fwd").click().run()
    assert not at.exception
    at.button(key="runner_replay_back").click().run()
    assert not at.exception
    assert r.cursor == min(1, len(tr.steps) - 1)
    assert at.get("plotly_chart") or at.get("code"), "the step's figures should render"
