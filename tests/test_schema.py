"""The step-record schema (engine/schema.py): every trace the engine writes passes it, every trace that
passes it renders through viz/ and ui/render_*.py without an exception, and corrupted traces are either
refused with a TraceError that names the step and the field, or (when the corruption left a valid trace)
render too. Random traces are built from the schema itself (hypothesis), derandomized for CI."""
from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as hs

from engine import methods, run, schema as S, trace as T
from engine.runner import TraceView
from tests.conftest import ROOT, make_tiny_lm

KINDS = sorted(S.STEPS)
EXAMPLES = sorted((Path(ROOT) / "examples" / "traces").glob("*.json"))
SETTINGS = dict(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.filter_too_much])

# Strings a shared trace could carry to make a viewer fetch or run something.
EVIL = ["![x](http://example.invalid/p.png)", "<img src=x onerror=alert(1)>", "**bold**", "<b>", "[link](http://x)",
        "`rm -rf`", "$x^2$", ":red[x]", "a\r\n\r\nb", "\n\n# h\n\n", "</div><img src=x>", "'\"", "&amp;", "\\", "",
        "\u202e", "😀", "%{customdata}"]


# ---- traces from real runs on the tiny random model -------------------------------------------
GREEDY, SAMPLED = {}, {"temperature": 0.8, "seed": 1}
CASES = [  # (method, options, sampling); options a method does not declare are dropped
    ("ar", {}, GREEDY), ("ar", {"top_candidates": 3, "logit_lens": True}, SAMPLED),
    ("speculative", {"drafter": "trigram"}, GREEDY),
    ("speculative", {"drafter": "early_exit", "exit_layer": 1, "logit_lens": True}, SAMPLED),
    ("speculative", {"drafter": "early_exit", "tree": "2.2", "exit_layer": 1}, GREEDY),
    ("speculative", {"drafter": "early_exit", "tree": "dynamic", "exit_layer": 1, "tree_budget": 6}, SAMPLED),
    ("speculative", {"drafter": "early_exit", "verify": "typical", "exit_layer": 1}, SAMPLED),
    ("kv", {"policy": "h2o", "budget": 8}, GREEDY),
    ("kv", {"policy": "snapkv", "budget": 8, "window_size": 2, "watch_layers": "all"}, GREEDY),
    ("kv", {"policy": "streaming_llm", "budget": 8, "watch_layers": "none", "compare_full": False}, SAMPLED),
    ("jacobi", {"block_size": 4}, GREEDY), ("jacobi", {"block_size": 3, "variant": "gauss_seidel"}, GREEDY),
    ("jacobi", {"block_size": 3, "variant": "hybrid", "hybrid_length": 4}, SAMPLED),
    ("lookahead", {}, GREEDY), ("lookahead", {"window_size": 3, "level": 3}, SAMPLED),
    ("diffusion", {}, GREEDY), ("diffusion", {"block_length": 4, "steps": 8, "rule": "threshold"}, GREEDY),
    ("beam", {"num_beams": 3}, GREEDY), ("beam", {"num_beams": 4, "num_beam_groups": 2}, GREEDY),
    ("cad", {"context": "A story:", "alpha": 1.0}, SAMPLED),
    ("cautious", {"max_trials": 3, "entropy_low": 0.0, "entropy_high": 1.0, "max_trial_tokens": 3}, GREEDY),
    ("cautious", {"max_trials": 4, "max_trial_tokens": 4}, SAMPLED),
]


def _declared(method: str, options: dict) -> dict:
    known = methods.get(method).options
    return {k: v for k, v in options.items() if k in known}


@pytest.fixture(scope="module")
def real_traces(tiny_lm, one_thread_module) -> list[dict]:
    from engine.diffusion.adapters import DiffusionAdapter
    from engine.sampling import SamplingConfig
    diffusion_lm = make_tiny_lm(seed=3)
    diffusion_lm.diffusion = DiffusionAdapter(diffusion_lm.model, 16, shift=False, bidirectional=True,
                                              name="tiny-bidir", eos_ids=diffusion_lm.eos_ids)
    out = []
    for method, options, sampling in CASES:
        lm = diffusion_lm if method == "diffusion" else tiny_lm
        tr = run.run(lm, method, "Once upon a time there was", max_new_tokens=8, options=_declared(method, options),
                     sampling=SamplingConfig(**sampling))
        out.append(json.loads(tr.to_json()))
    return out


