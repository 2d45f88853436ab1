"""Logit lens on AR steps and speculative rounds (their logit_lens option): each layer's output at the step's
position (a round's committed positions), read through the final norm and the LM head. The last layer's row is the model's own top-1 at every position; every row
equals the norm + head of that layer's output, taken from the layer itself (forward hooks, in the test only)."""
import json

import pytest
import torch

from engine import run, trace as T
from engine.errors import TraceError
from tests.conftest import make_tiny_lm
from viz import ar as vz
from viz import speculative as vz_spec


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lm(seed=4, layers=3)


def _layer_outputs(lm):
    """Hooks that keep every decoder layer's output at the last position of each forward."""
    seen, handles = [], []
    for i, layer in enumerate(lm.model.model.layers):
        def hook(mod, args, out, i=i):
            h = out[0] if isinstance(out, tuple) else out
            if i == 0:
                seen.append([])
            seen[-1].append(h[:, -1].detach().clone())
        handles.append(layer.register_forward_hook(hook))
    return seen, handles


def test_lens_rows_are_each_layer_through_norm_and_head(tiny, one_thread):
    seen, handles = _layer_outputs(tiny)
    try:
        tr = run.run(tiny, "ar", "Once upon a time", max_new_tokens=6, options={"logit_lens": True})
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(tr.steps)
    m = tiny.model
    for step, outs in zip(tr.steps, seen):
        lens = step["lens"]
        assert len(lens) == len(m.model.layers)
        with torch.inference_mode():
            p = m.lm_head(m.model.norm(torch.cat(outs))).float().softmax(-1)
        assert [r["id"] for r in lens] == p.argmax(-1).tolist()
        assert [r["p"] for r in lens] == pytest.approx(p.max(-1).values.tolist(), abs=1e-5)
        assert [r["p_chosen"] for r in lens] == pytest.approx(p[:, step["token_id"]].tolist(), abs=1e-5)
        assert lens[-1]["id"] == step["token_id"]          # greedy: the model's own top-1
        assert lens[-1]["p"] == pytest.approx(step["prob"], abs=1e-5)
    T.loads(tr.to_json())


def test_last_layer_is_the_models_top1_on_the_embedded_model(embedded_lm, one_thread):
    tr = run.run(embedded_lm, "ar", "What is the capital of France?", max_new_tokens=8, options={"logit_lens": True})
    plain = run.run(embedded_lm, "ar", "What is the capital of France?", max_new_tokens=8)
    assert tr.final_ids == plain.final_ids
    for s in tr.steps:
        assert len(s["lens"]) == embedded_lm.model.config.num_hidden_layers
        assert s["lens"][-1]["id"] == s["token_id"] == max(s["candidates"], key=lambda c: c["p_raw"])["id"]
        assert vz.lens_first_layer(s) is not None


def test_lens_only_when_asked(tiny, one_thread):
    assert "lens" not in run.run(tiny, "ar", "Hello", max_new_tokens=3).steps[0]
    assert "lens" not in run.run(tiny, "ar", "Hello", max_new_tokens=3, options={"logit_lens": True},
                                 record=False).steps[0]


def test_lens_figure_escapes_and_marks(tiny, one_thread):
    tr = run.run(tiny, "ar", "Once upon a time", max_new_tokens=5, options={"logit_lens": True})
    obj = json.loads(tr.to_json())
    for s in obj["steps"]:
        s["lens"][0]["text"] = "<img src=x onerror=alert(1)>"
    tr = T.loads(json.dumps(obj))
    fig = vz.lens_figure(tr.steps, len(tr.steps) - 1)
    blob = json.dumps(fig.to_plotly_json(), default=str)
    assert "<img" not in blob and "&lt;img" in blob
    assert len(fig.data[0].z) == 3 and len(fig.data[0].z[0]) == len(tr.steps)
    assert list(fig.data[1].y) == [vz.lens_first_layer(s) for s in tr.steps]


# ---- speculative rounds: one lens column per committed token, from the verification forward's rows ----------
SPEC_CASES = [({"drafter": "early_exit", "exit_layer": 1, "tree": "2.2"}, None),
              ({"drafter": "trigram"}, None)]


@pytest.mark.parametrize("options", [o for o, _ in SPEC_CASES])
def test_speculative_lens_equals_the_ar_lens_token_for_token(tiny, one_thread, options):
    ar = run.run(tiny, "ar", "Once upon a time", max_new_tokens=10, options={"logit_lens": True})
    sp = run.run(tiny, "speculative", "Once upon a time", max_new_tokens=10, options={**options, "logit_lens": True})
    assert sp.final_ids == ar.final_ids
    cols = [c for s in sp.steps for c in s["lens"]]
    assert len(cols) == len(ar.steps) and all(len(s["lens"]) == len(s["new_ids"]) for s in sp.steps)
    for a, c in zip(ar.steps, cols):
        assert [r["id"] for r in c] == [r["id"] for r in a["lens"]]
        assert [r["p"] for r in c] == pytest.approx([r["p"] for r in a["lens"]], abs=1e-4)
        assert c[-1]["id"] == a["token_id"]       # the last layer's row: the model's own top-1 (greedy)
    T.loads(sp.to_json())
    fig = vz_spec.lens_figure(sp.steps, len(sp.steps) - 1)
    assert len(fig.data[0].z[0]) == len(cols)


def test_speculative_lens_on_the_embedded_model(embedded_lm):
    sp = run.run(embedded_lm, "speculative", "What is the capital of France?", max_new_tokens=10,
                 options={"drafter": "prompt_lookup", "logit_lens": True})
    for s in sp.steps:
        for tok, rows in zip(s["new_ids"], s["lens"]):
            assert len(rows) == embedded_lm.model.config.num_hidden_layers and rows[-1]["id"] == tok


def test_speculative_lens_only_when_asked_and_checked(tiny, one_thread):
    assert "lens" not in run.run(tiny, "speculative", "Hello", max_new_tokens=3, options={"drafter": "trigram"}).steps[0]
    sp = run.run(tiny, "speculative", "Hello", max_new_tokens=4, options={"drafter": "trigram", "logit_lens": True})
    obj = json.loads(sp.to_json())
    obj["steps"][0]["lens"] = obj["steps"][0]["lens"] * 3
    obj["steps"][0]["new_ids"] = obj["steps"][0]["new_ids"][:1]
    obj["steps"][0]["lens"] = obj["steps"][0]["lens"][:2]
    with pytest.raises(TraceError, match="positions for 1 committed tokens"):
        T.loads(json.dumps(obj))
