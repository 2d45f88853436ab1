"""KV-cache eviction: which entries each policy keeps, the attention that drives it, memory and quality."""
import json
from pathlib import Path

import streamlit as st

from engine.methods import MethodError
from engine.methods.kv.policies import POLICIES
from ui import common, controls, render_kv
from viz import kv as vz

KEY_A, KEY_B = "runner_kv_a", "runner_kv_b"
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results_kv.json"
DEFAULT_PROMPT = (
    "Read this passage and continue it in the same style.\n\n"
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, and to assume among the powers of the earth, the separate and equal "
    "station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of "
    "mankind requires that they should declare the causes which impel them to the separation.")
HELP = {
    "full": "no eviction (the reference)",
    "random": "random entries, per head (the baseline every policy must beat)",
    "streaming_llm": "the first n_sink tokens + the most recent ones (StreamingLLM)",
    "h2o": "recent window + heavy hitters by accumulated attention (H2O)",
    "snapkv": "recent window + entries voted by the last window_size queries, pooled (SnapKV)",
    "tova": "highest attention from the current token, averaged over heads (TOVA)",
    "l2norm": "keys with the lowest L2 norm (no attention needed)",
    "lazy_eviction": "sinks + recent + entries expected to be re-attended (recurrence interval, LazyEviction-style)",
}

lm = common.page_header(
    "KV cache",
    "Decode with a KV cache that really shrinks: after every token each layer (and head) keeps only `budget` "
    "entries, chosen by an eviction policy from the attention it captures. The maps show which positions stay, "
    "the attention of each new token over what is left, the scores behind each eviction, the memory saved and "
    "how often the next-token choice still agrees with the full cache.")

with st.sidebar:
    st.header("Policy")
    policy = st.selectbox("policy", POLICIES, index=POLICIES.index("h2o"), key="kv_policy",
                          format_func=lambda p: p, help="\n".join(f"- **{k}**: {v}" for k, v in HELP.items()))
    st.caption(HELP[policy])
    budget = st.number_input("budget (entries kept per layer and head)", 1, 16384, 48, key="kv_budget")
    prefill_budget = st.number_input("prefill budget (0 = same as budget, -1 = keep the prompt)", -1, 16384, 0,
                                     key="kv_prefill_budget")
    max_new = st.number_input("max new tokens", 1, 1024, 32, key="kv_max_new")
    with st.expander("Policy knobs", expanded=False):
        n_sink = st.number_input("n_sink (StreamingLLM / LazyEviction sinks)", 0, 64, 4, key="kv_n_sink")
        window = st.number_input("recent window for H2O / LazyEviction (-1 = half the budget)", -1, 16384, -1,
                                 key="kv_window")
        window_size = st.number_input("SnapKV window_size", 1, 1024, 8, key="kv_window_size")
        kernel_size = st.number_input("SnapKV kernel_size (odd)", 1, 63, 5, key="kv_kernel_size")
        hit = st.number_input("LazyEviction hit threshold (x uniform)", 0.01, 100.0, 1.0, key="kv_hit")
        positions = st.radio("positions", ["original", "rerotate"], horizontal=True, key="kv_positions",
                             help="original: keys keep the RoPE rotation of their original position; rerotate: "
                                  "positions inside the cache, keys re-rotated after each eviction (StreamingLLM)")
    watch = st.text_input("watched layers (recorded per head)", "first,mid,last", key="kv_watch",
                          help="'all', 'first,mid,last' or layer indices such as 0,5,29")
    compare_full = st.checkbox("compare with the full cache (shadow run)", True, key="kv_compare_full")
    st.header("Side by side")
    two = st.checkbox("run a second policy on the same prompt", False, key="kv_two")
    policy_b = st.selectbox("second policy", POLICIES, index=POLICIES.index("streaming_llm"), key="kv_policy_b",
                            disabled=not two)
cfg = common.sampling_controls("kv")
bps = controls.breakpoint_controls("kv", events=("kv_evicted",))
prompt = common.prompt_box("kv_prompt", DEFAULT_PROMPT, height=140)


def options_for(p: str) -> dict:
    return {"policy": p, "budget": int(budget), "prefill_budget": int(prefill_budget), "n_sink": int(n_sink),
            "window": int(window), "window_size": int(window_size), "kernel_size": int(kernel_size),
            "hit_threshold": float(hit), "positions": positions, "watch_layers": watch,
            "compare_full": bool(compare_full)}


