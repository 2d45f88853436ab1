"""Compare view: four families at once on the embedded model; identical-to-greedy is computed."""
import time

from engine import presets, quality, run
from tests.conftest import app_test


def test_first_divergence():
    assert quality.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert quality.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert quality.first_divergence([1, 2], [1, 2, 3]) == 2


def test_judged_perplexity_prefers_the_models_own_output(embedded_lm):
    lm = embedded_lm
    tr = run.run(lm, "ar", "Name three animals.", max_new_tokens=16)
    good = quality.judged_perplexity(lm, tr.meta["prompt_ids"], tr.final_ids)
    shuffled = list(reversed(tr.final_ids))
    bad = quality.judged_perplexity(lm, tr.meta["prompt_ids"], shuffled)
    assert 1.0 <= good < bad


def test_compare_four_families(embedded_lm):
    avail = presets.available()
    want = ["autoregressive", "prompt lookup (chain)", "lookahead (W5 N4 G5)", "KV H2O (budget 64)"]
    want = [w for w in want if w in avail]
    assert len(want) == 4, f"presets missing: {set(avail)}"
    at = app_test("pages/6_Compare.py").run()
    assert not at.exception
    at.multiselect(key="cmp_choice").set_value(want)
    at.number_input(key="cmp_max_new").set_value(16)
    at.button(key="cmp_go").click().run()
    assert not at.exception
    keys = at.session_state["cmp_keys"]
    assert len(keys) == 4
    end = time.time() + 300
    while time.time() < end and not all(at.session_state[k].finished for k in keys):
        time.sleep(0.2)
    at.run()
    assert not at.exception
    df = at.dataframe[0].value
    assert list(df["configuration"]) == want
    ident = dict(zip(df["configuration"], df["identical to greedy"]))
    assert ident["autoregressive"] == "yes"
    assert ident["prompt lookup (chain)"] == "yes"
    assert ident["lookahead (W5 N4 G5)"] == "yes"
    assert ident["KV H2O (budget 64)"] == "n/a (lossy)"
    assert df["judged perplexity"].notna().all()
    assert len(at.get("plotly_chart")) == 2