# ---- rendering: every viz function a view calls, then the ui renderers --------------------------
def render_viz(tr: T.Trace, cursors) -> None:
    """Call the viz functions of the trace's kind at each cursor, with the widget choices the views offer."""
    from viz import ar, diffusion, jacobi, speculative
    steps = tr.steps
    kind = steps[0]["kind"]
    for cur in cursors:
        step = steps[cur]
        if kind == "ar":
            for by in ("prob", "entropy"):
                ar.token_stream_html(steps, cur, by)
            if step.get("candidates"):
                ar.candidates_figure(step)
            ar.prob_entropy_figure(steps, cur)
            ar.perplexity(steps[: cur + 1])
            ar.lens_figure(steps, cur)
        elif kind == "speculative":
            speculative.summary_from_steps(steps, cur)
            speculative.stream_html(steps, cur)
            speculative.tree_figure(step)
            speculative.mask_figure(step)
            speculative.round_table(step)
            speculative.acceptance_figure(steps, cur)
            speculative.depth_figure(speculative.acceptance_by_depth(steps[: cur + 1]))
            speculative.lens_figure(steps, cur)
        elif kind == "kv":
            _render_kv(steps, cur)
        elif kind == "jacobi":
            jacobi.jacobi_stats(steps[: cur + 1])
            jacobi.token_stream_html(steps, cur)
            jacobi.cells(step)
            for first in {0, cur}:
                jacobi.trajectory_grid(steps, cur, tr.final_ids, first_row=first)
                jacobi.dependency_graph(steps, cur, first_row=first)
            jacobi.progress_figure(steps, cur)
        elif kind == "lookahead":
            jacobi.lookahead_stats(steps[: cur + 1])
            jacobi.token_stream_html(steps, cur)
            jacobi.lookahead_window_figure(step, tr.final_ids)
            jacobi.candidates_table(step)
            nxt = steps[cur + 1] if cur + 1 < len(steps) else {}
            for key in (None, nxt.get("last_id")):
                jacobi.pool_table(steps, cur, 3, str, only_key=key)
            jacobi.progress_figure(steps, cur)
        elif kind == "diffusion":
            diffusion.summary(steps, cur)
            diffusion.text_html(step)
            for graded in (True, False):
                diffusion.denoising_grid(steps, cur, graded=graded)
            diffusion.confidence_figure(step)
            diffusion.tokens_per_step_figure(steps, cur)
        elif kind == "beam":
            from viz import beam
            beam.tree_figure(steps, cur)
            beam.scores_figure(steps, cur)
            beam.beam_rows(steps, cur)
            beam.nbest_rows(steps, cur)
        elif kind == "cautious":
            from viz import cautious
            cautious.summary(steps, cur)
            cautious.stream_html(steps, cur)
            cautious.trials_figure(step)
            cautious.trial_rows(step)
            cautious.entropy_figure(steps, cur, 0.01, 1.5)


def _render_kv(steps, cur) -> None:
    from viz import kv
    step, upto = steps[cur], steps[: cur + 1]
    kv.tokens_html(steps, cur)
    kv.memory_figure({"p": upto})
    kv.agreement_figure({"p": upto})
    layers = kv.watched_layers(steps)
    if not layers:
        return
    for layer in layers[:2] + ["all"]:
        lay = layers[0] if layer == "all" else layer
        nh = kv.n_kv_heads(steps, lay)
        for head in list(range(min(nh, 2))) + ["all"]:
            kv.eviction_map_figure(upto, layer, head, cursor=cur)
        kv.score_bars_figure(step, lay, 0)
        for qhead in range(nh * kv.query_group(steps, lay)):
            kv.attention_heatmap_figure(upto, lay, qhead, cursor=cur)


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


def render_ui(tr: T.Trace, cursors) -> None:
    from ui import renderers
    for cur in cursors:
        renderers.render(TraceView(tr, cur), f"s{cur}")


def cursors_of(tr: T.Trace) -> list[int]:
    n = len(tr.steps)
    return sorted({0, n - 1}) if n else []


def render_everything(tr: T.Trace) -> None:
    if tr.steps:
        render_viz(tr, cursors_of(tr))
        render_ui(tr, cursors_of(tr))


