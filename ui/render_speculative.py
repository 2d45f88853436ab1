"""The Speculative view's figures for one round of a trace (live page and replay share it)."""
import pandas as pd
import streamlit as st

from ui import controls, renderers
from viz import legend
from viz import speculative as vz
from viz.safe import md_text


def identical_metric(vs_ar: dict, meta: dict) -> tuple[str, str]:
    """engine.measure.vs_autoregressive's verdict on the output, as a metric and its help."""
    ident = vs_ar.get("identical")
    if ident is True:
        return "yes", "the re-run's output equals greedy autoregressive decoding token for token"
    if ident is False:
        return "NO", "the re-run's output differs from greedy autoregressive decoding (a bug for a lossless rule)"
    why = ("sampling: outputs are draws, not expected to be identical"
           if (meta.get("params", {}).get("sampling") or {}).get("temperature") else
           "a lossy acceptance rule: not expected to equal greedy")
    return "n/a", why


TAU_HELP = ("tau = tokens committed / rounds, the target's own token of each round (bonus or correction) "
            "included: plain decoding scores 1.00. EAGLE's and Medusa's papers report this 'average acceptance "
            "length' with the bonus token too; Spec-Bench's 'mean accepted tokens' is the same figure. A draft-only "
            "count (accepted drafted tokens per round) is tau - 1.")


def render(r, prefix: str = "spec") -> None:
    """`r` is a Runner or a replay view: anything with .trace and .cursor."""
    steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    step = steps[cur]
    s = vz.summary_at(r.trace, cur)
    extra = {"tau (tokens / round)": (f"{s['tau']:.2f}", TAU_HELP),
             "acceptance": "-" if s["acceptance"] is None else f"{s['acceptance']:.0%}",
             "draft forwards": s["draft_forwards"]}
    sp = r.trace.extra.get("vs_ar")
    rerun = ()
    if isinstance(sp, dict):
        if sp.get("speedup"):
            extra["speedup vs AR"] = (f"{sp['speedup']:.2f}x", "compute-only tokens/s against autoregressive decoding "
                                      "of the same prompt, both re-run without recording")
        extra["same as greedy"] = identical_metric(sp, r.trace.meta)
        rerun = ("speedup vs AR", "same as greedy")
    controls.metrics_row(r, extra, rerun=rerun)
    summ = r.trace.extra.get("summary", {})
    lossy = summ.get("lossless") is False or step.get("lossless") is False
    st.caption(f"rule: **{md_text(step.get('rule', '?'))}**{' (lossy: typical acceptance)' if lossy else ' (lossless)'}"
               f" · proposals: {'sampled from q' if step.get('stochastic') else 'top-ranked (point masses)'}"
               f" · this round: draft {1000 * (step.get('draft_s') or 0):.0f} ms, verify "
               f"{1000 * (step.get('verify_s') or 0):.0f} ms, KV entries dropped {step.get('kv_dropped', 0)}")
    st.markdown(legend.legend_html(vz.stream_legend()), unsafe_allow_html=True)
    if not renderers.live(r):
        st.markdown(vz.stream_html(steps, cur), unsafe_allow_html=True)
    renderers.full_text(steps, cur, vz.stream_tokens)
    if step.get("nodes"):
        a, b = st.columns([3, 2])
        a.plotly_chart(vz.tree_figure(step), key=f"{prefix}_tree", width="stretch")
        b.plotly_chart(vz.mask_figure(step), key=f"{prefix}_mask", width="stretch")
        with st.expander("nodes of this round (q: draft probability, p: target probability, u: uniform draw)"):
            st.dataframe(pd.DataFrame(vz.round_table(step)), hide_index=True, width="stretch")
    c, d = st.columns([3, 2])
    c.plotly_chart(vz.acceptance_figure(steps, cur), key=f"{prefix}_acc", width="stretch")
    rates = vz.acceptance_by_depth_at(r.trace, cur)
    if rates:
        d.plotly_chart(vz.depth_figure(rates), key=f"{prefix}_depth", width="stretch")
    if any(x.get("lens") for x in steps[: cur + 1]):   # recorded with the logit_lens option
        st.plotly_chart(vz.lens_figure(steps, cur), key=f"{prefix}_lens", width="stretch")
    controls.vs_ar_table(r)
