"""Render-only tests: a figure or HTML view drawn for step `cur` of a long run draws a bounded number of
elements, and one refresh of a live page costs about the same at step 1000 as at step 10.

Long traces of every kind are short real runs of the tiny model, extended by copying their step records
(positions shifted so they stay a valid trace); the KV trace is built from the schema at the embedded
SmolLM2's shape (30 watched layers x 3 KV heads x group 3, ~1,100 positions). Times are printed
(pytest -s) and checked only against generous bounds; the element counts are checked against the views'
bounds (viz/window.py).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import re
import time

import plotly.io as pio
import pytest

from engine import run
from engine import trace as T
from engine.runner import TraceView
from tests.conftest import make_tiny_lm
from viz import window as W

PROMPT = "Once upon a time there was"
LONG = 1000          # steps of the ar / speculative / kv / jacobi / lookahead traces
DIFFUSION_N = 256    # positions and steps of the diffusion trace
EARLY = 10           # the "early" cursor the last step is compared with


# ---- long traces --------------------------------------------------------------------------------
def _cycle(steps: list[dict], n: int, shift) -> list[dict]:
    """n records: the real ones repeated, each copy passed through shift(record, cycle) with its index set."""
    out = []
    for i in range(n):
        rec = copy.deepcopy(steps[i % len(steps)])
        shift(rec, i // len(steps))
        rec["index"] = i
        out.append(rec)
    return out


def _finish(tr: T.Trace, steps: list[dict], check_every: int = 1) -> T.Trace:
    """The trace of these steps, checked by the schema (every `check_every`-th step: the records of one
    kind are made by one function, and checking 1,000 full-size KV records takes 15 s)."""
    tr.steps = steps
    tr.final_ids = [t for s in steps for t in s["new_ids"]]
    tr.final_text = "".join(s.get("new_text", "") for s in steps)
    tr.counters.generated_tokens = len(tr.final_ids)
    tr.counters.target_forwards = len(steps)
    sample = [{**s, "index": i} for i, s in enumerate(steps[::check_every])]
    T.from_dict({**tr.to_dict(), "steps": sample})  # a trace the views accept
    return tr


def _tokens(steps):
    return sum(len(s["new_ids"]) for s in steps)


def long_ar(lm) -> T.Trace:
    tr = run.run(lm, "ar", PROMPT, max_new_tokens=12)
    n = len(tr.steps)

    def shift(rec, cycle):
        rec["position"] += cycle * n
    return _finish(tr, _cycle(tr.steps, LONG, shift))


def long_speculative(lm) -> T.Trace:
    tr = run.run(lm, "speculative", PROMPT, max_new_tokens=16)
    return _finish(tr, _cycle(tr.steps, LONG, lambda rec, cycle: None))


def long_jacobi(lm) -> T.Trace:
    tr = run.run(lm, "jacobi", PROMPT, max_new_tokens=16)
    per_cycle = sum(s["committed"] for s in tr.steps)
    blocks = 1 + max([s["block_index"] for s in tr.steps if s.get("block_index") is not None], default=0)

    def shift(rec, cycle):
        d = cycle * per_cycle
        for k in ("block_start", "front", "next_start", "committed_total"):
            if k in rec:
                rec[k] += d
        rec["forced"] = [[j + d, a + d, b + d] for j, a, b in rec.get("forced", [])]
        if rec.get("block_index") is not None:
            rec["block_index"] += cycle * blocks
    return _finish(tr, _cycle(tr.steps, LONG, shift))


def long_lookahead(lm) -> T.Trace:
    tr = run.run(lm, "lookahead", PROMPT, max_new_tokens=16)
    per_cycle = sum(s.get("committed", 0) for s in tr.steps)

    def shift(rec, cycle):
        d = cycle * per_cycle
        rec["base"] += d
        rec["committed_total"] = rec.get("committed_total", 0) + d
        for lv in rec["window"]:
            lv["positions"] = [p + d if p >= 0 else p for p in lv["positions"]]
    return _finish(tr, _cycle(tr.steps, LONG, shift))


def long_kv(lm, steps: int = LONG, prompt_len: int = 100, layers: int = 30, kv_heads: int = 3, group: int = 3,
            budget: int = 256) -> T.Trace:
    """KV records at the embedded model's shape, from the schema: every watched layer and head keeps the
    same positions (shared lists keep the trace small in memory; the views read them as if distinct)."""
    ref = run.run(lm, "kv", PROMPT, max_new_tokens=2, options={"watch_layers": "all", "budget": 16})
    tr = T.Trace(meta=copy.deepcopy(ref.meta))
    tr.meta["params"].update(policy="h2o", budget=budget, watch_layers="all")
    rng = random.Random(0)
    per_tok = 2 * layers * kv_heads * 64 * 4
    kept = list(range(prompt_len))[:budget]
    agree = 0
    out = []
    for i in range(steps):
        seq_len = prompt_len + i
        cand = sorted(set(kept) | {seq_len - 1})
        keep = _keep(cand, budget, seq_len)
        keep_set = set(keep)
        scores = [round(rng.random(), 5) for _ in cand]
        protected = [int(p < 4 or p >= seq_len - 8) for p in cand]
        evicted = [[p, s] for p, s in zip(cand, scores) if p not in keep_set]
        attn = _attention_row(rng, len(cand))
        layer = {"kept": [keep] * kv_heads, "cand_pos": [cand] * kv_heads, "scores": [scores] * kv_heads,
                 "protected": [protected] * kv_heads, "evicted": [evicted] * kv_heads,
                 "attn": [attn] * (kv_heads * group), "group": group}
        count = [0] * seq_len
        for p in keep:
            count[p] = layers * kv_heads
        token = ref.steps[i % len(ref.steps)]
        agree += i % 7 != 3
        out.append({
            "kind": "kv", "index": i, "position": seq_len, "phase": "prefill" if i == 0 else "decode",
            "new_ids": token["new_ids"], "token_id": token["token_id"], "token_text": token["token_text"],
            "new_text": token["token_text"], "prob": token["prob"], "entropy": token["entropy"],
            "confidence": token["prob"], "candidates": token["candidates"],
            "events": ["kv_evicted"] if evicted else [], "policy": "h2o", "budget": budget,
            "cache_len": len(keep), "seq_len": seq_len, "kv_bytes": len(keep) * per_tok,
            "kv_bytes_full": seq_len * per_tok, "kv_bytes_per_layer": [len(keep) * per_tok / layers] * layers,
            "evicted_count": len(evicted) * layers * kv_heads, "n_sink": 4,
            "layers": {str(li): layer for li in range(layers)}, "kept_count": count, "slots": layers * kv_heads,
            "quality": {"agree": i % 7 != 3, "agreement": round(agree / (i + 1), 6), "first_divergence": 3,
                        "full_argmax": 1, "full_argmax_text": " x", "nll": 1.0, "nll_full": 0.9}})
        kept = keep
    return _finish(tr, out, check_every=25)


def _keep(cand: list[int], budget: int, seq_len: int) -> list[int]:
    """H2O-like: the 4 sinks, the recent half of the budget, and every other older candidate up to the budget."""
    if len(cand) <= budget:
        return cand
    recent = [p for p in cand if p >= seq_len - budget // 2]
    sinks = [p for p in cand if p < 4]
    middle = [p for p in cand if 4 <= p < seq_len - budget // 2][::2]
    return sorted(set(sinks + recent + middle[-(budget - len(sinks) - len(recent)):]))


def _attention_row(rng, n: int) -> list[float]:
    w = [rng.random() ** 4 for _ in range(n)]
    total = sum(w)
    return [round(x / total, 4) for x in w]


def long_diffusion(lm, n: int = DIFFUSION_N, block: int = 32) -> T.Trace:
    """n positions x n steps, one position committed per step, blocks of `block` left to right; the fields
    are those of a real (short) diffusion record."""
    from engine.diffusion.adapters import DiffusionAdapter
    lm.diffusion = DiffusionAdapter(lm.model, 16, shift=False, bidirectional=True, name="tiny-bidir",
                                    eos_ids=lm.eos_ids)
    ref = run.run(lm, "diffusion", PROMPT, max_new_tokens=8, options={"stop_at_eos": False})
    del lm.diffusion
    rng = random.Random(1)
    words = [" the", " sea", " is", " a", " vast", ",", " and", "\n"]
    tokens = [rng.randrange(300, 3000) for _ in range(n)]
    texts = [words[t % len(words)] for t in tokens]
    committed: set[int] = set()
    out = []
    for i in range(n):
        lo = (i // block) * block
        pos = i  # left to right within each block, one per step
        state, conf, score = [], [], []
        for j in range(n):
            if j == pos:
                state.append("new")
            elif j in committed:
                state.append("committed")
            else:
                state.append("mask")
            c = None if state[-1] == "committed" else round(rng.random(), 4)
            conf.append(c)
            score.append(c if lo <= j < lo + block else None)
        committed.add(pos)
        rec = {k: v for k, v in ref.steps[0].items() if k not in ("state", "tokens", "texts", "conf", "score")}
        rec.update({"index": i, "block": i // block, "block_range": [lo, lo + block], "step_in_block": i % block,
                    "state": state, "tokens": list(tokens), "texts": list(texts), "conf": conf, "score": score,
                    "new_ids": [tokens[pos]], "new_text": texts[pos], "new_positions": [pos], "nfe": i + 1,
                    "remasked": 0})
        out.append(rec)
    tr = T.Trace(meta=copy.deepcopy(ref.meta), extra=copy.deepcopy(ref.extra))
    return _finish(tr, out)


BUILDERS = {"ar": long_ar, "speculative": long_speculative, "kv": long_kv, "jacobi": long_jacobi,
            "lookahead": long_lookahead, "diffusion": long_diffusion}


@pytest.fixture(scope="module")
def long_traces(one_thread_module):
    lm = make_tiny_lm()
    return {kind: build(lm) for kind, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def bare_streamlit():
    """Streamlit calls outside a script run return widget defaults; silence the warning they log."""
    names = ("streamlit", "streamlit.runtime.scriptrunner_utils.script_run_context",
             "streamlit.runtime.state.session_state_proxy")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    yield
    for n, level in old.items():
        logging.getLogger(n).setLevel(level)


# ---- what a view draws ------------------------------------------------------------------------
def drawn(view) -> dict:
    """Elements a figure or an HTML string makes the browser draw: heatmap cells, points / bars, shapes,
    per-cell hover strings; spans of HTML."""
    if isinstance(view, str):
        return {"spans": view.count("<span")}
    cells = points = strings = 0
    for tr in view.data:
        z = getattr(tr, "z", None)
        if z is not None:
            n = sum(len(row) for row in z)
            cells += n
            for name in ("text", "hovertext", "customdata"):
                v = getattr(tr, name, None)
                if v is not None and not isinstance(v, str):
                    strings += sum(len(row) for row in v)
        else:
            x = getattr(tr, "x", None)
            points += len(x) if x is not None else 0
    return {"cells": cells, "points": points, "shapes": len(view.layout.shapes), "hover strings": strings}


# the views' bounds (viz/window.py), with room for a few extra marks (cursor point, outlines)
BOUNDS = {"cells": W.MAX_ROWS * W.MAX_COLUMNS, "points": 3 * W.MAX_POINTS + 4096, "shapes": W.MAX_ROWS + 2,
          "spans": W.MAX_TOKENS + 2, "hover strings": 2 * W.MAX_HOVER_CELLS}


def viz_views(kind: str, tr: T.Trace, cur: int) -> dict:
    """Every figure / HTML builder the kind's renderer calls, for step `cur`, with the widgets' defaults and
    the summaries (all layers / heads) for kv."""
    from viz import ar, diffusion, jacobi, kv, speculative
    steps, step, final = tr.steps, tr.steps[cur], tr.final_ids
    if kind == "ar":
        return {"token stream": lambda: ar.token_stream_html(steps, cur),
                "candidates": lambda: ar.candidates_figure(step),
                "p / entropy": lambda: ar.prob_entropy_figure(steps, cur)}
    if kind == "speculative":
        return {"stream": lambda: speculative.stream_html(steps, cur), "tree": lambda: speculative.tree_figure(step),
                "mask": lambda: speculative.mask_figure(step),
                "acceptance": lambda: speculative.acceptance_figure(steps, cur)}
    if kind == "kv":
        upto = steps[: cur + 1]
        return {"tokens": lambda: kv.tokens_html(steps, cur),
                "map head": lambda: kv.eviction_map_figure(upto, 0, 0, cursor=cur),
                "map layer": lambda: kv.eviction_map_figure(upto, 0, "all", cursor=cur),
                "map all": lambda: kv.eviction_map_figure(upto, "all", "all", cursor=cur),
                "attention": lambda: kv.attention_heatmap_figure(upto, 0, 0, cursor=cur),
                "scores": lambda: kv.score_bars_figure(step, 0, 0),
                "memory": lambda: kv.memory_figure({"h2o": upto}),
                "agreement": lambda: kv.agreement_figure({"h2o": upto})}
    if kind == "jacobi":
        first = max(0, cur - 23)
        return {"stream": lambda: jacobi.token_stream_html(steps, cur),
                "grid": lambda: jacobi.trajectory_grid(steps, cur, final, first_row=first),
                "grid from 0": lambda: jacobi.trajectory_grid(steps, cur, final),
                "dag": lambda: jacobi.dependency_graph(steps, cur, first_row=first),
                "progress": lambda: jacobi.progress_figure(steps, cur)}
    if kind == "lookahead":
        return {"stream": lambda: jacobi.token_stream_html(steps, cur),
                "window": lambda: jacobi.lookahead_window_figure(step, final),
                "progress": lambda: jacobi.progress_figure(steps, cur)}
    return {"text": lambda: diffusion.text_html(step), "grid": lambda: diffusion.denoising_grid(steps, cur),
            "confidence": lambda: diffusion.confidence_figure(step),
            "tokens / step": lambda: diffusion.tokens_per_step_figure(steps, cur)}


def build_and_serialise(make):
    """A view, and the seconds to build it and (for a figure) serialise it as Streamlit does."""
    t = time.perf_counter()
    view = make()
    if not isinstance(view, str):
        pio.to_json(view, validate=False)
    return view, time.perf_counter() - t


def render_seconds(tr: T.Trace, cur: int, prefix: str) -> float:
    from ui import renderers
    t = time.perf_counter()
    renderers.render(TraceView(tr, cur), prefix)
    return time.perf_counter() - t


def live_render_times(tr: T.Trace) -> dict:
    """One refresh of a live page at step EARLY and at the last step, on a trace that grows as a live
    run's does (the views' caches see every step once); and the first render of the finished trace
    opened at its last step (Replay)."""
    live = T.Trace(meta=tr.meta, steps=tr.steps[: EARLY + 1], counters=tr.counters,
                   final_ids=tr.final_ids, final_text=tr.final_text, extra=tr.extra)
    render_seconds(live, EARLY, "warm")  # imports and first-call costs
    early = min(render_seconds(live, EARLY, f"e{k}") for k in range(2))
    live.steps.extend(tr.steps[EARLY + 1:-1])
    render_seconds(live, len(live.steps) - 1, "grow")
    live.steps.append(tr.steps[-1])
    last = min(render_seconds(live, len(live.steps) - 1, f"l{k}") for k in range(2))
    replay = T.Trace(meta=tr.meta, steps=list(tr.steps), counters=tr.counters, final_ids=tr.final_ids,
                     final_text=tr.final_text, extra=tr.extra)
    cold = render_seconds(replay, len(replay.steps) - 1, "cold")
    return {"early": early, "last": last, "cold": cold}


TIMES: dict = {}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_views_draw_bounded_elements(long_traces, kind):
    tr = long_traces[kind]
    last = len(tr.steps) - 1
    early, late = viz_views(kind, tr, EARLY), viz_views(kind, tr, last)
    for name in early:
        v10, t10 = build_and_serialise(early[name])
        vlast, tlast = build_and_serialise(late[name])
        c10, clast = drawn(v10), drawn(vlast)
        TIMES.setdefault("viz", []).append((kind, name, t10, tlast, c10, clast))
        print(f"\n{kind:11s} {name:14s} step {EARLY}: {1000 * t10:7.1f} ms {c10}  step {last}: "
              f"{1000 * tlast:7.1f} ms {clast}")
        for what, n in clast.items():
            assert n <= max(BOUNDS[what], c10[what]), f"{kind} {name}: {n} {what} at step {last}"
        assert tlast <= 3 * t10 + 0.25 and tlast < 2.5, f"{kind} {name}: {tlast:.2f} s at step {last}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_refresh_costs_the_same_at_the_last_step(long_traces, bare_streamlit, kind):
    t = live_render_times(long_traces[kind])
    TIMES.setdefault("render", []).append((kind, t))
    print(f"\n{kind}: render at step {EARLY} {1000 * t['early']:.0f} ms, at the last step {1000 * t['last']:.0f} ms "
          f"(live), {1000 * t['cold']:.0f} ms (replay, first render)")
    assert t["last"] <= 3 * t["early"] + 0.5 and t["last"] < 5, t
    assert t["cold"] < 5, t


def _script(traces):
    """Run by AppTest: every long trace at its last step through the renderers the pages use, timed."""
    import time

    import streamlit as st
    from engine.runner import TraceView
    from ui import renderers
    times = {}
    for kind, tr in traces.items():
        with st.container():
            t = time.perf_counter()
            renderers.render(TraceView(tr, len(tr.steps) - 1), f"at_{kind}")
            times[kind] = time.perf_counter() - t
    st.session_state["render_times"] = times


@pytest.mark.slow
def test_long_traces_render_in_a_script_run(long_traces):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_function(_script, kwargs={"traces": long_traces}, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    times = at.session_state["render_times"]
    print("\nAppTest render at the last step: " + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in times.items()))
    assert all(t < 5 for t in times.values()), times
    streams = [kind for kind in long_traces if kind != "diffusion"]
    assert len(at.expander) >= len(streams), "the full text is one click away when the stream is cut"
    sizes = sorted(len(el.proto.spec) for el in at.get("plotly_chart"))
    print(f"figure JSON: {len(sizes)} figures, largest {sizes[-1] / 1e3:.0f} kB, all {sum(sizes) / 1e6:.2f} MB")
    assert sizes[-1] < 3_000_000, "a figure's JSON stays small"


def test_token_streams_say_what_is_left_out(long_traces):
    from viz import ar, jacobi, kv, speculative
    views = {"ar": ar.token_stream_html, "kv": kv.tokens_html, "speculative": speculative.stream_html,
             "jacobi": jacobi.token_stream_html, "lookahead": jacobi.token_stream_html}
    for kind, build in views.items():
        steps = long_traces[kind].steps
        html = build(steps, len(steps) - 1)
        earlier = re.search(r"… ([\d,]+) earlier tokens", html)
        assert earlier, kind
        shown_tokens = _tokens(steps) - int(earlier.group(1).replace(",", ""))
        assert 0 < shown_tokens <= W.MAX_TOKENS + 64, (kind, shown_tokens)
        assert "… " not in build(steps, 3), f"{kind}: nothing is left out at step 3"


def test_titles_say_a_view_is_windowed_or_binned(long_traces):
    from viz import diffusion, jacobi, kv
    steps = long_traces["kv"].steps
    last = len(steps) - 1
    fig = kv.eviction_map_figure(steps, 0, 0, cursor=last)
    title = fig.layout.title.text
    assert f"steps {last - W.MAX_ROWS + 1}–{last} of {len(steps)}" in title, title
    assert "binned by 3" in title and fig.data[0].colorbar.title.text, "binned: a kept-fraction scale"
    assert "binned by 3" in kv.attention_heatmap_figure(steps, 0, 0, cursor=last).layout.title.text
    js = long_traces["jacobi"].steps
    assert f"iterations {len(js) - W.MAX_ROWS}–{len(js) - 1} of {len(js)}" in \
        jacobi.trajectory_grid(js, len(js) - 1).layout.title.text
    ds = long_traces["diffusion"].steps
    assert f"of {len(ds)}" in diffusion.denoising_grid(ds, len(ds) - 1).layout.title.text
    binned = diffusion.denoising_grid(ds, len(ds) - 1, max_columns=64)
    assert "binned by 4" in binned.layout.title.text and len(binned.data[0].z[0]) == 64
    assert "not drawn" not in title and "not drawn" in kv.tokens_html(steps, last)


def test_large_grids_hover_without_per_cell_strings(long_traces):
    from viz import kv
    steps = long_traces["kv"].steps
    last = len(steps) - 1
    wide = kv.eviction_map_figure(steps, 0, 0, cursor=last, max_columns=4096)  # 64 x 1,099 categories
    assert wide.data[0].text is None and "kept" in wide.data[0].hovertemplate
    small = kv.eviction_map_figure(steps[:40], 0, 0)  # 40 x 139 cells: a name per cell
    assert sum(len(row) for row in small.data[0].text) == 40 * steps[39]["seq_len"]


def test_summaries_match_the_full_computation(long_traces):
    """The renderers' running totals (extended step by step) give the numbers a full pass gives."""
    from viz import ar, jacobi, speculative
    for kind, summary, full in [
            ("ar", ar.perplexity_at, lambda s, c: ar.perplexity(s[: c + 1])),
            ("speculative", speculative.summary_at, speculative.summary_from_steps),
            ("jacobi", jacobi.jacobi_stats_at, lambda s, c: jacobi.jacobi_stats(s[: c + 1])),
            ("lookahead", jacobi.lookahead_stats_at, lambda s, c: jacobi.lookahead_stats(s[: c + 1]))]:
        tr = long_traces[kind]
        grow = T.Trace(meta=tr.meta, steps=tr.steps[:5])
        for cur in (4, 500, 999, 20):
            if cur >= len(grow.steps):
                grow.steps.extend(tr.steps[len(grow.steps): cur + 1])
            a, b = summary(grow, cur), full(tr.steps, cur)
            assert _close(a, b), (kind, cur, a, b)
    steps = long_traces["speculative"].steps
    sp = T.Trace(meta={}, steps=list(steps))
    for cur in (10, 999, 300):
        assert _close(speculative.acceptance_by_depth_at(sp, cur), speculative.acceptance_by_depth(steps[: cur + 1]))
    la = long_traces["lookahead"]
    g = la.meta["params"]["guess_set_size"]
    for cur in (999, 10, 640):
        assert jacobi.pool_at(la, cur, g) == jacobi.replay_pool(la.steps, cur, g)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.slow
def test_print_table():
    """The times of the tests above as one table (pytest -s)."""
    if not TIMES:
        pytest.skip("run with the other tests of this module")
    print(f"\n{'render (ui.renderers.render)':32s} {'step 10':>9s} {'last (live)':>12s} {'last (replay)':>14s}")
    for kind, t in TIMES.get("render", []):
        print(f"{kind:32s} {1000 * t['early']:7.0f}ms {1000 * t['last']:10.0f}ms {1000 * t['cold']:12.0f}ms")
    print(f"\n{'viz builder (+ to_json)':32s} {'step 10':>9s} {'last':>9s}  elements at the last step")
    for kind, name, t10, tlast, _, clast in TIMES.get("viz", []):
        shown_counts = ", ".join(f"{k} {v}" for k, v in clast.items() if v)
        print(f"{kind + ' ' + name:32s} {1000 * t10:7.1f}ms {1000 * tlast:7.1f}ms  {shown_counts}")
