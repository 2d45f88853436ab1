"""The grammar block of a grammar-constrained step, drawn below the AR view's figures (ui/render_ar.py EXTRAS):
what the model wanted against what it got, the candidates before and after the mask, and how much of the
vocabulary and of the model's probability the grammar kept over the run."""
import pandas as pd
import streamlit as st

from viz import grammar as vz
from viz import legend
from viz.safe import md_text


def _p(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_extra(r, prefix: str) -> None:
    steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    step = steps[cur]
    g = vz.block(step)
    if not g:
        return
    st.subheader("Grammar")
    share = g.get("allowed_share") or 0.0
    st.markdown(md_text(f"Allowed here: {g.get('allowed', 0):,} of {g.get('vocab', 0):,} tokens ({share:.3%})"
                        f" · removed mass {_p(g.get('removed_mass'))}"
                        + (" · forced: one token allowed" if g.get("forced") else "")
                        + (" · the text so far is a complete sentence of the grammar" if g.get("accepting") else "")))
    wanted, got = g.get("wanted_text"), step.get("token_text")
    if g.get("wanted_id") == step.get("token_id"):
        st.markdown(md_text(f"The model wanted {wanted!r} (p={_p(g.get('wanted_p'))}) and got it."))
    else:
        st.markdown(md_text(f"The model wanted {wanted!r} (p={_p(g.get('wanted_p'))}); it got {got!r} "
                            f"(p={_p(g.get('chosen_p_unconstrained'))} without the mask, {_p(step.get('prob'))} "
                            "with it)."))
    s = vz.run_summary(steps, cur)
    if s["stop"]:
        (st.success if s["complete"] else st.warning)(md_text(f"Stopped: {s['stop']}", 400))
    st.caption(md_text(f"up to this step: {s['steps']} steps, {s['forced']} forced, the model's own choice blocked "
                       f"at {s['blocked']}, mean removed mass {_p(s['mean_removed'])}"))
    st.markdown(legend.legend_html({"allowed": vz.ALLOWED, "blocked": vz.BLOCKED, "chosen": vz.CHOSEN,
                                    "model p without the mask": vz.MODEL}), unsafe_allow_html=True)
    a, b = st.columns([1, 1])
    a.plotly_chart(vz.candidates_figure(step), key=f"{prefix}_grammar_cands", width="stretch")
    b.plotly_chart(vz.run_figure(steps, cur), key=f"{prefix}_grammar_run", width="stretch")
    rows = vz.wanted_rows(steps, cur)
    if rows:
        st.caption("wanted vs got, the latest steps first")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