def _apptest_script(paths):
    """Run by AppTest: every trace at its first and last step, through the renderers the pages use."""
    import streamlit as st
    from engine import trace as T
    from engine.runner import TraceView
    from ui import renderers
    for t, path in enumerate(paths):
        tr = T.load(path)
        for i in sorted({0, len(tr.steps) - 1}):
            with st.container():
                renderers.render(TraceView(tr, i), f"t{t}s{i}")


def render_in_apptest(objs: list[dict]) -> None:
    from streamlit.testing.v1 import AppTest
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, obj in enumerate(objs):
            paths.append(str(Path(d) / f"t{i}.json"))
            Path(paths[-1]).write_text(json.dumps(obj))
        at = AppTest.from_function(_apptest_script, kwargs={"paths": paths}, default_timeout=120)
        at.run()
        assert not at.exception, at.exception
        assert at.get("plotly_chart")


# ---- every trace the engine writes validates and renders -------------------------------------
@pytest.mark.slow
def test_every_engine_trace_validates_and_renders(real_traces, bare_streamlit):
    assert {t["steps"][0]["kind"] for t in real_traces} == set(KINDS)
    for obj in real_traces:
        tr = T.loads(json.dumps(obj))
        render_viz(tr, range(len(tr.steps)))
        render_ui(tr, cursors_of(tr))
    render_in_apptest(real_traces)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_traces_validate_and_render(path, bare_streamlit):
    tr = T.load(path)
    render_viz(tr, cursors_of(tr))


def test_schema_bounds_cover_the_engine():
    from engine.methods import MAX_NEW_TOKENS, jacobi, lookahead
    from engine.methods.speculative import trees
    assert 2 * MAX_NEW_TOKENS <= S.MAX_OUTPUT and MAX_NEW_TOKENS <= S.MAX_STEPS
    assert trees.MAX_NODES + 2 <= S.MAX_NODES and trees.MAX_DEPTH + 1 <= S.MAX_NODES
    assert jacobi.MAX_BLOCK + 1 <= S.MAX_BLOCK
    assert lookahead.MAX_W + lookahead.MAX_N <= S.MAX_WINDOW and lookahead.MAX_N <= S.MAX_NGRAM < S.MAX_LEVELS * 2
    assert T.KINDS == set(S.STEPS)


def test_schema_enums_match_the_views():
    from viz import diffusion, speculative
    assert set(S.NODE_STATUSES) == set(speculative.STATUS_LABEL)
    assert set(S.DIFFUSION_STATES) == set(diffusion.STATE_COLOURS)


# ---- clear messages --------------------------------------------------------------------------
def _example(stem: str) -> dict:
    return json.loads((Path(ROOT) / "examples" / "traces" / f"{stem}.json").read_text())


def _spec_parent(d):
    d["steps"][2]["nodes"][2]["parent"] = 7


def _relabel(kind):
    def f(d):
        for s in d["steps"]:
            s["kind"] = kind
    return f


def _set(step, key, value):
    def f(d):
        d["steps"][step][key] = value
    return f


def _kv_step(i: int, seq_len: int) -> dict:
    return {"kind": "kv", "index": i, "new_ids": [1], "seq_len": seq_len, "cache_len": 1, "kv_bytes": 0,
            "kv_bytes_full": 0, "layers": {"0": {"kept": [[0]]}}, "kept_count": [1] * seq_len, "slots": 1}


def _kv_wide_map(d):
    """A small file (under 1 MB) whose eviction map would be 300 steps x 131072 positions."""
    d["steps"] = [_kv_step(0, S.MAX_POSITIONS)] + [_kv_step(i, 1) for i in range(1, 300)]


