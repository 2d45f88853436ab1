"""Search: beam search and diverse beam search, the beam tree step by step and the n-best list."""
import streamlit as st

from engine.sampling import SamplingConfig
from ui import common, controls, render_beam
from ui.options import max_new_tokens_widget, option_widgets

KEY = "runner_beam"


def main():
    lm = common.page_header(
        "Search",
        "Beam search keeps the best few partial answers (beams) at every step instead of one: each beam is "
        "extended by every token, the best continuations by total log-probability are kept, the rest pruned. "
        "Diverse beam search splits the beams into groups and penalises a group for the tokens earlier groups "
        "just chose. Hypotheses that end are scored by log-probability / length ** length_penalty.")
    with st.sidebar:
        st.header("Settings")
        max_new = max_new_tokens_widget("beam", 32)
        ignore_eos = st.checkbox("ignore end-of-text", False, key="beam_ignore_eos",
                                 help="no hypothesis ends before max new tokens (every beam runs to the budget)")
        opts = option_widgets("beam", "beam")
    bps = controls.breakpoint_controls("beam", keys=KEY)
    prompt = common.prompt_box("beam_prompt")

    c1, c2, _ = st.columns([1, 1, 4])
    go_clicked = c1.button("Generate", type="primary", key="beam_go", disabled=lm is None)
    step_clicked = c2.button("Start paused", key="beam_go_paused", disabled=lm is None,
                             help="prefill, then wait: use Step to extend the beams one token at a time")
    if (go_clicked or step_clicked) and lm is not None:
        controls.start(KEY, lm, "beam", prompt, breakpoints=bps, start_paused=step_clicked,
                       max_new_tokens=max_new, sampling=SamplingConfig(), options=opts, ignore_eos=ignore_eos)
    controls.step_controls(KEY)
    controls.live(KEY, render_beam.render)
    controls.download_button(KEY)


common.run_page(main)