ready = lm is not None and cfg is not None
c1, c2, _ = st.columns([1, 1, 4])
go_clicked = c1.button("Generate", type="primary", key="kv_go", disabled=not ready)
paused_clicked = c2.button("Start paused", key="kv_go_paused", disabled=not ready,
                           help="prefill, then wait: use Step to decode (and evict) one token at a time")
if (go_clicked or paused_clicked) and ready:
    ra = controls.start(KEY_A, lm, "kv", prompt, breakpoints=bps, start_paused=paused_clicked,
                        max_new_tokens=int(max_new), sampling=cfg, options=options_for(policy))
    if two and ra is not None:
        controls.start(KEY_B, lm, "kv", prompt, breakpoints=bps, start_paused=paused_clicked,
                       max_new_tokens=int(max_new), sampling=cfg, options=options_for(policy_b))
    elif controls.runner(KEY_B) is not None:
        controls.runner(KEY_B).cancel()
        st.session_state.pop(KEY_B, None)

rb = controls.runner(KEY_B) if two else None
if rb is None:
    controls.step_controls(KEY_A)
    controls.live(KEY_A, lambda r: render_kv.render(r, "kva"))
    controls.download_button(KEY_A)
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
        both = {ra.trace.meta["params"]["policy"] + " (left)": ra.trace.steps,
                rb.trace.meta["params"]["policy"] + " (right)": rb.trace.steps}
        a, b = st.columns(2)
        a.plotly_chart(vz.memory_figure(both), key="kv_mem_both", width="stretch")
        b.plotly_chart(vz.agreement_figure(both), key="kv_agr_both", width="stretch")

st.divider()
st.subheader("Quality against the full cache, by budget")
st.caption("Teacher forcing: the text is fed token by token, each policy's cache is evicted back to the budget "
           "after every token, and its next-token argmax is compared with the full cache's. Budgets are fractions "
           "of the text's length; predictions before the first eviction are not counted.")
if RESULTS.exists():
    try:
        bench = json.loads(RESULTS.read_text())
        st.plotly_chart(vz.quality_figure(bench["quality"]), key="kv_quality_bench", width="stretch")
        st.caption(f"benchmarks/kv_quality.py on {bench['meta']['tokens']} tokens of a public-domain text "
                   f"({bench['meta'].get('date', '')}); see benchmarks/results_kv.md.")
    except (ValueError, KeyError) as e:
        st.warning(f"The committed benchmark results could not be read: {e}")
with st.expander("Measure on this prompt (teacher forcing; takes a while on CPU)"):
    qpols = st.multiselect("policies", [p for p in POLICIES if p != "full"],
                           default=["random", "streaming_llm", "h2o", "tova"], key="kv_q_pols")
    fr_text = st.text_input("budgets as fractions of the prompt", "0.25,0.5", key="kv_q_fracs")
    if st.button("Measure quality", key="kv_q_go", disabled=not ready or not qpols):
        from engine.methods.kv.quality import quality_curve
        try:
            fracs = [float(x) for x in fr_text.split(",") if x.strip()]
            if not fracs or not all(0 < f < 1 for f in fracs):
                raise MethodError("Budgets must be fractions strictly between 0 and 1, e.g. 0.25,0.5.")
            ids = lm.encode(prompt)[0].tolist()
            if len(ids) < 24:
                raise MethodError(f"The prompt is only {len(ids)} tokens: give a longer text (at least 24 tokens).")
            with st.spinner("Teacher forcing every policy..."):
                st.session_state["kv_q_rows"] = quality_curve(
                    lm, ids, qpols, fractions=fracs, n_sink=int(n_sink), window=max(1, int(len(ids) * min(fracs)) // 2),
                    window_size=max(1, min(int(window_size), int(len(ids) * min(fracs)) // 4)),
                    kernel_size=int(kernel_size), hit_threshold=float(hit), positions=positions)
        except ValueError as e:
            st.error(str(e))
    rows = st.session_state.get("kv_q_rows")
    if rows:
        st.plotly_chart(vz.quality_figure(rows), key="kv_quality_prompt", width="stretch")
