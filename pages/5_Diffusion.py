"""Diffusion language models: iterative unmasking, remasking rules, and two rules side by side."""
import streamlit as st

from engine import models
from engine.diffusion import adapters
from engine.diffusion import rules as R
from engine.methods import MethodError
from ui import common, controls, render_diffusion

KEY = "runner_diffusion"
KEY_A, KEY_B = "runner_diffusion_a", "runner_diffusion_b"

lm = common.page_header(
    "Diffusion",
    "A masked diffusion LM writes the whole answer at once: it starts from [MASK] tokens and, step by step, "
    "commits the predictions a remasking rule picks (semi-autoregressive blocks decode left to right). "
    "With the embedded SmolLM2 the page runs smol-diffusion: SmolLM2-135M turned into a diffusion LM with "
    "Dream's recipe (a 9.8 MB LoRA delta shipped in models/). The sidebar offers five more trained variants "
    "that trade diversity for parallelism (what each costs is in its help). LLaDA-8B-Instruct and "
    "Dream-v0-Instruct-7B run here too when loaded on the home page (tick 'trust remote code' only if you "
    "trust their code).")

RULE_NAMES = list(R.RULES)
EMBEDDED = lm is not None and lm.name == models.EMBEDDED
WEIGHTS = {"embedded": "smol-diffusion (default)", "embedded-cf": "smol-diffusion-cf (certainty-forced)",
           "embedded-cal": "smol-diffusion-cal (calibrated, ~1.7x parallel)",
           "embedded-div": "smol-diffusion-div (calibrated, diverse; ~1.9x in one block)",
           "embedded-par": "smol-diffusion-par (parallel on new text; ~1.7x at 0.9, one block)",
           "embedded-fast": "smol-diffusion-fast (~2x at threshold 0.7, one block)"}


def use_measured_2x_setting():
    """The setting benchmarks/diffusion.py measured: smol-diffusion-fast, Fast-dLLM threshold 0.7, one block of
    64, greedy, against one token per step on the same weights (2.06x fewer steps at +6% judged perplexity)."""
    ss = st.session_state
    ss.update({"dlm_weights": "embedded-fast", "dlm_weights_a": "embedded-fast", "dlm_weights_b": "embedded-fast",
               "dlm_rule": "threshold", "dlm_rule_a": "low_confidence", "dlm_rule_b": "threshold",
               "dlm_threshold": 0.7, "dlm_gen_length": 64, "dlm_block_length": 0, "dlm_steps": 0,
               "dlm_mode": "greedy"})


with st.sidebar:
    st.header("Diffusion settings")
    weights = "auto"
    if EMBEDDED:
        st.button("Use the measured ~2x setting", key="dlm_preset_fast", on_click=use_measured_2x_setting,
                  help="smol-diffusion-fast, threshold 0.7, gen_length 64 in one block, greedy; 'Two rules side by "
                       "side' then compares it with one token per step (benchmarks: 2.06x fewer steps at +6% "
                       "judged perplexity over 48 prompts, half of them one-line; a 64-token story gains less, ~1.3x)")
        weights = st.radio("embedded diffusion weights", list(WEIGHTS), format_func=WEIGHTS.get, key="dlm_weights",
                           help="Fast-dLLM threshold 0.9 vs one token per step, and one-block greedy samples' distinct-2 "
                                "(quality bar >= 0.5). default: 1.4x fewer steps with one block, distinct-2 0.62. "
                                "cf (certainty-forcing distillation): 1.56x with blocks of 16, 0.39. "
                                "cal (cf on its own answers + a penalty on confident mistakes): 2.6-2.75x with one block at +4-15%, "
                                "but it loops (0.30). div (cal retrained on sampled answers): 1.8-1.95x with one "
                                "block at +0-4%, 0.51, though ~80% of the tokens it commits two or more at a time "
                                "repeat its own earlier text. par (div + certainty forcing on greedy answers and unlikelihood "
                                "against its own loops): 1.7-1.8x at threshold 0.9 and 2.1-2.2x at 0.75 with one block, "
                                "0.64, most of its parallel commits new text; at 0.75 judged perplexity -1% / +12% on "
                                "two prompt sets but +73% on a third. fast (par + a heavier penalty on confident "
                                "mistakes): at threshold 0.7 with one block (gen_length 64, block_length 0), 2.06x "
                                "fewer steps at +6% judged perplexity over 48 prompts, distinct-2 0.69")
    gen_length = st.number_input("gen_length (answer tokens)", 1, 512, 32, key="dlm_gen_length")
    block_length = st.number_input("block_length (0 = gen_length)", 0, 512, 8, key="dlm_block_length")
    steps = st.number_input("steps (0 = gen_length)", 0, 512, 0, key="dlm_steps",
                            help="spread evenly over the blocks; threshold-style rules stop when a block is full")
    rule = st.selectbox("remasking rule", RULE_NAMES, index=0, key="dlm_rule",
                        format_func=lambda r: f"{r} — {R.RULES[r][1]}")
    threshold = st.slider("threshold (threshold / credit)", 0.05, 1.0, 0.9, 0.05, key="dlm_threshold")
    with st.expander("More rule parameters"):
        anchor = st.slider("LocalLeap anchor", 0.05, 1.0, 0.9, 0.05, key="dlm_anchor")
        relaxed = st.slider("LocalLeap relaxed", 0.05, 1.0, 0.6, 0.05, key="dlm_relaxed")
        radius = st.number_input("LocalLeap radius", 0, 16, 2, key="dlm_radius")
        decay = st.slider("CreditDecoding decay", 0.0, 1.0, 0.7, 0.05, key="dlm_decay")
        alpha = st.slider("CreditDecoding alpha", 0.0, 3.0, 0.6, 0.1, key="dlm_alpha")
        eos_gamma = st.slider("EOS rejection strength", 0.0, 8.0, 3.0, 0.5, key="dlm_eos_gamma")
        cfg_scale = st.slider("classifier-free guidance scale", 0.0, 3.0, 0.0, 0.1, key="dlm_cfg")
    prefix_cache = st.checkbox("Fast-dLLM prefix KV cache", False, key="dlm_prefix_cache",
                               help="reuse the keys/values of the committed prefix within a block; "
                                    "NFE is unchanged, fewer tokens go through the model per step")
    stop_at_eos = st.checkbox("stop once EOS is settled", True, key="dlm_stop_eos")
