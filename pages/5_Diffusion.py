"""Diffusion language models: iterative unmasking, remasking rules, and two rules side by side."""
import streamlit as st

from engine import methods, models, remote
from engine.diffusion import smol, variants
from engine.diffusion import rules as R
from engine.errors import LabError
from ui import branches, common, controls, render_diffusion
from ui.options import max_new_tokens_widget, option_widgets
from viz.safe import md_text

KEY = "runner_diffusion"
KEY_A, KEY_B = "runner_diffusion_a", "runner_diffusion_b"
INTRO = ("A masked diffusion LM writes the whole answer at once: it starts from [MASK] tokens and, step by step, "
         "commits the predictions a remasking rule picks (semi-autoregressive blocks decode left to right). With "
         "the embedded SmolLM2 the page runs smol-diffusion: SmolLM2-135M turned into a diffusion LM with Dream's "
         "recipe (a 9.8 MB LoRA delta shipped in models/). The sidebar offers the other trained variants whose "
         "files are in models/ (smol-diffusion-fast ships: parallel commits; four more can be rebuilt with "
         "training/rebuild_variant.py), what each costs in its help. LLaDA-8B-Instruct and "
         "Dream-v0-Instruct-7B run here too when loaded on the home page (tick 'trust remote code' only if you "
         "trust their code).")
LIMITS = ("What the 135M diffusion model can and cannot do (benchmarks/diffusion_quality.py --settings all, 6 "
          "held-out instructions, 64 tokens): it writes fluent-looking sentences on everyday topics, but it loops. "
          "In every setting measured, 50-83% of its answers repeat a run of four words ('A fox in the snow, A fox in "
          "the snow, ...'); SmolLM2-135M itself, greedy, does too (67%), so this is the size of the model more than "
          "the decoder. Poems and lists loop almost always; longer answers drift into filler and broken words "
          "('the last wis of the sun'). No rule, temperature (0.7, top-p 0.95) or block length (64, 16, 8) fixed it; "
          "the par and fast weights repeat the fewest words (25-29% of the words inside a repeat vs 36-57% with the "
          "default weights). Treat the text as a picture of how diffusion decoding proceeds, not as answers.")
SIDEBAR = ("rule", "threshold", "steps", "block_length", "prefix_cache", "stop_at_eos")
PREFIX_CACHE_HELP = (
    "Fast-dLLM's prefix KV cache: the keys / values of the committed blocks are computed once and reused. "
    "It CHANGES THE OUTPUT on this model: the cached prefix was computed while the later positions were still "
    "[MASK], and with bidirectional attention it never sees what was committed after it. Measured "
    "(benchmarks/diffusion_quality.py --prefix-cache; low_confidence, gen_length 32, blocks of 8, greedy): 21, 0 "
    "and 1 of 32 answer positions differed on three held-out instructions. It saves compute (fewer tokens "
    "forwarded per step), not steps; exact only for a causal model or one step per block")


def weights_choices() -> list[str]:
    """The embedded variants whose files exist (engine.diffusion.smol.VARIANTS)."""
    return [smol.adapter_name(v) for v in smol.VARIANTS if (smol.VARIANTS[v][0] / "delta.safetensors").exists()]


def weights_help() -> str:
    """What each offered variant buys and costs, and how to get the others (engine.diffusion.variants)."""
    return variants.weights_help([v for v in smol.VARIANTS if smol.adapter_name(v) in weights_choices()])


def weights_label(adapter: str) -> str:
    for v, (_, desc) in smol.VARIANTS.items():
        if smol.adapter_name(v) == adapter:
            return desc
    return adapter


def use_measured_2x_setting():
    """The setting benchmarks/diffusion.py measured: smol-diffusion-fast, Fast-dLLM threshold 0.7, one block of
    64, greedy, against one token per step on the same weights (2.06x fewer steps at +6% judged perplexity)."""
    st.session_state.update({
        "dlm_adapter": "embedded-fast", "dlm_adapter_a": "embedded-fast", "dlm_adapter_b": "embedded-fast",
        "dlm_rule": "threshold", "dlm_rule_a": "low_confidence", "dlm_rule_b": "threshold",
        "dlm_threshold": 0.7, "dlm_gen_length": 64, "dlm_block_length": 0, "dlm_steps": 0, "dlm_mode": "greedy"})


def sidebar(embedded: bool):
    with st.sidebar:
        st.header("Diffusion settings")
        fixed = {}
        if embedded:
            st.button("Use the measured ~2x setting", key="dlm_preset_fast", on_click=use_measured_2x_setting,
                      help="smol-diffusion-fast, threshold 0.7, gen_length 64 in one block, greedy; 'Two rules side "
                           "by side' then compares it with one token per step (benchmarks: 2.06x fewer steps at +6% "
                           "judged perplexity over 48 prompts, half of them one-line; a 64-token story gains less, "
                           "~1.3x)")
            opts = option_widgets("diffusion", "dlm", only=("adapter",), choices={"adapter": weights_choices()},
                                  formats={"adapter": weights_label}, helps={"adapter": weights_help()})
            fixed.update(opts)
        gen_length = max_new_tokens_widget("dlm", 32, hi=methods.get("diffusion").options["gen_length"].max,
                                           key="dlm_gen_length", label="gen_length (answer tokens)")
        opts = option_widgets("diffusion", "dlm", only=SIDEBAR, fixed=fixed, helps={"prefix_cache": PREFIX_CACHE_HELP})
        with st.expander("More rule parameters"):
            opts.update(option_widgets("diffusion", "dlm", st.container(), skip=SIDEBAR + ("adapter", "gen_length"),
                                       fixed=opts))
    return opts, gen_length