@pytest.mark.parametrize("stem, corrupt, msg", [
    ("speculative_prompt_lookup", _spec_parent, r"^step 2, nodes\[2\]\.parent: must be an integer < 2 \(a parent "
                                                r"comes before its children\), got 7\.$"),
    ("kv_h2o", _set(3, "seq_len", 2_000_000), r"^step 3, seq_len: must be an integer in 1\.\.131072, got 2000000"),
    ("kv_h2o", _set(3, "seq_len", 20), r"^step 3, kept_count: has \d+ items; seq_len is 20"),
    ("kv_h2o", _set(0, "layers", {"²": {"kept": [[0]]}}), r"step 0, layers\.²: must be a key of digits"),
    ("kv_h2o", _set(0, "layers", {"015": {"kept": [[0]]}}), r"step 0, layers\.015: must be a key of digits"),
    ("autoregressive", _relabel("kv"), r"^step 0, seq_len: is missing \(every 'kv' step has it\)"),
    ("jacobi", _relabel("lookahead"), r"^step 0, base: is missing \(every 'lookahead' step has it\)"),
    ("autoregressive", _set(2, "kind", "jacobi"), r"^step 2, kind: is 'jacobi' but step 0 is 'ar'"),
    ("autoregressive", _set(2, "index", 7), r"^step 2, index: must be 2"),
    ("autoregressive", _set(1, "token_text", "x" * 5000), r"^step 1, token_text: must be at most 1024 characters"),
    ("autoregressive", _set(1, "prob", 1.5), r"^step 1, prob: must be a finite number in \[0, 1\]"),
    ("diffusion_low_confidence", _set(0, "texts", ["a"]), r"^step 0, texts: has 1 items but state has \d+"),
    ("diffusion_low_confidence", _set(0, "block_range", [0, 10**9]), r"^step 0, block_range\[1\]: must be an integer"),
    ("kv_h2o", _kv_wide_map, r"^steps: 300 steps x 131072 positions make 39321600 cells; the views draw at most"),
    ("jacobi", _set(0, "forced", [[0, 0, 10**4]]), r"^step 0, forced\[0\]\[2\]: must be an integer"),
    ("jacobi", _set(0, "pred_text", [[[["deep"]]]]), r"^step 0, pred_text\[0\]: must be a string, got a list"),
    ("lookahead", _set(5, "fill_level", 9), r"^step 5, fill_level: must be < \d+ \(the window's levels\)"),
])
def test_invalid_traces_are_refused_with_step_and_field(stem, corrupt, msg):
    d = _example(stem)
    corrupt(d)
    with pytest.raises(T.TraceError, match=msg):
        T.loads(json.dumps(d))


def test_nan_reaching_the_schema_is_refused():
    d = _example("autoregressive")
    d["steps"][0]["prob"] = float("nan")
    with pytest.raises(T.TraceError, match=r"step 0, prob: must be a finite number"):
        T.from_dict(d)
    d = _example("autoregressive")
    d["counters"]["compute_s"] = float("inf")
    with pytest.raises(T.TraceError, match=r"counters\.compute_s: must be a finite number"):
        T.from_dict(d)


@pytest.mark.parametrize("literal, msg", [
    ("1e999", r"counters\.generated_tokens: must be a finite number"),
    ("1" * 5000, r"cannot be read as a trace: Exceeds the limit"),
])
def test_odd_number_literals_are_refused(literal, msg):
    d = _example("autoregressive")
    d["counters"]["generated_tokens"] = 12345
    with pytest.raises(T.TraceError, match=msg):
        T.loads(json.dumps(d).replace("12345", literal, 1))


def test_diffusion_grid_is_bounded():
    wide = ["mask"] * S.MAX_OUTPUT
    with pytest.raises(S.Invalid, match=r"5000 steps x 8192 positions make 40960000 cells"):
        S.STEPS["diffusion"].check_steps([{"state": wide}] * 5000)


@pytest.mark.slow
def test_a_large_trace_validates_in_seconds():
    d = _example("kv_h2o")
    steps = d["steps"]
    d["steps"] = [dict(steps[i % len(steps)], index=i) for i in range(64 * len(steps))]
    obj = json.loads(json.dumps(d))  # ~16 MB; 50 MB validates in about 2 s on this 2-core CPU
    t = time.perf_counter()
    T.from_dict(obj)
    took = time.perf_counter() - t
    assert took < 3.0, f"{len(d['steps'])} steps validated in {took:.2f} s"


# ---- random valid traces, built from the schema ---------------------------------------------
def strings(max_len: int):
    return hs.one_of(hs.text(max_size=min(max_len, 8)), hs.sampled_from([e for e in EVIL if len(e) <= max_len]))


