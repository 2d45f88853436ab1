"""Jacobi and lookahead decoding: the iteration x position trajectory, its dependency graph, the lookahead
window and n-gram pool, and tokens per forward against autoregressive."""
import streamlit as st

from ui import branches, common, controls, render_jacobi
from ui.options import max_new_tokens_widget, option_widgets

KEY = "runner_jacobi"
DEFAULT_PROMPT = ("Write a Python class Point with methods add, sub, mul and div, each returning a new Point.")


def main():
    lm = common.page_header(
        "Jacobi & lookahead",
        "Jacobi decoding guesses a block of future tokens and refines every guess in parallel, one forward pass "
        "per iteration, until the block stops changing; the output equals greedy decoding. Lookahead decoding "
        "runs a 2-D window of such Jacobi trajectories, collects the n-grams they produce in a pool, and "
        "verifies pool n-grams that start with the last token in the same forward pass.")
    with st.sidebar:
        st.header("Method")
        method = st.radio("method", ["jacobi", "lookahead"], horizontal=True, key="jl_method",
                          format_func=lambda m: {"jacobi": "Jacobi", "lookahead": "Lookahead"}[m])
        max_new = max_new_tokens_widget("jl", 48)
        options = option_widgets(method, f"jl_{method}")
    cfg = common.sampling_controls("jl")
    bps = controls.breakpoint_controls("jl", events=("changed", "draft_rejected"), keys=KEY)
    prompt = common.prompt_box("jl_prompt", DEFAULT_PROMPT)

    ready = lm is not None and cfg is not None
    c1, c2, c3, _ = st.columns([1, 1, 1.6, 2.4])
    go_clicked = c1.button("Generate", type="primary", key="jl_go", disabled=not ready)
    paused_clicked = c2.button("Start paused", key="jl_go_paused", disabled=not ready,
                               help="wait before the first iteration: use Step to run one forward pass at a time")
    if (go_clicked or paused_clicked) and ready:
        controls.start(KEY, lm, method, prompt, breakpoints=bps, start_paused=paused_clicked,
                       max_new_tokens=max_new, sampling=cfg, options=options)

    r = controls.runner(KEY)
    if c3.button("Compare with autoregressive", key="jl_vs_ar", disabled=not ready or r is None or not r.finished,
                 help="decode the same prompt with this method and autoregressively, neither recording, and put "
                      "both side by side (compute time only)"):
        controls.measure_vs_ar(lm, r)
    controls.step_controls(KEY)
    controls.live(KEY, lambda rr: render_jacobi.render(rr, "jl"))
    branches.section(KEY, lm, "jl")     # what-if forks: another method / options from a step on
    branches.download_button(KEY)


common.run_page(main)
