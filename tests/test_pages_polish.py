"""Pages that tell the truth (issue 30): Replay's messages, address bar and playback; the home page's model in
the address bar (offered, never loaded silently); number boxes that say why a typed value was refused; chart
titles that fit and figures that work on a dark page; the figures' HTML export.

AppTest only, no model: the home page's loader is replaced by a fake that records what it was asked to load.
"""
import json
from pathlib import Path

import pytest

from engine import models, trace as T
from tests.conftest import ROOT, app_test, shown

EXAMPLES = sorted((Path(ROOT) / "examples" / "traces").glob("*.json"))
AR = Path(ROOT) / "examples" / "traces" / "autoregressive.json"
AR_STEPS = len(T.load(AR).steps)


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("replay must not load a model")
    monkeypatch.setattr(models, "load", refuse)


def _replay(params: dict | None = None):
    at = app_test("pages/7_Replay.py")
    for k, v in (params or {}).items():
        at.query_params[k] = v
    return at.run()


def _qp(at, name: str):
    """A URL parameter's value after a run (AppTest keeps a list for a value the test gave, a string for one the
    page wrote)."""
    v = at.query_params.get(name)
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def _upload(at, data: bytes, name: str = "mine.json"):
    at.radio(key="replay_source").set_value("upload").run()
    at.file_uploader(key="replay_upload").set_value((name, data, "application/json")).run()
    assert not at.exception, at.exception
    return at


# ---- Replay: what was asked for and what is shown ---------------------------------------------------
def test_unknown_trace_says_what_is_shown_instead(no_model):
    at = _replay({"trace": "no_such_trace", "step": "2"})
    msgs = shown(at.warning)
    shown_name = at.selectbox(key="replay_example").value
    assert any("no_such_trace" in m and f"showing {shown_name}" in m for m in msgs), msgs
    assert _qp(at, "trace") == shown_name, "the address bar names the trace shown"


@pytest.mark.slow
@pytest.mark.parametrize("step, cursor, words", [("abc", 0, "showing step 0"), ("-4", 0, "showing step 0"),
                                                 ("1.5", 0, "showing step 0"),
                                                 (str(AR_STEPS + 7), AR_STEPS - 1, "last step is shown")])
def test_odd_step_says_which_step_is_shown(step, cursor, words, no_model):
    at = _replay({"trace": "autoregressive", "step": step})
    assert any(words in m for m in shown(at.warning)), shown(at.warning)
    assert at.session_state["runner_replay"].cursor == cursor
    assert _qp(at, "step") == str(cursor), "the address bar names the step shown"


def test_the_address_bar_follows_the_example_and_step(no_model):
    at = _replay({"trace": "autoregressive", "step": "3"})
    assert not at.warning
    at.button(key="runner_replay_fwd").click().run()
    assert _qp(at, "trace") == "autoregressive" and _qp(at, "step") == "4"
    other = [p.stem for p in EXAMPLES if p.stem != "autoregressive"][0]
    at.selectbox(key="replay_example").set_value(other).run()
    assert _qp(at, "trace") == other
    assert at.session_state["runner_replay"].cursor == 0, "another example starts at its first step"
    assert _qp(at, "step") == "0" and not at.warning


def test_an_uploaded_trace_is_not_linked_as_an_example(no_model):
    at = _replay({"trace": "autoregressive", "step": "3"})
    data = (Path(ROOT) / "examples" / "traces" / "jacobi.json").read_bytes()
    _upload(at, data)
    r = at.session_state["runner_replay"]
    assert r.trace.meta["method"] == T.loads(data).meta["method"]
    assert "trace" not in at.query_params, "a copied link must not open the autoregressive example"
    assert _qp(at, "source") == "upload" and _qp(at, "step") == str(r.cursor)
    assert any("uploaded trace stays in this browser session" in c for c in shown(at.caption))
    at.button(key="runner_replay_fwd").click().run()
    assert _qp(at, "step") == str(r.cursor)


def test_a_link_to_an_upload_explains_and_opens_the_file_at_its_step(no_model):
    at = _replay({"source": "upload", "step": "4"})
    assert at.radio(key="replay_source").value == "upload"
    infos = shown(at.info)
    assert any("upload the same file here to see it at step 4" in i for i in infos), infos
    at.file_uploader(key="replay_upload").set_value(("t.json", AR.read_bytes(), "application/json")).run()
    assert not at.exception
    assert at.session_state["runner_replay"].cursor == 4
    assert not any("upload the same file" in i for i in shown(at.info))