def from_spec(spec):
    """A strategy for values that fit one field's spec (cross-field rules are `repair`ed afterwards)."""
    if isinstance(spec, S.Int):  # mostly small; the bound itself now and then
        small = hs.integers(spec.lo, min(spec.hi, spec.lo + 20))
        return hs.one_of(small, small, small, hs.just(spec.hi))
    if isinstance(spec, S.Float):
        return hs.floats(spec.lo, spec.hi, allow_nan=False, allow_infinity=False)
    if isinstance(spec, S.Bool):
        return hs.booleans()
    if isinstance(spec, S.Str):
        return strings(spec.max_len)
    if isinstance(spec, S.Enum):
        return hs.sampled_from(spec.values)
    if isinstance(spec, S.Maybe):
        return hs.one_of(hs.none(), from_spec(spec.inner))
    if isinstance(spec, S.Scalar):
        return hs.one_of(hs.none(), hs.booleans(), hs.integers(-5, 5), hs.floats(-1e9, 1e9), strings(20))
    if isinstance(spec, S.List):
        return hs.lists(from_spec(spec.item), min_size=spec.min_len, max_size=max(spec.min_len, min(spec.max_len, 3)))
    if isinstance(spec, S.Tuple):
        return hs.tuples(*map(from_spec, spec.items)).map(list)
    if isinstance(spec, S.Obj):
        return hs.fixed_dictionaries({k: from_spec(v) for k, v in spec.fields.items()},
                                     optional={k: from_spec(v) for k, v in spec.optional.items()})
    if isinstance(spec, S.Map):
        keys = hs.integers(0, min(spec.keys.hi, 40)).map(str) if isinstance(spec.keys, S.IntKey) else strings(16)
        return hs.dictionaries(keys, from_spec(spec.value), max_size=min(spec.max_len, 3))
    raise TypeError(f"no strategy for {spec!r}")


def exactly(spec, n: int):
    return hs.lists(from_spec(spec), min_size=n, max_size=n)


def fit(draw, d: dict, ref: str, other: str, spec) -> None:
    """Where both are present, give `other` as many items as `ref` has."""
    if ref in d and other in d:
        d[other] = draw(exactly(spec, len(d[ref])))


def repair_speculative(draw, steps):
    for s in steps:
        nodes = s.get("nodes", [])
        for i, node in enumerate(nodes):
            node["id"] = i
            node["parent"] = -1 if i == 0 or node["parent"] < 0 else node["parent"] % i
            node["depth"] = 0 if node["parent"] < 0 else nodes[node["parent"]]["depth"] + 1
        if "parents" in s:
            s["parents"] = [min(p, i - 1) for i, p in enumerate(s["parents"])]
        if "mask" in s:
            m = sum(1 for node in nodes if not node.get("appended")) if nodes else len(s["mask"])
            s["mask"] = draw(hs.lists(exactly(S.Int(0, 1), m), min_size=m, max_size=m))
        if "lens" in s:
            s["lens"] = s["lens"][: len(s["new_ids"])]


MOSTLY = hs.sampled_from([True, True, False])


