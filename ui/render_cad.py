"""The context-aware decoding block under the AR view: one step's three distributions and the run's KL."""
import streamlit as st

from viz import cad as vz
from viz.safe import md_text


def render_extra(r, prefix: str) -> None:
    steps, cur = r.trace.steps, r.cursor
    step = steps[cur]
    n = vz.changed_count(steps, cur)
    st.caption(f"Context-aware decoding: the contrast chose differently from the model with the context at {n} of "
               f"{cur + 1} steps so far." + (f" This step: {md_text(repr(step.get('token_text', '')))}."
                                              if "changed" in (step.get("events") or []) else ""))
    a, b = st.columns([1, 1])
    a.plotly_chart(vz.step_figure(step), key=f"{prefix}_cad_step", width="stretch")
    b.plotly_chart(vz.run_figure(steps, cur), key=f"{prefix}_cad_run", width="stretch")