# ---- Replay: playback, no Cancel ----------------------------------------------------------------------
def test_replay_offers_playback_not_resume_or_cancel(no_model):
    at = _replay({"trace": "autoregressive", "step": "2"})
    labels = [b.label for b in at.button]
    assert "▶ Play" in labels
    assert not any(lab in ("Resume", "Cancel", "Pause") for lab in labels), labels
    speed = at.select_slider(key="replay_speed")
    assert speed.value == 1.0 and {"0.5 steps/s", "8 steps/s"} <= set(speed.options), speed.options
    at.select_slider(key="replay_speed").set_value(4.0)
    at.button(key="runner_replay_play").click().run()
    assert at.session_state["replay_playing"] is True
    assert at.button(key="runner_replay_play").label == "⏸ Pause"
    assert any("playing at 4 steps/s" in m.value for m in at.markdown)
    assert at.session_state["runner_replay"].cursor == 2, "a full page run does not step; the timer does"
    at.button(key="runner_replay_fwd").click().run()     # a manual step pauses playback
    assert at.session_state["replay_playing"] is False
    assert at.session_state["runner_replay"].cursor == 3
    assert at.button(key="runner_replay_play").label == "▶ Play"


def test_play_at_the_last_step_starts_from_the_first(no_model):
    at = _replay({"trace": "autoregressive", "step": str(AR_STEPS - 1)})
    at.button(key="runner_replay_play").click().run()
    assert at.session_state["runner_replay"].cursor == 0 and at.session_state["replay_playing"]
    at.button(key="runner_replay_play").click().run()
    assert at.session_state["replay_playing"] is False


def test_replay_downloads_exist_and_build_on_click_only(no_model, monkeypatch):
    from viz import export
    calls = []
    monkeypatch.setattr(export, "trace_html", lambda *a, **k: calls.append(a) or "")
    at = _replay({"trace": "kv_h2o", "step": "1"})
    assert not at.exception
    assert not calls, "the figures' HTML is built when the download is clicked, not on every run"


# ---- figure export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_figures_export_as_one_html_file(path):
    from viz import export
    tr = T.load(path)
    figs = export.step_figures(tr, 1)
    assert len(figs) >= 2
    html = export.trace_html(tr, 1)
    assert html.startswith("<!DOCTYPE html>") and html.count("Plotly.newPlot") == len(figs)
    assert html.count("plotly.js v") <= 2, "plotly.js is embedded once"