cfg = common.sampling_controls("dlm")
bps = controls.breakpoint_controls("dlm", events=("remasked",))
prompt = common.prompt_box("dlm_prompt", "Write a short story about a lost cat.")


def options(rule_name: str, adapter: str | None = None) -> dict:
    return {"rule": rule_name, "adapter": adapter or weights, "steps": int(steps), "gen_length": int(gen_length),
            "block_length": int(block_length), "threshold": float(threshold), "cfg_scale": float(cfg_scale),
            "prefix_cache": bool(prefix_cache), "stop_at_eos": bool(stop_at_eos), "anchor": float(anchor),
            "relaxed": float(relaxed), "radius": int(radius), "decay": float(decay), "alpha": float(alpha),
            "eos_gamma": float(eos_gamma)}


ready = lm is not None and cfg is not None
if lm is not None:
    try:  # the diffusion model behind the loaded one (first use merges the shipped delta, a few seconds)
        with st.spinner("Preparing the diffusion model..."):
            dlm = adapters.for_lm(lm, weights)
        st.sidebar.markdown(f"**Diffusion model:** `{dlm.name}`  \n mask id {dlm.mask_id}, "
                            f"{'logits shifted by one (Dream-style)' if dlm.shift else 'no shift (LLaDA-style)'}")
    except MethodError as e:
        st.error(str(e))
        ready = False
single, compare = st.tabs(["One rule, step by step", "Two rules side by side"])

with single:
    c1, c2, _ = st.columns([1, 1, 4])
    go_clicked = c1.button("Generate", type="primary", key="dlm_go", disabled=not ready)
    paused_clicked = c2.button("Start paused", key="dlm_go_paused", disabled=not ready,
                               help="wait before the first step: use Step to denoise one step at a time")
    if (go_clicked or paused_clicked) and ready:
        controls.start(KEY, lm, "diffusion", prompt, breakpoints=bps, start_paused=paused_clicked,
                       max_new_tokens=int(gen_length), sampling=cfg, options=options(rule))
    controls.step_controls(KEY)
    controls.live(KEY, render_diffusion.render)
    controls.download_button(KEY)

with compare:
    a_col, b_col = st.columns(2)
    rule_a = a_col.selectbox("left rule", RULE_NAMES, index=RULE_NAMES.index("low_confidence"), key="dlm_rule_a")
    rule_b = b_col.selectbox("right rule", RULE_NAMES, index=RULE_NAMES.index("threshold"), key="dlm_rule_b")
    w_a = w_b = weights
    if EMBEDDED:  # e.g. the same rule on both sets of weights: what certainty forcing buys
        w_a = a_col.selectbox("left weights", list(WEIGHTS), index=list(WEIGHTS).index(weights),
                              format_func=WEIGHTS.get, key="dlm_weights_a")
        w_b = b_col.selectbox("right weights", list(WEIGHTS), index=list(WEIGHTS).index(weights),
                              format_func=WEIGHTS.get, key="dlm_weights_b")
    if st.button("Run both on the prompt", key="dlm_compare_go", disabled=not ready) and ready:
        for k, rname, w in ((KEY_A, rule_a, w_a), (KEY_B, rule_b, w_b)):
            controls.start(k, lm, "diffusion", prompt, max_new_tokens=int(gen_length), sampling=cfg,
                           options=options(rname, w))
    with a_col:
        controls.live(KEY_A, lambda r: render_diffusion.render(r, "dlm_a", compact=True))
        controls.download_button(KEY_A)
    with b_col:
        controls.live(KEY_B, lambda r: render_diffusion.render(r, "dlm_b", compact=True))
        controls.download_button(KEY_B)
