"""The Search view's figures for one step of a beam-search trace (live page and replay share it)."""
import pandas as pd
import streamlit as st

from ui import controls
from viz import beam as vz
from viz.safe import md_text


def _score(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(r, prefix: str = "beam") -> None:
    """`r` is a Runner or a replay view: anything with .trace and .cursor."""
    steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    s = vz.summary(steps, cur)
    controls.metrics_row(r, {
        "beams": (s["beams"], "beams kept after this step (num_beams, fewer once every continuation ended)"),
        "hypotheses": (s["finished"], "hypotheses finished up to this step (EOS or the token budget)"),
        "best running": (_score(s["best_running"]), "the best running beam's sum of log-probs"),
        "best finished": (_score(s["best_finished"]), "the best hypothesis's score / length ** length_penalty")})
    if s["stop"]:
        st.caption(f"stopped: {md_text(s['stop'])}")
    nbest = vz.nbest_rows(steps, cur)
    beams = vz.beam_rows(steps, cur)
    lead = nbest[0]["text"] if s["stop"] and nbest else beams[0]["text"] if beams else ""
    st.caption("the answer" if s["stop"] and nbest else "the best running beam")
    st.text(lead or " ")
    st.plotly_chart(vz.tree_figure(steps, cur), key=f"{prefix}_tree", width="stretch")
    a, b = st.columns([1, 1])
    with a:
        st.caption("running beams (best first in each group)")
        if beams:
            st.dataframe(pd.DataFrame(beams), hide_index=True, width="stretch")
        else:
            st.text("none running: every beam has finished")
    with b:
        st.caption("n-best list (finished hypotheses, best normalised score first)")
        if nbest:
            st.dataframe(pd.DataFrame(nbest), hide_index=True, width="stretch")
    st.plotly_chart(vz.scores_figure(steps, cur), key=f"{prefix}_scores", width="stretch")
