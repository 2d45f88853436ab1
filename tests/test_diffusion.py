"""Masked diffusion sampler: agrees with a straightforward LLaDA reference step for step, every
rule terminates and commits >= 1 token per step, the prefix cache is exact where it must be."""
import json

import pytest
import torch

from engine import run
from engine.diffusion.adapters import DiffusionAdapter
from engine.methods import MethodError
from engine.sampling import SamplingConfig
from engine.trace import loads
from tests.conftest import make_tiny_lm

MASK = 16
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def lm():
    m = make_tiny_lm(seed=3)
    m.diffusion = DiffusionAdapter(m.model, MASK, shift=False, bidirectional=True, name="tiny-bidir",
                                   eos_ids=m.eos_ids)
    return m


def attach(m, **kw):
    m.diffusion = DiffusionAdapter(m.model, MASK, name="tiny", eos_ids=m.eos_ids, **kw)
    return m


# ---- the reference, written from METHODS.md section 4 (LLaDA generate.py) -----------------------
def reference_llada(model, prompt, steps, gen_length, block_length, temperature=0.0, remasking="low_confidence",
                    seed=0):
    """Returns x after every step. Bidirectional forward, no shift; Gumbel-max at temperature;
    low_confidence = softmax prob of x0; random = uniform score; even schedule per block."""
    g = torch.Generator().manual_seed(seed)
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), MASK, dtype=torch.long)
    x[:, :P] = prompt
    blocks = gen_length // block_length
    spb = steps // blocks
    history = []
    for b in range(blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        n = int((x[:, s:e] == MASK).sum())
        sched = [n // spb + (1 if i < n % spb else 0) for i in range(spb)]
        for i in range(spb):
            L = x.shape[1]
            full = torch.ones(1, 1, L, L, dtype=torch.bool)
            logits = model(input_ids=x, attention_mask=full).logits[0].double()
            logits[:, MASK] = float("-inf")
            if temperature == 0:
                x0 = logits.argmax(-1)
            else:  # LLaDA: exp(logits) / (-log u) ** T over the generated positions
                u = torch.rand(logits[P:].shape, generator=g, dtype=torch.float64).clamp(1e-20, 1)
                noisy = logits.clone()
                noisy[P:] = logits[P:] / temperature - torch.log(-torch.log(u))
                x0 = noisy.argmax(-1)
            p = torch.softmax(logits, -1)
            if remasking == "low_confidence":
                x0_p = p.gather(-1, x0[:, None])[:, 0]
            else:
                x0_p = torch.zeros(L, dtype=torch.float64)
                x0_p[P:] = torch.rand(L - P, generator=g, dtype=torch.float64)
            x0_p[e:] = float("-inf")
            x0_p[:s] = float("-inf")
            conf = torch.where(x[0] == MASK, x0_p, torch.tensor(float("-inf"), dtype=torch.float64))
            idx = torch.topk(conf, sched[i]).indices
            x[0, idx] = x0[idx]
            history.append(x[0, P:].tolist())
    return history


def engine_history(m, **opts):
    trace = run.run(m, "diffusion", PROMPT, max_new_tokens=opts.pop("gen_length"),
                    sampling=opts.pop("sampling", SamplingConfig()), options={"stop_at_eos": False, **opts})
    hist = []
    for st in trace.steps:
        hist.append([t if s != "mask" else MASK for s, t in zip(st["state"], st["tokens"])])
    return trace, hist


@pytest.mark.slow
@pytest.mark.parametrize("block_length,steps", [(16, 16), (16, 8), (4, 8), (8, 16)])
@pytest.mark.parametrize("rule", ["low_confidence", "random"])
def test_engine_matches_llada_reference(lm, rule, block_length, steps):
    trace, hist = engine_history(lm, gen_length=16, block_length=block_length, steps=steps, rule=rule)
    with torch.inference_mode():
        ref = reference_llada(lm.model, lm.encode(PROMPT), steps, 16, block_length, remasking=rule)
    assert hist == ref
    assert trace.counters.target_forwards == steps == len(trace.steps)


def test_engine_matches_reference_when_sampling(lm):
    cfg = SamplingConfig(temperature=0.8, seed=5)
    _, hist = engine_history(lm, gen_length=12, block_length=4, steps=6, rule="low_confidence", sampling=cfg)
    with torch.inference_mode():
        ref = reference_llada(lm.model, lm.encode(PROMPT), 6, 12, 4, temperature=0.8, seed=5)
    assert hist == ref


@pytest.mark.parametrize("rule,opts", [
    ("low_confidence", {}), ("random", {}), ("maskgit_plus", {}), ("topk_margin", {}), ("entropy", {}),
    ("threshold", {"threshold": 0.9}), ("threshold", {"threshold": 1.0}), ("prophet", {}),
    ("eos_ascending", {}), ("credit", {"threshold": 1.0}), ("credit", {}),
    ("local_leap", {"anchor": 1.0, "relaxed": 1.0}), ("local_leap", {}),
])
def test_every_rule_terminates_and_commits_each_step(lm, rule, opts):
    trace = run.run(lm, "diffusion", PROMPT, max_new_tokens=12,
                    options={"rule": rule, "block_length": 4, "steps": 6, "stop_at_eos": False, **opts})
    assert 1 <= len(trace.steps) <= 12
    for st in trace.steps:
        assert len(st["new_ids"]) >= 1
        lo, hi = st["block_range"]
        assert all(lo <= p < hi for p in st["new_positions"])  # commits stay in the current block
    last = trace.steps[-1]
    assert "mask" not in last["state"]
    assert len(trace.final_ids) == 12


class FakeModel(torch.nn.Module):
    """Logits from a fixed table per generated position: controlled confidences."""

    def __init__(self, table, prompt_len):
        super().__init__()
        self.table, self.P = table, prompt_len

    def forward(self, input_ids=None, attention_mask=None, **kw):
        L = input_ids.shape[1]
        out = torch.zeros(input_ids.shape[0], L, self.table.shape[1])
        out[:, self.P:] = self.table[: L - self.P]
        return type("O", (), {"logits": out})()


def fake_adapter(confs, prompt_len, vocab=32, eos=2):
    """Position i predicts token 10 + i with probability confs[i] (the rest spread evenly)."""
    table = torch.zeros(len(confs), vocab)
    for i, c in enumerate(confs):
        tok = eos if c == "eos" else 10 + i
        c = 0.99 if c == "eos" else c
        rest = (1 - c) / (vocab - 2)  # mask id 0 gets -inf in the adapter
        table[i] = torch.log(torch.full((vocab,), rest))
        table[i, tok] = torch.log(torch.tensor(c))
    return DiffusionAdapter(FakeModel(table, prompt_len), 0, shift=False, bidirectional=False, name="fake",
                            eos_ids={eos})


def run_fake(confs, rule, steps=0, block_length=0, stop_at_eos=True, **params):
    from engine.diffusion.sampler import diffuse
    prompt = torch.tensor([[5, 6, 7]])
    return list(diffuse(fake_adapter(confs, 3), prompt, gen_length=len(confs), block_length=block_length,
                        steps=steps, rule=rule, rule_params=params, stop_at_eos=stop_at_eos))


def test_threshold_commits_exactly_the_confident_positions():
    steps = run_fake([0.95, 0.5, 0.97, 0.3], "threshold", threshold=0.9)
    assert steps[0].committed.tolist() == [True, False, True, False]
    # nothing clears 0.9 afterwards: one per step, the most confident first
    assert [s.committed.nonzero()[:, 0].tolist() for s in steps[1:]] == [[1], [3]]


def test_threshold_one_still_progresses():
    steps = run_fake([0.95, 0.5, 0.97, 0.3], "threshold", threshold=1.0)
    assert [int(s.committed.sum()) for s in steps] == [1, 1, 1, 1]
    assert steps[0].committed.nonzero()[:, 0].tolist() == [2]


def test_local_leap_commits_neighbours_of_anchors():
    steps = run_fake([0.3, 0.7, 0.95, 0.65, 0.2, 0.7], "local_leap", anchor=0.9, relaxed=0.6, radius=1)
    assert steps[0].committed.tolist() == [False, True, True, True, False, False]


def test_prophet_commits_everything_once_the_gap_is_large():
    # all positions very confident: the logit gap is huge, everything commits in the first step
    steps = run_fake([0.999] * 6, "prophet", steps=6)
    assert len(steps) == 1 and bool(steps[0].committed.all())
    steps = run_fake([0.2] * 6, "prophet", steps=6)  # logit gap 2.0 < 2.5: never early
    assert len(steps) == 6


def test_eos_early_rejection_defers_eos():
    # EOS is the most confident prediction, but it is damped early: the other positions go first
    steps = run_fake([0.5, 0.6, "eos", 0.4], "eos_ascending", steps=4, stop_at_eos=False)
    first_eos_step = next(i for i, s in enumerate(steps) if bool(s.committed[2]))
    assert first_eos_step > 0
    steps = run_fake([0.5, 0.6, "eos", 0.4], "low_confidence", steps=4, stop_at_eos=False)
    assert bool(steps[0].committed[2])  # without the damping EOS is committed first


def test_stop_at_eos_ends_once_the_text_is_settled():
    steps = run_fake([0.9, "eos", 0.3, 0.2, 0.1, 0.1], "low_confidence", steps=6)
    assert len(steps) == 2 and steps[-1].done


@pytest.mark.slow
def test_prefix_cache_exact_for_causal_attention():
    for shift in (False, True):
        m = attach(make_tiny_lm(seed=1), shift=shift, bidirectional=False)
        a = run.run(m, "diffusion", PROMPT, max_new_tokens=16,
                    options={"block_length": 4, "steps": 8, "prefix_cache": True, "stop_at_eos": False})
        b = run.run(m, "diffusion", PROMPT, max_new_tokens=16,
                    options={"block_length": 4, "steps": 8, "stop_at_eos": False})
        assert a.final_ids == b.final_ids
        assert [s["tokens"] for s in a.steps] == [s["tokens"] for s in b.steps]
        assert a.counters.target_forwards == b.counters.target_forwards
        assert a.extra["summary"]["forwarded_tokens"] < b.extra["summary"]["forwarded_tokens"]


def test_prefix_cache_exact_with_one_step_per_block(lm):
    # every block is decoded by the block's first (full) forward: the cache is never used stale
    opts = {"block_length": 4, "steps": 4, "stop_at_eos": False, "rule": "low_confidence"}
    a = run.run(lm, "diffusion", PROMPT, max_new_tokens=16, options={**opts, "prefix_cache": True})
    b = run.run(lm, "diffusion", PROMPT, max_new_tokens=16, options=opts)
    assert a.final_ids == b.final_ids


def test_prefix_cache_on_bidirectional_model_saves_compute(lm):
    opts = {"block_length": 4, "steps": 16, "stop_at_eos": False}
    a = run.run(lm, "diffusion", PROMPT, max_new_tokens=16, options={**opts, "prefix_cache": True})
    b = run.run(lm, "diffusion", PROMPT, max_new_tokens=16, options=opts)
    assert a.counters.target_forwards == b.counters.target_forwards == 16
    assert a.extra["summary"]["forwarded_tokens"] < b.extra["summary"]["forwarded_tokens"]
    # the first block has no committed prefix beyond the prompt: identical there
    assert a.steps[3]["tokens"][:4] == b.steps[3]["tokens"][:4]


def test_cfg_and_shifted_adapter_run(lm):
    m = attach(make_tiny_lm(seed=2), shift=True, bidirectional=True)
    t = run.run(m, "diffusion", PROMPT, max_new_tokens=8, options={"steps": 8, "cfg_scale": 1.5})
    assert len(t.steps) >= 1 and t.counters.generated_tokens >= 1


def test_step_record_contents_and_trace_roundtrip(lm):
    t = run.run(lm, "diffusion", PROMPT, max_new_tokens=8, options={"block_length": 4, "steps": 4,
                                                                     "stop_at_eos": False})
    st = t.steps[0]
    assert st["kind"] == "diffusion" and st["block"] == 0 and st["block_range"] == [0, 4]
    assert st["state"].count("new") == 2 and st["state"].count("mask") == 6
    for s, c, sc in zip(st["state"], st["conf"], st["score"]):
        assert c is not None  # every position was masked before step 0: a ghost and its confidence
    assert all(sc is None for sc in st["score"][4:])   # outside the block: not a candidate
    assert st["events"] == [] and st["remasked"] == 2   # left masked, not remasked: nothing was un-committed
    assert st["nfe"] == 1 and st["new_text"] == lm.decode(st["new_ids"])
    assert t.steps[1]["state"][:4].count("committed") == 2
    back = loads(t.to_json())
    assert back.steps[2]["tokens"] == t.steps[2]["tokens"]
    assert t.extra["summary"]["steps"] == 4


@pytest.mark.parametrize("opts,msg", [
    ({"block_length": 5}, "divide"), ({"steps": 20}, "exceed"), ({"steps": 3, "block_length": 4}, "multiple"),
    ({"rule": "nope"}, "rule must be one of"), ({"rule": "threshold", "threshold": 0.0}, "threshold"),
    ({"cfg_scale": 1.0, "prefix_cache": True}, "prefix cache"),
])
def test_impossible_parameters_raise(lm, opts, msg):
    with pytest.raises(MethodError, match=msg):
        run.run(lm, "diffusion", PROMPT, max_new_tokens=16, options=opts)


def test_non_diffusion_model_is_refused():
    m = make_tiny_lm(seed=4)
    with pytest.raises(MethodError, match="not a masked diffusion"):
        run.run(m, "diffusion", PROMPT, max_new_tokens=8)


def test_viz_figures_from_step_records(lm):
    from viz import diffusion as vz
    from viz import legend
    t = run.run(lm, "diffusion", PROMPT, max_new_tokens=8, options={"block_length": 4, "steps": 8, "rule": "threshold",
                                                                     "stop_at_eos": False})
    steps = json.loads(t.to_json())["steps"]  # figures work from the saved JSON alone
    grid = vz.denoising_grid(steps, 2)
    heat = grid.data[0]
    assert len(heat.z) == 3 and len(heat.z[0]) == 8
    colours = {c for _, c in heat.colorscale}
    assert {legend.MASK, legend.COMMITTED_EARLIER} <= colours
    assert len(grid.layout.shapes) == 3  # the block outline of every row
    ghosts = grid.data[1]
    assert len(ghosts.text) == sum(s == "mask" for s in steps[0]["state"] + steps[1]["state"] + steps[2]["state"])
    conf = vz.confidence_figure(steps[0])
    assert len(conf.data[0].x) == 8 and any(s.type == "line" for s in conf.layout.shapes)
    assert vz.tokens_per_step_figure(steps, len(steps) - 1).data[0].y == tuple(len(s["new_ids"]) for s in steps)
    assert "▒" in vz.text_html(steps[0]) or legend.MASK in vz.text_html(steps[0])
    assert vz.summary(steps)["NFE"] == len(steps)


def synthetic_steps(n_steps: int, n: int = 16) -> list[dict]:
    """Step records of a one-token-per-step run over n positions, as the engine writes them."""
    steps, state = [], ["mask"] * n
    for i in range(n_steps):
        row = ["committed" if s != "mask" else "mask" for s in state]
        row[i % n] = "new"
        steps.append({"kind": "diffusion", "index": i, "state": row, "conf": [0.5] * n, "score": [0.5] * n,
                      "texts": [f"t{j}" for j in range(n)], "block_range": [0, n], "block": 0, "step_in_block": i,
                      "new_ids": [1], "remasked": 0, "threshold": None})
        state = ["committed" if s == "new" else s for s in row]
    return steps


def test_a_live_grid_labels_only_its_newest_rows():
    """While live, the grid's older rows are colour only (each label is a text node a browser lays out again at
    every redraw); the newest label_rows rows, and every row once the run pauses or ends, carry their tokens."""
    from viz import diffusion as vz
    steps = synthetic_steps(12)
    full = vz.denoising_grid(steps, 11)
    live = vz.denoising_grid(steps, 11, label_rows=3)
    labelled_rows = lambda fig: [i for i, row in enumerate(fig.data[0].text) if any(row)]  # noqa: E731
    assert labelled_rows(full) == list(range(12))
    assert labelled_rows(live) == [9, 10, 11]
    assert set(live.data[1].y) <= {9, 10, 11} and len(full.data[1].y) > len(live.data[1].y) > 0   # ghost text
    assert (live.data[0].z == full.data[0].z).all()                                                # same colours
    assert "tokens shown on the last 3 steps while live" in live.layout.title.text
    assert "while live" not in full.layout.title.text
    assert "while live" not in vz.denoising_grid(steps, 1, label_rows=3).layout.title.text  # every row labelled


def test_the_live_page_draws_the_light_grid(monkeypatch):
    """The Diffusion view asks for the lightly labelled grid while its run is live, the full one otherwise."""
    import logging
    from types import SimpleNamespace

    from engine.runner import DONE, RUNNING
    from engine.trace import Trace
    from ui import render_diffusion
    from viz import diffusion as vz
    asked = []
    real = vz.denoising_grid
    monkeypatch.setattr(vz, "denoising_grid", lambda *a, **k: asked.append(k.get("label_rows")) or real(*a, **k))
    logging.getLogger("streamlit").setLevel(logging.ERROR)   # widget calls outside a script run
    t = Trace(meta={"params": {"max_new_tokens": 16}})
    t.steps = synthetic_steps(12)
    render_diffusion.render(SimpleNamespace(trace=t, cursor=11, live=True, state=RUNNING, finished=False))
    render_diffusion.render(SimpleNamespace(trace=t, cursor=11, live=False, state=DONE, finished=True))
    assert asked == [render_diffusion.LIVE_LABEL_ROWS, None]