# ---- chart titles, secondary axes, theme ----------------------------------------------------------------
def _all_figures():
    from viz import export, kv
    out = []
    for path in EXAMPLES:
        tr = T.load(path)
        for cur in sorted({0, len(tr.steps) // 2, len(tr.steps) - 1}):
            out += [(f"{path.stem}@{cur}:{name}", fig) for name, fig in export.step_figures(tr, cur)]
    bench = json.loads((Path(ROOT) / "benchmarks" / "results_kv.json").read_text())
    out.append(("kv quality benchmark", kv.quality_figure(bench["quality"])))
    return out


@pytest.mark.slow
def test_no_chart_title_is_longer_than_fits():
    """Plotly does not wrap a title: a line longer than the figure is cut at its edge ("...omitte")."""
    from viz import layout as L
    for name, fig in _all_figures():
        lines = L.title_lines(fig)
        assert lines and lines[0], name
        assert len(lines[0]) <= L.TITLE_CHARS, (name, lines[0])
        for ln in lines:
            assert len(ln) <= max(L.TITLE_CHARS, L.SUBTITLE_CHARS), (name, ln)
        assert (fig.layout.margin.t or 0) >= 16 + 20 * len(lines) - 4 * (len(lines) - 1), (name, "room for it")


@pytest.mark.slow
def test_figures_are_theme_aware():
    """Transparent backgrounds (the theme's shows through); no white cells for a page that is dark."""
    for name, fig in _all_figures():
        assert fig.layout.paper_bgcolor in ("rgba(0,0,0,0)", None), name
        assert fig.layout.plot_bgcolor != "#FFFFFF", name
        for tr in fig.data:
            scale = getattr(tr, "colorscale", None) or ()
            assert not any(str(c).upper() in ("#FFFFFF", "WHITE") for _, c in scale), (name, "a white cell")


@pytest.mark.slow
def test_secondary_axes_have_ticks_of_their_own():
    """plotly's default for an overlaying axis ("sync") gives ticks like 0.076 / 0.301 / 0.526."""
    for name, fig in _all_figures():
        y2 = fig.layout.to_plotly_json().get("yaxis2")
        if y2 and y2.get("overlaying"):
            assert y2.get("tickmode") == "auto", name


def test_kv_policies_have_distinct_colours():
    from viz import kv
    bench = json.loads((Path(ROOT) / "benchmarks" / "results_kv.json").read_text())
    fig = kv.quality_figure(bench["quality"])
    colours = {t.name: t.line.color for t in fig.data if t.showlegend is not False}
    assert len(set(colours.values())) == len(colours), colours


def test_legend_swatches_have_a_border_on_any_background():
    from viz import diffusion, legend
    html = legend.legend_html(diffusion.grid_legend())
    assert html.count("border:1px solid") == len(diffusion.grid_legend()) and "box-shadow" in html


def test_grid_text_grows_when_the_cells_allow():
    from viz import layout as L
    assert L.grid_text(12) == (14, 6) and L.grid_text(32) == (10, 4) and L.grid_text(64) == (9, 3)
    assert L.grid_text(20)[0] > 10


# ---- home page: the model in the address bar ----------------------------------------------------------------
class _Handle:
    device, dtype = "cpu", "float32"
    info = {"params": 1e8, "layers": 2, "vocab": 100}

    def __init__(self, name):
        self.name = name


@pytest.fixture
def loads(monkeypatch):
    """The home page's loader, faked: it records (name, trust_remote_code); only the embedded model loads."""
    from ui import common
    asked = []

    def load(name, trust, placement=None):
        asked.append((name, trust))
        if name != models.EMBEDDED:
            raise models.ModelLoadError(f"Model '{name}' was not found.")
        return _Handle(name)
    monkeypatch.setattr(common, "_load_model", load)
    return asked


def _home(params: dict | None = None):
    at = app_test("app.py")
    for k, v in (params or {}).items():
        at.query_params[k] = v
    return at.run()


def test_home_is_named_home_and_loads_the_embedded_model(loads):
    at = _home()
    assert not at.exception
    assert at.title[0].value == "The decoding lab" and at.success
    assert loads == [(models.EMBEDDED, False)]
    assert "model" not in at.query_params, "the embedded model needs no parameter"
    src = (Path(ROOT) / "app.py").read_text()
    assert 'title="Home"' in src and "st.navigation" in src


def test_a_linked_model_is_offered_never_loaded_silently(loads):
    at = _home({"model": "HuggingFaceTB/SmolLM2-360M-Instruct", "trust_remote_code": "true"})
    assert not at.exception
    assert all(name == models.EMBEDDED for name, _ in loads), "nothing from the link before a click"
    assert any("This link asks for the model" in w for w in shown(at.warning))
    assert _qp(at, "model") == "HuggingFaceTB/SmolLM2-360M-Instruct", "the offer keeps the link"
    at.button(key="lab_link_load").click().run()
    assert loads[-1] == ("HuggingFaceTB/SmolLM2-360M-Instruct", False), "a link never sets trust_remote_code"
    assert any("Could not load the model" in e for e in shown(at.error))
    assert _qp(at, "model") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    at.button(key="lab_model_back").click().run()       # the way back after a failed load
    assert loads[-1] == (models.EMBEDDED, False) and at.success and not at.error
    assert "model" not in at.query_params
    assert at.text_input(key="home_model_input").value == models.EMBEDDED


def test_keeping_the_current_model_drops_the_links_offer(loads):
    at = _home({"model": "some-org/some-model"})
    at.button(key="lab_link_keep").click().run()
    assert not any("This link asks" in w for w in shown(at.warning))
    assert "model" not in at.query_params and all(n == models.EMBEDDED for n, _ in loads)


def test_a_chosen_model_goes_into_the_address_bar(loads):
    at = _home()
    at.text_input(key="home_model_input").input("my-org/my-model")
    at.button(key="home_load").click().run()
    assert loads[-1] == ("my-org/my-model", False)
    assert _qp(at, "model") == "my-org/my-model", "a reload or a shared link keeps it"


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["<img src=x onerror=alert(1)>", "../../../etc", "x" * 300, "a b",
                                 "![x](http://example.invalid/p.png)", "org/model?revision=evil"])
def test_a_hostile_linked_model_is_refused_with_a_reason(bad, loads):
    at = _home({"model": bad})
    assert not at.exception
    msgs = shown(at.warning)
    assert any("which is not loaded" in m for m in msgs), msgs
    assert not [b for b in at.button if b.key == "lab_link_load"], "no button to load it"
    assert all(name == models.EMBEDDED for name, _ in loads)
    assert "<img" not in " ".join(w.value for w in at.warning)
    assert "model" not in at.query_params


# ---- number boxes: a refused value says why ------------------------------------------------------------
def _numbers_app():
    import streamlit as st
    from ui.options import max_new_tokens_widget, option_widgets
    st.session_state["max_new"] = max_new_tokens_widget("t", 64, container=st.container())
    st.session_state["opts"] = option_widgets("kv", "t", st.container(), only=("budget", "window_size"))


@pytest.mark.parametrize("key, typed, kept, allowed", [("t_max_new", 0, 64, "1..1024"),
                                                       ("t_max_new", -5, 64, "1..1024"),
                                                       ("t_max_new", 5000, 64, "1..1024"),
                                                       ("t_budget", 0, 48, "1..16384")])
def test_an_out_of_range_number_is_refused_with_the_allowed_range(key, typed, kept, allowed):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_function(_numbers_app, default_timeout=60).run()
    assert allowed in at.number_input(key=key).help, "the widget's help says what is allowed"
    at.number_input(key=key).set_value(typed).run()
    assert not at.exception
    msgs = shown(at.warning)
    assert any(f"{typed} was refused" in m and allowed in m and f"Kept {kept}" in m for m in msgs), msgs
    assert at.number_input(key=key).value == kept
    value = at.session_state["max_new"] if key == "t_max_new" else at.session_state["opts"]["budget"]
    assert value == kept
    at.number_input(key=key).set_value(12).run()
    assert not at.warning, "a good value clears the message"
    value = at.session_state["max_new"] if key == "t_max_new" else at.session_state["opts"]["budget"]
    assert value == 12
