"""KV-cache eviction: which entries each policy keeps, the attention that drives it, memory and quality."""
import json
from pathlib import Path

import streamlit as st

from engine import methods, remote
from engine.errors import LabError, MethodError
from engine.methods.kv.policies import POLICIES
from ui import branches, common, controls, render_kv
from ui.options import max_new_tokens_widget, option_widgets
from viz import kv as vz
from viz.safe import md_text

KEY_A, KEY_B = "runner_kv_a", "runner_kv_b"
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results_kv.json"
DEFAULT_PROMPT = (
    "Read this passage and continue it in the same style.\n\n"
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, and to assume among the powers of the earth, the separate and equal "
    "station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of "
    "mankind requires that they should declare the causes which impel them to the separation.")
RUN_KNOBS = ("policy", "budget", "prefill_budget", "watch_layers", "compare_full")


def knob_helps() -> dict:
    """Tooltips for the knobs whose limits depend on the others (each option's own text first)."""
    o = methods.get("kv").options
    return {
        "window_size": o["window_size"].describe() + ". It must be smaller than what is kept (the budget, or what "
                       "compression_ratio keeps): with the default budget of 48, lower it or raise the budget above it",
        "compression_ratio": o["compression_ratio"].describe() + ". kvpress's presses work this way: e.g. 0.5 keeps "
                             "half of the prompt, and the cache then grows by one entry per generated token",
    }


def sidebar():
    """The policy and its knobs (generated from the method's option specs), and the second policy."""
    with st.sidebar:
        st.header("Policy")
        opts = option_widgets("kv", "kv", only=RUN_KNOBS)
        max_new = max_new_tokens_widget("kv", 32)
        with st.expander("Policy knobs", expanded=False):
            opts.update(option_widgets("kv", "kv", st.container(), skip=RUN_KNOBS, fixed=opts, helps=knob_helps()))
        st.header("Side by side")
        two = st.checkbox("run a second policy on the same prompt", False, key="kv_two")
        policy_b = st.selectbox("second policy", list(POLICIES), index=POLICIES.index("streaming_llm"),
                                key="kv_policy_b", disabled=not two)
        opts_b = dict(opts, policy=policy_b)
        if two:  # knobs the second policy has and the first does not
            extra = option_widgets("kv", "kv", st.container(), skip=RUN_KNOBS, fixed=opts_b, helps=knob_helps())
            opts_b.update(extra)
            opts_b = {k: v for k, v in opts_b.items() if methods.get("kv").options[k].applies(opts_b)}
    return opts, opts_b, max_new, two


def quality_on_prompt(lm, prompt, opts, ready):
    with st.expander("Measure on this prompt (teacher forcing; takes a while on CPU)"):
        qpols = st.multiselect("policies", [p for p in POLICIES if p != "full"],
                               default=["random", "streaming_llm", "h2o", "tova"], key="kv_q_pols")
        fr_text = st.text_input("budgets as fractions of the prompt", "0.25,0.5", key="kv_q_fracs", max_chars=200)
        if st.button("Measure quality", key="kv_q_go", disabled=not ready or not qpols):
            try:
                try:
                    fracs = [float(x) for x in fr_text.split(",") if x.strip()]
                except ValueError:
                    raise MethodError("Budgets must be fractions strictly between 0 and 1, e.g. 0.25,0.5.") from None
                with st.spinner("Teacher forcing every policy..."):
                    st.session_state["kv_q_rows"] = remote.decoder().task(
                        lm, "kv_quality", prompt=prompt, policies=list(qpols), fractions=fracs, options=opts)
            except LabError as e:
                st.error(md_text(e, 1000))
        rows = st.session_state.get("kv_q_rows")
        if rows:
            st.plotly_chart(vz.quality_figure(rows), key="kv_quality_prompt", width="stretch")


def benchmark_figure():
    st.divider()
    st.subheader("Quality against the full cache, by budget")
    st.caption("Teacher forcing: the text is fed token by token, each policy's cache is evicted back to the budget "
               "after every token, and its next-token argmax is compared with the full cache's. Budgets are "
               "fractions of the text's length; predictions before the first eviction are not counted.")
    if RESULTS.exists():
        try:
            bench = json.loads(RESULTS.read_text())
            st.plotly_chart(vz.quality_figure(bench["quality"]), key="kv_quality_bench", width="stretch")
            st.caption(f"benchmarks/kv_quality.py on {bench['meta']['tokens']} tokens of a public-domain text "
                       f"({bench['meta'].get('date', '')}); see benchmarks/results_kv.md.")
        except (ValueError, KeyError, TypeError) as e:
            st.warning(f"The committed benchmark results could not be read: {e}")


def main():
    lm = common.page_header(
        "KV cache",
        "Decode with a KV cache that really shrinks: after every token each layer (and head) keeps only `budget` "
        "entries, chosen by an eviction policy from the attention it captures. The maps show which positions "
        "stay, the attention of each new token over what is left, the scores behind each eviction, the memory "
        "saved and how often the next-token choice still agrees with the full cache.")
    opts, opts_b, max_new, two = sidebar()
    cfg = common.sampling_controls("kv")
    bps = controls.breakpoint_controls("kv", events=("kv_evicted",), keys=(KEY_A, KEY_B))
    prompt = common.prompt_box("kv_prompt", DEFAULT_PROMPT, height=140)

    ready = lm is not None and cfg is not None
    c1, c2, _ = st.columns([1, 1, 4])
    go_clicked = c1.button("Generate", type="primary", key="kv_go", disabled=not ready)
    paused_clicked = c2.button("Start paused", key="kv_go_paused", disabled=not ready,
                               help="prefill, then wait: use Step to decode (and evict) one token at a time")
    if (go_clicked or paused_clicked) and ready:
        ra = controls.start(KEY_A, lm, "kv", prompt, breakpoints=bps, start_paused=paused_clicked,
                            max_new_tokens=max_new, sampling=cfg, options=opts)
        if two and ra is not None:
            controls.start(KEY_B, lm, "kv", prompt, breakpoints=bps, start_paused=paused_clicked,
                           max_new_tokens=max_new, sampling=cfg, options=opts_b)
        elif controls.runner(KEY_B) is not None:
            controls.runner(KEY_B).cancel()
            st.session_state.pop(KEY_B, None)

    rb = controls.runner(KEY_B) if two else None
    if rb is None:
        controls.step_controls(KEY_A)
        controls.live(KEY_A, lambda r: render_kv.render(r, "kva"))
        branches.section(KEY_A, lm, "kv")     # what-if forks: another policy / budget from a step on
        branches.download_button(KEY_A)
    else:
        left, right = st.columns(2)
        with left:
            controls.step_controls(KEY_A)
            controls.live(KEY_A, lambda r: render_kv.render(r, "kva", compact=True))
            controls.download_button(KEY_A)
        with right:
            controls.step_controls(KEY_B)
            controls.live(KEY_B, lambda r: render_kv.render(r, "kvb", compact=True))
            controls.download_button(KEY_B)
        ra = controls.runner(KEY_A)
        if ra is not None and ra.trace.steps and rb.trace.steps:
            both = {str(ra.trace.meta["params"].get("policy")) + " (left)": ra.trace.steps,
                    str(rb.trace.meta["params"].get("policy")) + " (right)": rb.trace.steps}
            a, b = st.columns(2)
            a.plotly_chart(vz.memory_figure(both), key="kv_mem_both", width="stretch")
            b.plotly_chart(vz.agreement_figure(both), key="kv_agr_both", width="stretch")
    benchmark_figure()
    if lm is not None:
        quality_on_prompt(lm, prompt, opts, ready)


common.run_page(main)
