"""Autoregressive decoding: one token per forward, every candidate and its probability."""
import streamlit as st

from ui import common, controls
from viz import ar as vz
from viz import legend

KEY = "runner_ar"

lm = common.page_header(
    "Autoregressive",
    "The baseline: one forward pass per token with a KV cache. Each step shows the model's top candidates "
    "before and after the sampling warpers, and the token that was chosen.")

with st.sidebar:
    st.header("Settings")
    max_new = st.number_input("max new tokens", 1, 1024, 64, key="ar_max_new")
    top_c = st.number_input("candidates recorded per step", 2, 50, 10, key="ar_topc")
cfg = common.sampling_controls("ar")
bps = controls.breakpoint_controls("ar")
prompt = common.prompt_box("ar_prompt")

c1, c2, _ = st.columns([1, 1, 4])
go_clicked = c1.button("Generate", type="primary", key="ar_go", disabled=lm is None or cfg is None)
step_clicked = c2.button("Start paused", key="ar_go_paused", disabled=lm is None or cfg is None,
                         help="prefill, then wait: use Step to decode one token at a time")
if (go_clicked or step_clicked) and lm is not None and cfg is not None:
    controls.start(KEY, lm, "ar", prompt, breakpoints=bps, start_paused=step_clicked,
                   max_new_tokens=int(max_new), sampling=cfg, options={"top_candidates": int(top_c)})

controls.step_controls(KEY)


def render(r):
    steps = r.trace.steps
    cur = r.cursor
    step = steps[cur]
    controls.metrics_row(r, {"perplexity": f"{vz.perplexity(steps[: cur + 1]):.2f}"})
    colour_by = st.radio("colour tokens by", ["prob", "entropy"], horizontal=True, key="ar_colour")
    st.markdown(legend.legend_html({"p ≈ 0 / high entropy": legend.prob_colour(0.0), "p ≈ 0.5": legend.prob_colour(0.5),
                                    "p ≈ 1 / low entropy": legend.prob_colour(1.0), "current step": "#000000"}),
                unsafe_allow_html=True)
    st.markdown(vz.token_stream_html(steps, cur, colour_by), unsafe_allow_html=True)
    a, b = st.columns([1, 1])
    a.plotly_chart(vz.candidates_figure(step), key=f"ar_cands_{cur}", width="stretch")
    b.plotly_chart(vz.prob_entropy_figure(steps, cur), key=f"ar_pe_{cur}", width="stretch")


controls.live(KEY, render)
controls.download_button(KEY)
