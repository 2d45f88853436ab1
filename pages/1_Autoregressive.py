"""Autoregressive decoding: one token per forward, every candidate and its probability."""
import streamlit as st

from ui import branches, common, controls, render_ar, rewarp
from ui.options import max_new_tokens_widget, option_widgets

KEY = "runner_ar"


def main():
    lm = common.page_header(
        "Autoregressive",
        "The baseline: one forward pass per token with a KV cache. Each step shows the model's top candidates "
        "before and after the sampling warpers, and the token that was chosen.")
    with st.sidebar:
        st.header("Settings")
        max_new = max_new_tokens_widget("ar", 64)
        ignore_eos = st.checkbox("ignore end-of-text", False, key="ar_ignore_eos",
                                 help="keep decoding after the end-of-text token: exactly max new tokens "
                                      "(to watch long runs; the text after it is not an answer)")
        opts = option_widgets("ar", "ar")
    cfg = common.sampling_controls("ar")
    bps = controls.breakpoint_controls("ar", keys=KEY)
    prompt = common.prompt_box("ar_prompt")

    c1, c2, _ = st.columns([1, 1, 4])
    go_clicked = c1.button("Generate", type="primary", key="ar_go", disabled=lm is None or cfg is None)
    step_clicked = c2.button("Start paused", key="ar_go_paused", disabled=lm is None or cfg is None,
                             help="prefill, then wait: use Step to decode one token at a time")
    if (go_clicked or step_clicked) and lm is not None and cfg is not None:
        controls.start(KEY, lm, "ar", prompt, breakpoints=bps, start_paused=step_clicked,
                       max_new_tokens=max_new, sampling=cfg, options=opts, ignore_eos=ignore_eos)
    controls.step_controls(KEY)
    controls.live(KEY, lambda rr: render_ar.render(rr, "ar", pick=lambda step, tok: branches.request(KEY, step, tok)))
    rewarp.section(KEY, "ar")     # other sampling settings over the recorded steps, no forward
    branches.section(KEY, lm, "ar", allow_token=True)     # what-if forks: a clicked candidate bar, the form
    branches.download_button(KEY)


common.run_page(main)
