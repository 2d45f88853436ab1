"""Re-warp without recomputing: the Autoregressive page's "Re-warp the recorded steps" expander. Other temperature
/ top-k / top-p / min-p settings applied to every recorded step at once (engine/rewarp.py, no forward): exact when
the run kept record_logits, over the recorded candidates otherwise (the page says which). Shows the step shown's
candidates under both settings and the token stream marked where the new settings' most likely token differs
from the token taken (viz/rewarp.py)."""
from __future__ import annotations

import streamlit as st

from engine import rewarp
from engine.errors import LabError
from engine.sampling import SamplingConfig
from ui import controls
from viz import rewarp as vr
from viz.safe import md_text

CACHE = "lab_rewarp_cache"


def settings(prefix: str) -> SamplingConfig | None:
    c = st.columns(4)
    t = c[0].number_input("temperature", 0.0, 5.0, 1.0, 0.05, key=f"{prefix}_rw_t", help="0: greedy")
    k = c[1].number_input("top-k", 0, 1000, 0, key=f"{prefix}_rw_k", help="0: off")
    p = c[2].number_input("top-p", 0.01, 1.0, 1.0, 0.05, key=f"{prefix}_rw_p", help="1: off")
    m = c[3].number_input("min-p", 0.0, 1.0, 0.0, 0.01, key=f"{prefix}_rw_m", help="0: off")
    try:
        return SamplingConfig(temperature=float(t) if t >= 1e-4 else 0.0, top_k=int(k), top_p=float(p),
                              min_p=float(m))
    except LabError as e:
        st.error(md_text(e, 500))
        return None


def results(trace, cfg: SamplingConfig) -> list:
    """rewarp.trace_steps of the trace's steps, kept per (trace, steps, settings) for this session."""
    cache = st.session_state.setdefault(CACHE, {})
    k = (id(trace), len(trace.steps), cfg)
    if k not in cache:
        if len(cache) > 16:
            cache.clear()
        cache[k] = rewarp.trace_steps(list(trace.steps), cfg)
    return cache[k]


def section(key: str, prefix: str) -> None:
    r = controls.runner(key)
    if r is None or not r.trace.steps:
        return
    with st.expander("Re-warp the recorded steps", expanded=False):
        st.caption("Other sampling settings applied to the distributions this run recorded, with no forward: what "
                   "each step would have looked like, and where the most likely token would not be the one taken.")
        cfg = settings(prefix)
        if cfg is None:
            return
        steps = r.trace.steps
        try:
            res = results(r.trace, cfg)
        except LabError as e:
            st.error(md_text(e, 500))
            return
        done = [x for x in res if x is not None]
        if not done:
            st.caption("No autoregressive steps to re-warp.")
            return
        exact = all(x["exact"] for x in done)
        st.markdown("**Exact**: the run kept its full logits (record_logits)." if exact else
                    "**Approximate**: the run kept only its top candidates, so the new settings are applied over "
                    "those alone (renormalised among them). Turn on *record_logits* before generating for exact "
                    "re-warps.")
        cur = r.cursor if r.cursor is not None else len(steps) - 1
        cur = min(cur, len(res) - 1)
        n_diff = sum(vr.differs(s, x) for s, x in zip(steps, res))
        n_cut = sum(1 for x in done if x.get("chosen_p") == 0)
        st.markdown(f"The new settings' most likely token differs from the token taken at **{n_diff}** of "
                    f"{len(done)} steps (red underline); **{n_cut}** taken tokens would be filtered out (struck "
                    "through).")
        st.markdown(vr.stream_html(steps, res, cur), unsafe_allow_html=True)
        if res[cur] is not None:
            st.plotly_chart(vr.candidates_figure(steps[cur], res[cur]), key=f"{prefix}_rw_fig", width="stretch")
