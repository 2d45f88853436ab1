"""Cautious next-token prediction (engine/methods/cautious.py): equal to a reference written here from the
paper's algorithm (full forwards, one trial at a time), one trial per step equal to ordinary decoding (greedy
and seeded sampling), the trial schedule, bad options refused before any forward, hostile step records
refused, the Search page runs it and draws its trials, trace text escaped in the figures."""
import json
import math

import pytest
import torch

from engine import run, trace as T
from engine.errors import OptionError, TraceError
from engine.methods.cautious import n_trials, stop_ids
from engine.runner import DONE
from engine.sampling import SamplingConfig
from tests.conftest import app_test, make_tiny_lm, wait_done
from viz import cautious as vz


def reference(lm, prompt: str, n_new: int, max_trials: int, low: float, high: float, max_trial: int) -> list[int]:
    """Greedy CNTP: entropy of p(. | x) sets N; N > 1: the N likeliest first tokens, each continued greedily (one
    full forward of the whole sequence per token) to a punctuation / EOS / max_trial tokens / the budget; the
    trial with the lowest exp(-mean log p) is committed."""
    stops, eos = stop_ids(lm.tokenizer), lm.eos_ids
    ids = lm.encode(prompt)[0].tolist()
    out: list[int] = []

    def p_next(seq):
        with torch.no_grad():
            return lm.model(input_ids=torch.tensor([seq])).logits[0, -1].float().softmax(-1)
    while len(out) < n_new:
        p = p_next(ids + out)
        h = float(-(p * p.clamp_min(1e-30).log()).sum())
        n = int(1 + (max_trials - 1) * min(1.0, max(0.0, (h - low) / (high - low))))
        if n <= 1:
            trial = [int(p.argmax())]
        else:
            budget = min(max_trial, n_new - len(out))
            best, best_ppl = None, math.inf
            for t0 in torch.topk(p, n).indices.tolist():
                trial, logp = [t0], [math.log(float(p[t0]))]
                while not (trial[-1] in eos or trial[-1] in stops or len(trial) >= budget):
                    q = p_next(ids + out + trial)
                    trial.append(int(q.argmax()))
                    logp.append(math.log(float(q[trial[-1]])))
                ppl = math.exp(-sum(logp) / len(logp))
                if ppl < best_ppl:
                    best, best_ppl = trial, ppl
            trial = best
        for t in trial:
            if len(out) >= n_new:
                break
            out.append(t)
            if t in eos:
                return out
    return out


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lm(seed=7)


def test_trial_schedule_and_punctuation(tiny):
    assert [n_trials(h, 0.01, 1.5, 10) for h in (0.0, 0.01, 0.755, 1.5, 9.0)] == [1, 1, 5, 10, 10]
    stops = stop_ids(tiny.tokenizer)
    for text in (".", ",", "\n", "?", ")"):
        assert tiny.tokenizer.encode(text, add_special_tokens=False)[0] in stops
    for text in (" the", "cat", " blue"):
        assert tiny.tokenizer.encode(text, add_special_tokens=False)[0] not in stops


def test_one_trial_is_ordinary_decoding(tiny, one_thread):
    for cfg in (SamplingConfig(), SamplingConfig(temperature=0.9, top_p=0.9, seed=4)):
        ar = run.run(tiny, "ar", "Once upon a time", max_new_tokens=12, sampling=cfg)
        tr = run.run(tiny, "cautious", "Once upon a time", max_new_tokens=12, sampling=cfg, options={"max_trials": 1})
        assert tr.final_ids == ar.final_ids and not any(s["branched"] for s in tr.steps)


def test_equals_the_reference_on_a_tiny_model(tiny, one_thread):
    o = {"max_trials": 4, "entropy_low": 0.0, "entropy_high": 8.0, "max_trial_tokens": 4}
    tr = run.run(tiny, "cautious", "Once upon a time", max_new_tokens=14, options=o)
    assert tr.final_ids == reference(tiny, "Once upon a time", 14, 4, 0.0, 8.0, 4)
    assert any(s["branched"] for s in tr.steps)
    for s in tr.steps:
        assert s["n_trials"] == len(s["trials"]) and s["new_ids"] == s["trials"][s["chosen"]]["ids"][: len(s["new_ids"])]
        ppls = [t["ppl"] for t in s["trials"]]
        assert s["trials"][s["chosen"]]["ppl"] == min(ppls)
    T.loads(tr.to_json())


