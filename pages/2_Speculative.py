"""Speculative decoding: the draft tree of each round, the target's decisions, acceptance over time."""
import streamlit as st

from ui import branches, common, controls, render_speculative
from ui.options import max_new_tokens_widget, option_widgets

KEY = "runner_spec"
P = "spec"
DEFAULT_PROMPT = ("Summarise the following text, reusing its wording.\n\nThe river rises in the hills north of the "
                  "town and flows south through farmland before reaching the sea. In spring the river floods the "
                  "low fields, and farmers plant rice in the flooded fields. In summer the river is low and the "
                  "fields are dry.")
OPEN_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
# The example prompts, and the drafter that measured fastest on each kind (benchmarks/RESULTS.md: prompt lookup
# on input-grounded prompts, 1.7x AR; the trained EAGLE head, chain of 4, on open-ended chat, ~1.0x AR, tau 1.9;
# its dynamic tree reaches tau 2.5-2.8 but is slower on a 2-core CPU).
EXAMPLES = {"input-grounded (summarise a text)": (DEFAULT_PROMPT, {"drafter": "prompt_lookup"}),
            "open-ended chat": (OPEN_PROMPT, {"drafter": "eagle", "tree": "chain", "num_assistant_tokens": 4})}


def _example():
    prompt, opts = EXAMPLES[st.session_state[f"{P}_example"]]
    st.session_state[f"{P}_prompt"] = prompt
    for k, v in opts.items():
        st.session_state[f"{P}_{k}"] = v


# the options drawn in the "Draft length and verification" expander; the rest go in the sidebar
ADVANCED = ("schedule", "confidence_threshold", "verify", "typical_epsilon", "typical_alpha", "dense_mask_max")


def main():
    lm = common.page_header(
        "Speculative decoding",
        "A drafter proposes a chain or a tree of tokens; the target model checks all of them in ONE forward pass "
        "with a tree attention mask (each node sees the prefix and its own ancestors), accepts the longest valid "
        "path, and appends its own next token. The KV cache then keeps only the accepted path.")
    with st.sidebar:
        st.header("Settings")
        st.radio("Example", list(EXAMPLES), key=f"{P}_example", on_change=_example, horizontal=True,
                 help="sets the prompt and the drafter that measured fastest on that kind of prompt")
        max_new = max_new_tokens_widget(P, 48)
        opts = option_widgets("speculative", P, skip=ADVANCED)
        with st.expander("Draft length and verification"):
            opts.update(option_widgets("speculative", P, st.container(), only=ADVANCED, fixed=opts))
    cfg = common.sampling_controls(P)
    bps = controls.breakpoint_controls(P, events=("draft_rejected",), keys=KEY)
    prompt = common.prompt_box(f"{P}_prompt", DEFAULT_PROMPT, height=140)

    c1, c2, c3, _ = st.columns([1, 1, 2, 3])
    ready = lm is not None and cfg is not None
    go_clicked = c1.button("Generate", type="primary", key=f"{P}_go", disabled=not ready)
    step_clicked = c2.button("Start paused", key=f"{P}_go_paused", disabled=not ready,
                             help="prefill, then wait: use Step to run one draft-and-verify round at a time")
    if (go_clicked or step_clicked) and ready:
        controls.start(KEY, lm, "speculative", prompt, breakpoints=bps, start_paused=step_clicked,
                       max_new_tokens=max_new, sampling=cfg, options=opts)

    controls.step_controls(KEY)
    r = controls.runner(KEY)
    if r is not None and r.finished and r.trace.steps and not r.trace.extra.get("vs_ar"):
        if c3.button("Measure speedup vs autoregressive", key=f"{P}_speedup",
                     help="decode the same prompt with speculative decoding and with autoregressive decoding, "
                          "neither recording, and compare compute-only tokens/s and the outputs"):
            controls.measure_vs_ar(lm, r)
            st.rerun()
    elif r is not None and isinstance(r.trace.extra.get("vs_ar"), dict):
        sp = r.trace.extra["vs_ar"]
        ident, why = render_speculative.identical_metric(sp, r.trace.meta)
        c3.caption(f"Measured: {sp['speedup']:.2f}x autoregressive's speed" if sp.get("speedup") else "Measured",
                   help=why)
        c3.caption(f"output identical to greedy: **{ident}**", help=why)
    controls.live(KEY, lambda rr: render_speculative.render(rr, P))
    branches.section(KEY, lm, P)     # what-if forks: another method / options from a step on
    branches.download_button(KEY)


common.run_page(main)