def _index(key: str, options: list, default) -> dict:
    """index= for a select, unless the session holds its value (set by the ~2x button): then none."""
    if key in st.session_state and st.session_state[key] in options:
        return {}
    st.session_state.pop(key, None)
    return {"index": options.index(default) if default in options else 0}


def side_options(opts: dict, rule: str, adapter: str | None) -> dict:
    """The shared settings with one side's rule (and weights); options the rule does not use are dropped."""
    o = dict(opts, rule=rule)
    if adapter:
        o["adapter"] = adapter
    spec = methods.get("diffusion")
    values = spec.values(o)
    return {k: v for k, v in o.items() if spec.options[k].applies(values)}


def main():
    lm = common.page_header("Diffusion", INTRO)
    st.caption(LIMITS)
    embedded = lm is not None and lm.name == models.EMBEDDED
    opts, gen_length = sidebar(embedded)
    cfg = common.sampling_controls("dlm")
    bps = controls.breakpoint_controls("dlm", events=("remasked",), keys=KEY)
    prompt = common.prompt_box("dlm_prompt", "Write a short story about a lost cat.")

    ready = lm is not None and cfg is not None
    if lm is not None:
        try:  # the diffusion model behind the loaded one (first use merges the shipped delta, a few seconds)
            with st.spinner("Preparing the diffusion model..."):
                dlm = remote.decoder().task(lm, "diffusion_model", adapter=opts.get("adapter", "auto"))
            st.sidebar.caption("Diffusion model")
            st.sidebar.text(f"{dlm['name']}\nmask id {dlm['mask_id']}, "
                            f"{'logits shifted by one (Dream-style)' if dlm['shift'] else 'no shift (LLaDA-style)'}")
        except LabError as e:
            st.error(md_text(e, 1000))
            ready = False
    single, compare = st.tabs(["One rule, step by step", "Two rules side by side"])

    with single:
        c1, c2, _ = st.columns([1, 1, 4])
        go_clicked = c1.button("Generate", type="primary", key="dlm_go", disabled=not ready)
        paused_clicked = c2.button("Start paused", key="dlm_go_paused", disabled=not ready,
                                   help="wait before the first step: use Step to denoise one step at a time")
        if (go_clicked or paused_clicked) and ready:
            controls.start(KEY, lm, "diffusion", prompt, breakpoints=bps, start_paused=paused_clicked,
                           max_new_tokens=gen_length, sampling=cfg, options=opts)
        controls.step_controls(KEY)
        controls.live(KEY, render_diffusion.render)
        branches.section(KEY, lm, "dlm")     # what-if forks: a canvas edit or another rule from a step on
        branches.download_button(KEY)

    with compare:
        sel_a, sel_b = st.columns(2)      # the choices; the runs' views go in a second pair below the buttons
        rules = list(R.RULES)
        rule_a = sel_a.selectbox("left rule", rules, key="dlm_rule_a", **_index("dlm_rule_a", rules, "low_confidence"))
        rule_b = sel_b.selectbox("right rule", rules, key="dlm_rule_b", **_index("dlm_rule_b", rules, "threshold"))
        w_a = w_b = None
        if embedded:  # e.g. the same rule on both sets of weights: what certainty forcing buys
            choices = weights_choices()
            here = opts.get("adapter", choices[0])
            w_a = sel_a.selectbox("left weights", choices, format_func=weights_label, key="dlm_adapter_a",
                                  **_index("dlm_adapter_a", choices, here))
            w_b = sel_b.selectbox("right weights", choices, format_func=weights_label, key="dlm_adapter_b",
                                  **_index("dlm_adapter_b", choices, here))
        if st.button("Run both on the prompt", key="dlm_compare_go", disabled=not ready) and ready:
            for k, rname, w in ((KEY_A, rule_a, w_a), (KEY_B, rule_b, w_b)):
                controls.start(k, lm, "diffusion", prompt, max_new_tokens=gen_length, sampling=cfg,
                               options=side_options(opts, rname, w))
        if controls.runner(KEY_A) is not None and controls.runner(KEY_B) is not None:
            both = st.columns([1, 1, 4])     # the two runs in step: the same step number on both sides
            both[0].button("◀ Both back", key="dlm_both_back", on_click=_both, args=("back",),
                           help="show the previous step of both runs (pauses them)")
            both[1].button("Both step ▶", key="dlm_both_fwd", on_click=_both, args=("fwd",),
                           help="the next step of both runs (recorded, or computed: exactly one more each)")
        a_col, b_col = st.columns(2)
        with a_col:
            controls.step_controls(KEY_A, compact=True)
            controls.live(KEY_A, lambda r: render_diffusion.render(r, "dlm_a", compact=True))
            controls.download_button(KEY_A)
        with b_col:
            controls.step_controls(KEY_B, compact=True)
            controls.live(KEY_B, lambda r: render_diffusion.render(r, "dlm_b", compact=True))
            controls.download_button(KEY_B)


def _both(action: str) -> None:
    """Both side-by-side runs one step back or forward (the step controls' own callback, on each)."""
    for k in (KEY_A, KEY_B):
        controls._act(k, action)


common.run_page(main)