@hs.composite
def kv_layer(draw, n: int, heads: int, group: int):
    """A watched layer: kept positions per KV head, and (each optional) the candidates' scores, the new
    token's attention per query head, the evicted entries."""
    pos = hs.integers(0, n - 1)
    per_head = hs.lists(hs.lists(pos, max_size=n), min_size=heads, max_size=heads)
    lay = {"kept": draw(per_head)}
    if draw(MOSTLY):
        cand = lay["cand_pos"] = draw(per_head)
        lay["scores"] = [draw(exactly(S.Maybe(S.FINITE), len(c))) for c in cand]
        lay["protected"] = [draw(exactly(S.Int(0, 1), len(c))) for c in cand]
        if draw(hs.booleans()):
            lay["group"] = group
            lay["attn"] = [draw(exactly(S.PROB, len(cand[q // group]))) for q in range(heads * group)]
    if draw(MOSTLY):
        pair = hs.tuples(pos, from_spec(S.Maybe(S.FINITE))).map(list)
        lay["evicted"] = [draw(hs.lists(pair, max_size=3)) for _ in range(heads)]
    return lay


def repair_kv(draw, steps):
    keys = sorted(steps[0]["layers"])
    heads = {k: draw(hs.integers(1, 2)) for k in keys}
    group = {k: draw(hs.integers(1, 2)) for k in keys}
    for s in steps:
        n = s["seq_len"] = draw(hs.integers(1, 10))
        if keys or "kept_count" in s:
            slots = s["slots"] = draw(hs.integers(1, 6))
            s["kept_count"] = draw(hs.lists(hs.integers(0, slots), min_size=n, max_size=n))
        s["layers"] = {k: draw(kv_layer(n, heads[k], group[k])) for k in keys}


def repair_jacobi(draw, steps):
    for s in steps:
        fit(draw, s, "guess_ids", "guess_text", S.TOKEN_TEXT)
        fit(draw, s, "pred_ids", "pred_text", S.TOKEN_TEXT)
        if "forced" in s:
            s["forced"] = [[j, min(a, b), min(max(a, b), min(a, b) + 2 * S.MAX_BLOCK)] for j, a, b in s["forced"]]


def repair_lookahead(draw, steps):
    for s in steps:
        for lv in s["window"]:
            lv["text"] = draw(exactly(S.TOKEN_TEXT, len(lv["ids"])))
            lv["positions"] = draw(exactly(S.Int(-1, 40), len(lv["ids"])))
        if s["window"] and "fill_level" in s:
            s["fill_level"] %= len(s["window"])
        for c in s.get("candidates", []):
            c["text"] = draw(exactly(S.TOKEN_TEXT, len(c["ids"])))
        fit(draw, s, "level_out", "level_out_text", S.TOKEN_TEXT)
        fit(draw, s, "accepted_ngram", "accepted_text", S.TOKEN_TEXT)


def repair_diffusion(draw, steps):
    n = draw(hs.integers(0, 6))
    for s in steps:
        for key in ("state", "tokens", "texts", "conf", "score"):
            s[key] = draw(exactly(S.STEPS["diffusion"].record.fields[key].item, n))
        lo = draw(hs.integers(0, n))
        s["block_range"] = [lo, draw(hs.integers(lo, n))]


def repair_beam(draw, steps):
    for i, s in enumerate(steps):
        n_prev = len(steps[i - 1].get("beams", [])) if i else 0
        for f in ("beams", "pruned", "finished"):
            if f in s:
                s[f] = [dict(c, parent=-1 if i == 0 else c["parent"] % n_prev) for c in s[f] if i == 0 or n_prev]
        if "nbest" in s:
            refs = [(j, len(steps[j].get("finished", []))) for j in range(i + 1)]
            refs = [(j, n) for j, n in refs if n]
            s["nbest"] = [dict(r, step=refs[k % len(refs)][0], slot=r["slot"] % refs[k % len(refs)][1])
                          for k, r in enumerate(s["nbest"])] if refs else []


def repair_cautious(draw, steps):
    for s in steps:
        trials = s.get("trials")
        if trials is None:
            s["chosen"] = 0
            continue
        if not trials:
            del s["trials"]
            s["chosen"] = 0
            continue
        for t in trials:
            t["p"] = draw(exactly(S.PROB, len(t["ids"])))
        s["n_trials"], s["chosen"] = len(trials), s["chosen"] % len(trials)
        s["new_ids"] = trials[s["chosen"]]["ids"][: draw(hs.integers(0, len(trials[s["chosen"]]["ids"])))]


REPAIR = {"ar": lambda draw, steps: None, "cautious": repair_cautious, "speculative": repair_speculative, "kv": repair_kv,
          "jacobi": repair_jacobi, "lookahead": repair_lookahead, "diffusion": repair_diffusion,
          "beam": repair_beam}


@hs.composite
def traces(draw, kind: str, max_steps: int = 4):
    steps = draw(hs.lists(from_spec(S.STEPS[kind].record), min_size=1, max_size=max_steps))
    for i, s in enumerate(steps):
        s["kind"], s["index"] = kind, i
    REPAIR[kind](draw, steps)
    return {"schema_version": T.SCHEMA_VERSION, "meta": draw(from_spec(S.META)), "steps": steps,
            "final": draw(from_spec(S.FINAL)), "counters": draw(from_spec(S.COUNTERS)),
            "extra": draw(from_spec(S.EXTRA))}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=18, **SETTINGS)
@given(data=hs.data())
def test_random_valid_traces_render(kind, data, bare_streamlit):
    obj = data.draw(traces(kind))
    tr = T.loads(json.dumps(obj))  # the strategy makes valid traces: a TraceError here is a schema/strategy bug
    render_everything(tr)


@pytest.mark.slow
@settings(max_examples=2, **SETTINGS)
@given(objs=hs.tuples(*(traces(k, max_steps=3) for k in KINDS)))
def test_random_valid_traces_render_in_apptest(objs):
    render_in_apptest(list(objs))


# ---- random corruptions: refused with a TraceError, or valid and rendered --------------------
def _deep(n: int):
    v: object = 0
    for _ in range(n):
        v = [v]
    return v


ODD_VALUES = [None, True, False, "x", "", "²", [], {}, [None], {"kind": "ar"}, -1, 0, 1.5, 2**63, 10**30, -10**30,
              1e308, -1e308, float("nan"), float("inf"), float("-inf"), 2_000_000, 10**9, _deep(300),
              "A" * 1_100_000, [0] * 20_000]
ODD_KEYS = ["01", "²", "", "-1", "x" * 100, "kind", "index", "0"]
SIZE_FIELDS = ["seq_len", "cache_len", "slots", "block_start", "next_start", "front", "accepted", "committed",
               "carried", "base", "fill_level", "block", "step_in_block", "budget", "n_sink", "accepted_len",
               "tree_size", "draft_len", "index"]


def _places(obj, out=None):
    """Every (container, key) inside obj."""
    out = [] if out is None else out
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append((obj, k))
        _places(v, out)
    return out


@hs.composite
def corrupted(draw, base: dict):
    obj = copy.deepcopy(base)
    steps = obj["steps"]
    op = draw(hs.sampled_from(["replace", "replace", "delete", "rekey", "relabel", "size", "swap", "extend",
                               "truncate"]))
    if op in ("replace", "delete", "rekey"):
        places = _places(obj)
        parent, key = places[draw(hs.integers(0, len(places) - 1))]
        if op == "replace":
            parent[key] = copy.deepcopy(draw(hs.sampled_from(ODD_VALUES)))
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(hs.sampled_from(ODD_KEYS))] = parent.pop(key)
    elif op == "relabel":
        kind = draw(hs.sampled_from(KINDS + ["evil", ""]))
        for s in (steps if draw(hs.booleans()) else steps[-1:]):
            s["kind"] = kind
    elif op == "size":
        s = steps[draw(hs.integers(0, len(steps) - 1))]
        s[draw(hs.sampled_from(SIZE_FIELDS))] = draw(hs.sampled_from([-1, 10**6, 2_000_000, 10**9, 2**40]))
    elif op == "swap" and len(steps) > 1:
        i, j = draw(hs.integers(0, len(steps) - 1)), draw(hs.integers(0, len(steps) - 1))
        steps[i], steps[j] = steps[j], steps[i]
    elif op == "extend":  # a copy of the last step appended: a legitimate-looking longer trace
        steps.append(dict(copy.deepcopy(steps[-1]), index=len(steps)))
    elif op == "truncate":
        del steps[draw(hs.integers(0, len(steps))):]
    return obj


def _check_corruption(obj: dict) -> None:
    try:
        tr = T.loads(json.dumps(obj, allow_nan=True))
    except T.TraceError as e:
        assert str(e)
        event("refused")
    else:
        render_everything(tr)
        event("still valid: rendered")
    try:  # NaN / inf given as Python floats reach the schema itself
        T.from_dict(copy.deepcopy(obj))
    except T.TraceError:
        pass


@pytest.mark.slow
@settings(max_examples=60, **SETTINGS)
@given(data=hs.data())
def test_corrupted_real_traces_are_refused_or_render(real_traces, data, bare_streamlit):
    base = data.draw(hs.sampled_from(real_traces))
    _check_corruption(data.draw(corrupted(base)))


@pytest.mark.slow
@settings(max_examples=60, **SETTINGS)
@given(data=hs.data())
def test_corrupted_random_traces_are_refused_or_render(data, bare_streamlit):
    base = data.draw(hs.sampled_from(KINDS).flatmap(traces))
    _check_corruption(data.draw(corrupted(base)))


NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


@pytest.mark.slow
@settings(max_examples=30, **SETTINGS)
@given(data=hs.data())
def test_odd_number_literals_are_refused_or_render(real_traces, data, bare_streamlit):
    """Numbers json.dumps never writes (1e999 is read as inf, 5000 digits cannot be read as an int)."""
    text = json.dumps(data.draw(hs.sampled_from(real_traces)))
    spans = [m.span() for m in NUMBER.finditer(text)]
    a, b = spans[data.draw(hs.integers(0, len(spans) - 1))]
    odd = data.draw(hs.sampled_from(["1e999", "-1e999", "1" * 5000, "1e-999", "-0", "0.0", "1E5"]))
    text = text[:a] + odd + text[b:]
    try:
        tr = T.loads(text)
    except T.TraceError as e:
        assert str(e)
    else:
        render_everything(tr)