def test_equals_the_reference_on_the_embedded_model(embedded_lm):
    prompt = "Name a colour."
    o = {"max_trials": 3, "max_trial_tokens": 6}
    tr = run.run(embedded_lm, "cautious", prompt, max_new_tokens=12, options=o)
    assert tr.final_ids == reference(embedded_lm, prompt, 12, 3, 0.01, 1.5, 6)
    s = tr.extra["summary"]
    assert s["branching_steps"] == sum(x["branched"] for x in tr.steps)
    assert tr.counters.generated_tokens == len(tr.final_ids)


def test_sampled_trials_are_seeded_and_respect_the_budget(tiny, one_thread):
    cfg = SamplingConfig(temperature=1.0, seed=2)
    o = {"max_trials": 5, "entropy_low": 0.0, "entropy_high": 2.0, "max_trial_tokens": 5}
    a = run.run(tiny, "cautious", "Hi", max_new_tokens=9, sampling=cfg, options=o)
    b = run.run(tiny, "cautious", "Hi", max_new_tokens=9, sampling=cfg, options=o)
    assert a.final_ids == b.final_ids and len(a.final_ids) <= 9
    assert all(len(t["ids"]) <= 5 for s in a.steps for t in s["trials"])


@pytest.mark.parametrize("options,match", [
    ({"entropy_low": 2.0, "entropy_high": 1.0}, r"entropy_high must be > entropy_low"),
    ({"max_trials": 0}, r"max_trials must be an integer in 1\.\.32"),
    ({"max_trials": 33}, r"max_trials must be an integer in 1\.\.32"),
    ({"max_trial_tokens": 0}, r"max_trial_tokens must be an integer in 1\.\.256"),
    ({"entropy_high": float("nan")}, r"entropy_high"),
])
def test_bad_options_refused_before_any_forward(tiny, options, match, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a forward ran")
    monkeypatch.setattr(tiny.model, "forward", boom)
    with pytest.raises(OptionError, match=match):
        run.prepare(tiny, "cautious", "Hello", max_new_tokens=4, options=options)


@pytest.fixture(scope="module")
def tiny_trace(tiny):
    o = {"max_trials": 4, "entropy_low": 0.0, "entropy_high": 8.0, "max_trial_tokens": 4}
    return json.loads(run.run(tiny, "cautious", "Once upon a time", max_new_tokens=8, options=o).to_json())


@pytest.mark.slow
@pytest.mark.parametrize("edit,match", [
    (lambda s: s.update(chosen=len(s["trials"])), r"must be a trial"),
    (lambda s: s.update(n_trials=s["n_trials"] + 1), r"trials but n_trials is"),
    (lambda s: s["trials"][0]["p"].append(0.5), r"probabilities for"),
    (lambda s: s.update(new_ids=[s["trials"][s["chosen"]]["ids"][0] + 1]), r"start of the chosen trial"),
])
def test_hostile_step_records_are_refused(tiny_trace, edit, match):
    obj = json.loads(json.dumps(tiny_trace))
    edit(obj["steps"][0])
    with pytest.raises(TraceError, match=match):
        T.loads(json.dumps(obj))


def test_figures_escape_trace_text(tiny_trace):
    obj = json.loads(json.dumps(tiny_trace))
    for s in obj["steps"]:
        s["new_text"] = "<img src=x onerror=alert(1)>"
        for t in s["trials"]:
            t["text"] = "<img src=x onerror=alert(1)>"
    tr = T.loads(json.dumps(obj))
    cur = len(tr.steps) - 1
    for fig in (vz.trials_figure(tr.steps[0]), vz.entropy_figure(tr.steps, cur, 0.0, 8.0)):
        blob = json.dumps(fig.to_plotly_json(), default=str)
        assert "<img" not in blob
    assert "<img" not in vz.stream_html(tr.steps, cur) and "&lt;img" in vz.stream_html(tr.steps, cur)


def test_search_page_runs_cautious_and_draws_its_trials(embedded_lm):
    at = app_test("pages/9_Search.py").run()
    at.selectbox(key="search_method").set_value("cautious").run()
    assert not at.exception
    at.number_input(key="cautious_max_new").set_value(10)
    at.number_input(key="cautious_max_trials").set_value(3)
    at.button(key="cautious_go").click().run()
    r = wait_done(at, "runner_cautious", 180)
    assert r.state == DONE and r.trace.steps[0]["kind"] == "cautious"
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3
    assert len(at.dataframe) >= 1          # the trials table of the step shown
