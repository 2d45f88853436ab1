"""The Diffusion view's figures for one step of a trace (live page and replay share it)."""
import streamlit as st

from ui import controls, renderers
from viz import diffusion as vz
from viz import legend
from viz.safe import md_text


TOKENS_HELP = ("positions committed up to this step; at a finished run's last step, the answer's tokens (up to and "
               "including its first end-of-text)")
LIVE_LABEL_ROWS = 8     # a live grid's rows that carry their tokens as text (the newest); all once it pauses or ends


def render(r, prefix: str = "diffusion", compact: bool = False) -> None:
    """`r` is a Runner or a replay view: anything with .trace and .cursor."""
    steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    step = steps[cur]
    s = vz.summary_at(r.trace, cur)
    summ = r.trace.extra.get("summary", {}) if isinstance(r.trace.extra, dict) else {}
    extra = {"steps": s["steps"], "NFE": s["NFE"], "tokens/step": s["tokens/step"]}
    if summ.get("forwarded_tokens"):
        extra["tokens forwarded"] = summ["forwarded_tokens"]
    if compact:
        if summ.get("model"):
            st.caption(f"{md_text(summ['model'])} · rule {md_text(summ.get('rule', '?'))}")
        st.caption(controls.scope_caption(r, cur, len(steps)))
        compute = (step.get("totals") or {}).get("compute_s", r.trace.counters.compute_s)
        cols = st.columns(4)
        for col, (k, v) in zip(cols, {**extra, "compute s": f"{compute:.2f}"}.items()):
            col.metric(k, v)
    else:
        controls.metrics_row(r, extra, tokens=s["tokens"], tokens_help=TOKENS_HELP)
    lo, hi = step["block_range"]
    st.markdown(f"block {step.get('block', '?')} (positions {lo}–{hi - 1}) · "
                f"step {step.get('step_in_block', '?')} of the block · committed {len(step['new_ids'])} · "
                f"predicted but left masked {step.get('remasked', 0)}"
                + (f" · threshold {step['threshold']:g}" if step.get("threshold") is not None else ""))
    if not renderers.live(r):
        st.markdown(vz.text_html(step), unsafe_allow_html=True)
    st.markdown(legend.legend_html(vz.grid_legend()), unsafe_allow_html=True)
    graded = st.checkbox("grade new tokens by confidence", True, key=f"{prefix}_graded")
    # while live, only the newest rows carry their tokens as text: a fully labelled 64-step grid costs the
    # browser ~1.4 s per redraw on 2 cores, the CPU the decoder runs on (viz.diffusion.denoising_grid)
    label_rows = LIVE_LABEL_ROWS if renderers.live(r) else None
    st.plotly_chart(vz.denoising_grid(steps, cur, graded=graded, label_rows=label_rows), key=f"{prefix}_grid",
                    width="stretch")
    if compact:
        st.plotly_chart(vz.confidence_figure(step), key=f"{prefix}_conf", width="stretch")
        return
    a, b = st.columns([3, 2])
    a.plotly_chart(vz.confidence_figure(step), key=f"{prefix}_conf", width="stretch")
    b.plotly_chart(vz.tokens_per_step_figure(steps, cur), key=f"{prefix}_tps", width="stretch")
