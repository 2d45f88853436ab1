"""The Search view for cautious next-token prediction: the trials of the step shown, the entropy schedule over
the run, the text with its branching steps (live page and replay share it)."""
import pandas as pd
import streamlit as st

from ui import controls, renderers
from viz import ar as vz_ar
from viz import cautious as vz
from viz import legend


def render(r, prefix: str = "cautious") -> None:
    steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    step = steps[cur]
    s = vz.summary(steps, cur)
    controls.metrics_row(r, {
        "branching steps": (s["branching"], "steps whose entropy was above entropy_low: they ran trials"),
        "trials": (s["trials"], "trials run so far (each to the next punctuation)"),
        "trial tokens": (s["trial_tokens"], "tokens decoded in trials so far, kept or not: the method's extra cost"),
        "off greedy": (s["changed"], "branching steps whose kept trial starts with another token than the likeliest")})
    st.markdown(legend.legend_html({"a branching step's kept trial": legend.CAD, "one token": legend.UNVERIFIED,
                                    "current step": "#000000"}), unsafe_allow_html=True)
    if not renderers.live(r):
        st.markdown(vz.stream_html(steps, cur), unsafe_allow_html=True)
    renderers.full_text(steps, cur, lambda x: len(x.get("new_ids", [])) or 1)
    params = r.trace.meta.get("params", {})
    a, b = st.columns([1, 1])
    a.plotly_chart(vz.trials_figure(step), key=f"{prefix}_trials", width="stretch")
    b.plotly_chart(vz.entropy_figure(steps, cur, params.get("entropy_low"), params.get("entropy_high")),
                   key=f"{prefix}_entropy", width="stretch")
    if step.get("trials"):
        st.caption("this step's trials (lowest perplexity first)")
        st.dataframe(pd.DataFrame(vz.trial_rows(step)), hide_index=True, width="stretch")
    if step.get("candidates"):
        st.plotly_chart(vz_ar.candidates_figure(step), key=f"{prefix}_cands", width="stretch")
