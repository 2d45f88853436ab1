"""Replay: every shipped example trace loads and renders with no model loaded; odd links and hostile
traces give clear messages and literal text, never a traceback or markup."""
import itertools
import json
import re
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


@pytest.mark.slow
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


# ---- odd links: a clear message and a sensible step, never a traceback ------------------------
def _open(params: dict):
    at = app_test("pages/7_Replay.py")
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


AR_STEPS = len(T.load(Path(ROOT) / "examples" / "traces" / "autoregressive.json").steps)


@pytest.mark.slow
@pytest.mark.parametrize("step, shown", [
    ("²", 0), ("٣", 0), ("-1", 0), ("abc", 0), ("1.5", 0), ("", 0), ("9" * 5000, AR_STEPS - 1),
    ("99999999999999999999", AR_STEPS - 1), (str(AR_STEPS), AR_STEPS - 1), (["2", "5"], 2),
])
def test_odd_step_parameters_warn_and_fall_back(step, shown, no_model):
    at = _open({"trace": "autoregressive", "step": step})
    assert at.warning, "an odd ?step= should say what was done with it"
    assert at.session_state["runner_replay"].cursor == shown
    assert at.get("plotly_chart")


def test_a_good_step_parameter_opens_that_step_quietly(no_model):
    at = _open({"trace": "autoregressive", "step": " 3 "})
    assert not at.warning
    assert at.session_state["runner_replay"].cursor == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nope", "../../etc/passwd", "x" * 10000, "<img src=x onerror=alert(1)>",
                                  ["jacobi", "lookahead"]])
def test_odd_trace_parameters_warn_and_fall_back(name, no_model):
    at = _open({"trace": name, "step": "1"})
    assert at.warning
    assert "<img" not in " ".join(w.value for w in at.warning)
    assert at.selectbox(key="replay_example").value in (
        "jacobi", sorted(p.stem for p in EXAMPLES)[0])
    assert at.session_state["runner_replay"].cursor == 1


def test_replay_starts_no_worker_thread(no_model):
    import threading
    import time
    from engine.runner import TraceView
    before = threading.active_count()
    t = time.perf_counter()
    at = _open({"trace": "kv_h2o", "step": "2"})
    assert time.perf_counter() - t < 5, "a trace should load without waiting for a worker"
    assert isinstance(at.session_state["runner_replay"], TraceView)
    assert not any(th.name == "decoding-worker" for th in threading.enumerate())
    assert threading.active_count() <= before + 1  # AppTest's own script thread at most


# ---- a hostile trace: every string shown literally ---------------------------------------------
PROMPT = "![x](http://example.invalid/p.png) <img src=x onerror=alert(1)> **bold**"
HOSTILE = ["<b>", "[link](http://x)", "![i](http://example.invalid/i.png)", "<img src=x onerror=alert(1)>",
           "**bold**", "`rule`", "a\r\n\r\n![x](http://example.invalid/q.png)", "</div><img src=y>"]
KEEP = {"kind", "status", "state", "phase", "variant"}  # values the views branch on


def hostile(obj, key=None, turn=itertools.count()):
    """The trace with every string replaced by markup, in turn (keys and the enum-like fields kept)."""
    if isinstance(obj, dict):
        return {k: hostile(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [hostile(v, key) for v in obj]
    if isinstance(obj, str) and key not in KEEP:
        return HOSTILE[next(turn) % len(HOSTILE)]
    return obj


def hostile_trace(path) -> dict:
    d = hostile(json.loads(Path(path).read_text()))
    d["meta"].update(prompt=PROMPT, method="ar **m** <img src=x>", model="[m](http://example.invalid/m)")
    return d


def _unescaped_markup(body: str) -> list[str]:
    return [what for what, pattern in (("<img", r"<img"), ("<b>", r"<b>"), ("a markdown link", r"(?<!\\)\]\("),
                                       ("bold", r"(?<!\\)\*\*bold")) if re.search(pattern, body)]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_hostile_trace_renders_literally(path, no_model):
    data = json.dumps(hostile_trace(path)).encode()
    T.loads(data)  # still a valid trace
    at = app_test("pages/7_Replay.py")
    at.run()
    at.radio(key="replay_source").set_value("upload").run()
    at.file_uploader(key="replay_upload").set_value(("evil.json", data, "application/json")).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    bodies = [el.value for group in (at.markdown, at.caption, at.warning, at.info) for el in group]
    assert any(r"\!\[x\]\(http\://example\.invalid/p\.png\)" in b for b in bodies), "the prompt is shown, escaped"
    for body in bodies:
        assert not _unescaped_markup(body), (_unescaped_markup(body), body[:300])
    charts = [el.proto.spec for el in at.get("plotly_chart")]
    assert charts
    for spec in charts:
        assert "<img" not in spec and "\\u003cimg" not in spec and "<b>[" not in spec


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_html_builders_escape_trace_text(path):
    from viz import ar, diffusion, jacobi, kv, speculative
    tr = T.loads(json.dumps(hostile_trace(path)))
    steps, last = tr.steps, len(tr.steps) - 1
    builders = {"ar": lambda: ar.token_stream_html(steps, last), "kv": lambda: kv.tokens_html(steps, last),
                "speculative": lambda: speculative.stream_html(steps, last),
                "jacobi": lambda: jacobi.token_stream_html(steps, last),
                "lookahead": lambda: jacobi.token_stream_html(steps, last),
                "diffusion": lambda: diffusion.text_html(steps[last])}
    html = builders[steps[0]["kind"]]()
    assert "&lt;img" in html or "&lt;b&gt;" in html or "&#91;" in html, "the hostile text is there, escaped"
    assert set(re.findall(r"<\s*([a-zA-Z]+)", html)) <= {"div", "span", "br"}
    assert "](" not in html and "\r" not in html and "\n\n" not in html


def test_an_invalid_upload_names_step_and_field(no_model):
    d = json.loads((Path(ROOT) / "examples" / "traces" / "speculative_prompt_lookup.json").read_text())
    d["steps"][2]["nodes"][2]["parent"] = 7
    at = app_test("pages/7_Replay.py")
    at.run()
    at.radio(key="replay_source").set_value("upload").run()
    at.file_uploader(key="replay_upload").set_value(("bad.json", json.dumps(d).encode(), "application/json")).run()
    assert not at.exception
    assert "step 2, nodes\\[2\\]\\.parent" in at.error[0].value


def test_a_trace_with_no_steps_says_so(no_model):
    d = json.loads((Path(ROOT) / "examples" / "traces" / "autoregressive.json").read_text())
    d["steps"] = []
    at = app_test("pages/7_Replay.py")
    at.query_params["step"] = "3"
    at.run()
    at.radio(key="replay_source").set_value("upload").run()
    at.file_uploader(key="replay_upload").set_value(("empty.json", json.dumps(d).encode(), "application/json")).run()
    assert not at.exception, at.exception
    assert any("no steps" in i.value for i in at.info)
