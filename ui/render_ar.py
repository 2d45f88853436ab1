"""The Autoregressive view's figures for one step of a trace (live page and replay share it)."""
import functools
import importlib

import streamlit as st

from ui import controls, renderers
from viz import ar as vz
from viz import legend

# An AR-kind step of a search-family method carries one extra block, drawn below the AR figures by
# `render_extra(r, prefix)` of its module (imported when first needed; a missing module draws nothing).
EXTRAS = {"contrastive": "ui.render_contrastive", "cad": "ui.render_cad", "grammar": "ui.render_grammar"}


def render_extras(r, prefix: str) -> None:
    step = r.trace.steps[r.cursor]
    for field, name in EXTRAS.items():
        if step.get(field) is not None:
            try:
                mod = importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            mod.render_extra(r, prefix)


def _picked(prefix: str, step: int, ids: list[int], pick) -> None:
    """The candidate chart's selection callback: the clicked bar's token, at the step the chart shows."""
    ev = st.session_state.get(f"{prefix}_cands")
    points = ((ev or {}).get("selection") or {}).get("points") or []
    if not points:
        return
    pt = points[0]
    data = pt.get("customdata")
    tok = data[0] if isinstance(data, list) and data else data
    if not isinstance(tok, int):
        i = pt.get("point_index", pt.get("point_number"))
        tok = ids[i] if isinstance(i, int) and 0 <= i < len(ids) else None
    if isinstance(tok, int):
        pick(step, tok)
        st.session_state[f"{prefix}_cands_picked"] = True


def render(r, prefix: str = "ar", pick=None) -> None:
    """`r` is a Runner or a replay view: anything with .trace and .cursor. `pick(step, token_id)`: called when a
    bar of the candidate chart is clicked (the live page forks there, ui.branches); None: the chart is a picture."""
    steps = r.trace.steps
    cur = r.cursor
    step = steps[cur]
    ppl = vz.perplexity_at(r.trace, cur)
    controls.metrics_row(r, {"perplexity": f"{ppl:.2f}" if ppl else "-"})
    colour_by = st.radio("colour tokens by", ["prob", "entropy"], horizontal=True, key=f"{prefix}_colour")
    st.markdown(legend.legend_html({"p ≈ 0 / high entropy": legend.prob_colour(0.0), "p ≈ 0.5": legend.prob_colour(0.5),
                                    "p ≈ 1 / low entropy": legend.prob_colour(1.0), "current step": "#000000"}),
                unsafe_allow_html=True)
    if not renderers.live(r):
        st.markdown(vz.token_stream_html(steps, cur, colour_by, max_entropy=vz.max_entropy_at(r.trace)),
                    unsafe_allow_html=True)
    renderers.full_text(steps, cur, lambda s: 1)
    a, b = st.columns([1, 1])
    if step.get("candidates") and pick is not None:
        ids = [c["id"] for c in sorted(step["candidates"], key=lambda c: -(c.get("p_raw") or 0))]
        a.plotly_chart(vz.candidates_figure(step), key=f"{prefix}_cands", width="stretch", selection_mode="points",
                       on_select=functools.partial(_picked, prefix, cur, ids, pick))
        if st.session_state.pop(f"{prefix}_cands_picked", False):
            st.rerun()          # the fork is drawn beside the original by the whole page, not this fragment alone
        a.caption("Click a candidate's bar to fork the run here with that token.")
    elif step.get("candidates"):
        a.plotly_chart(vz.candidates_figure(step), key=f"{prefix}_cands", width="stretch")
    b.plotly_chart(vz.prob_entropy_figure(steps, cur), key=f"{prefix}_pe", width="stretch")
    if step.get("lens"):   # recorded with the logit_lens option: each layer's top token at every step
        st.plotly_chart(vz.lens_figure(steps, cur), key=f"{prefix}_lens", width="stretch")
    render_extras(r, prefix)
