"""AppTest: the Autoregressive page's "Re-warp the recorded steps" (ui/rewarp.py): exact with record_logits, over
the candidates without (the page says which); top-k 1 marks every step whose taken token was not the most likely
one, and the numbers are engine.rewarp's."""
from engine import rewarp
from engine.runner import DONE
from engine.sampling import SamplingConfig
from tests.conftest import app_test, shown, wait_done


def _run(at, record_logits: bool):
    at.text_area(key="ar_prompt").input("Name a fruit.")
    at.number_input(key="ar_max_new").set_value(8)
    at.checkbox(key="ar_ignore_eos").check()
    if record_logits:
        at.checkbox(key="ar_record_logits").check()
    at.radio(key="ar_mode").set_value("sample").run()
    at.slider(key="ar_temp").set_value(1.5)
    at.number_input(key="ar_seed").set_value(3)
    at.button(key="ar_go").click().run()
    r = wait_done(at, "runner_ar")
    at.run()
    assert r.state == DONE and not at.exception
    return r


def test_rewarp_expander_exact_and_marks(embedded_lm):
    at = app_test("pages/1_Autoregressive.py").run()
    r = _run(at, record_logits=True)
    md = "".join(m.value for m in at.markdown)
    assert "**Exact**" in md
    at.number_input(key="ar_rw_k").set_value(1).run()
    assert not at.exception and not at.error, shown(at.error)
    want = rewarp.trace_steps(r.trace.steps, SamplingConfig(temperature=1.0, top_k=1))
    n_diff = sum(x["choice"] != s["token_id"] for s, x in zip(r.trace.steps, want))
    md = "".join(m.value for m in at.markdown)
    assert f"differs from the token taken at **{n_diff}** of 8 steps" in md
    assert f"**{n_diff}** taken tokens would be filtered out" in md        # top-k 1: every such token is cut
    assert n_diff >= 1        # temperature 1.5 took some token that was not the most likely
    assert at.get("plotly_chart") and not at.exception


def test_rewarp_expander_over_the_candidates(embedded_lm):
    at = app_test("pages/1_Autoregressive.py").run()
    _run(at, record_logits=False)
    at.number_input(key="ar_rw_p").set_value(0.5).run()
    md = "".join(m.value for m in at.markdown)
    assert "**Approximate**" in md and "record_logits" in md and not at.exception


def test_the_rewarp_stream_escapes_token_texts():
    from viz import rewarp as vr
    steps = [{"kind": "ar", "index": 0, "token_id": 5, "token_text": '<img src=x onerror="alert(1)">'}]
    html = vr.stream_html(steps, [{"exact": True, "choice": 6, "chosen_p": 0.0, "candidates": []}], 0)
    assert "<img" not in html and "&lt;img" in html and "line-through" in html
