"""Contrastive search's block under the AR view (ui/render_ar.py EXTRAS): the step's candidates, confidence
against degeneration penalty, whether the choice differs from greedy's, and how often it did over the run."""
import pandas as pd
import streamlit as st

from viz import contrastive as vz
from viz.safe import md_text


def render_extra(r, prefix: str) -> None:
    steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    step = steps[cur]
    b = vz.block(step)
    if b is None:
        return
    st.plotly_chart(vz.candidates_figure(step), key=f"{prefix}_contrastive", width="stretch")
    ch, top = vz.chosen(b), vz.likeliest(b)
    if ch is not None and ch["id"] != top["id"]:
        st.caption(f"This step differs from greedy: contrastive search took {md_text(repr(ch.get('text', '')))} "
                   f"instead of the likeliest {md_text(repr(top.get('text', '')))} (its penalty was "
                   f"{vz.fmt(top.get('penalty'))}).")
    else:
        st.caption("This step is greedy's choice: the likeliest token also scored best.")
    s = vz.summary(steps, cur)
    which = ", ".join(map(str, s["which"][:20])) + (" …" if len(s["which"]) > 20 else "")
    st.caption(f"Up to this step, {s['not_likeliest']} of {s['steps']} steps chose a token other than the "
               f"likeliest" + (f" (steps {which})." if which else "."))
    with st.expander("Candidates of this step"):
        st.dataframe(pd.DataFrame(vz.rows(step)), hide_index=True, width="stretch")
