"""Several decoding methods on the same prompt, live, side by side."""
import pandas as pd
import streamlit as st

from engine import presets, quality
from engine.sampling import SamplingConfig
from ui import common, controls
from viz import compare as vc

st_lm = common.page_header(
    "Compare",
    "Run 2 to 4 configurations on the same prompt at once. The engine interleaves their steps on one model "
    "(one step holds the model at a time, so compute seconds are each run's own). Lossless methods are checked "
    "token for token against autoregressive greedy.")
lm = st_lm
avail = presets.available()
with st.sidebar:
    st.header("Settings")
    max_new = st.number_input("max new tokens", 4, 256, 32, key="cmp_max_new")
chosen = st.multiselect("Configurations (2 to 4)", list(avail),
                        default=[n for n in list(avail)[:3]], max_selections=4, key="cmp_choice")
prompt = common.prompt_box("cmp_prompt", "Repeat this list in reverse order: apple, banana, cherry, date, "
                           "elderberry, fig, grape.")

REF = "cmp_ref"


def keys():
    return st.session_state.get("cmp_keys", [])


if st.button("Run all", type="primary", key="cmp_go", disabled=lm is None):
    if not (2 <= len(chosen) <= 4):
        st.error("Choose between 2 and 4 configurations.")
    else:
        for k in keys() + [REF]:
            r = controls.runner(k)
            if r:
                r.cancel()
        started, names = [], {}
        for i, name in enumerate(chosen):
            p = avail[name]
            k = f"cmp_run_{i}"
            if controls.start(k, lm, p.method, prompt, max_new_tokens=int(max_new), sampling=SamplingConfig(),
                              options=dict(p.options)):
                started.append(k)
                names[k] = name
        if "autoregressive" not in chosen and started:  # the greedy reference, computed, never assumed
            controls.start(REF, lm, "ar", prompt, max_new_tokens=int(max_new), sampling=SamplingConfig())
        st.session_state["cmp_keys"] = started
        st.session_state["cmp_names"] = names
        st.session_state.pop("cmp_judged", None)

runs = {k: controls.runner(k) for k in keys() if controls.runner(k)}
names = st.session_state.get("cmp_names", {})
if runs and st.button("Cancel all", key="cmp_cancel"):
    for r in runs.values():
        r.cancel()


def reference():
    for k, r in runs.items():
        if names.get(k) == "autoregressive":
            return r
    return controls.runner(REF)


def table(runs, ref):
    ar = ref
    ar_tps = (ar.trace.counters.generated_tokens / ar.trace.counters.compute_s
              if ar and ar.finished and ar.trace.counters.compute_s > 0 else None)
    judged = st.session_state.setdefault("cmp_judged", {})
    rows = []
    for k, r in runs.items():
        c = r.trace.counters
        tps = c.generated_tokens / c.compute_s if c.compute_s > 0 else None
        ident = None
        if r.finished and ar and ar.finished and r.trace.meta.get("lossless"):
            ident = quality.first_divergence(r.trace.final_ids, ar.trace.final_ids) is None
        if r.finished and k not in judged and r.trace.final_ids:
            judged[k] = quality.judged_perplexity(lm, r.trace.meta["prompt_ids"], r.trace.final_ids)
        rows.append({
            "configuration": names.get(k, k), "state": r.state, "tokens": c.generated_tokens,
            "target forwards": c.target_forwards, "draft forwards": c.draft_forwards,
            "tokens / forward (tau)": round(c.generated_tokens / c.target_forwards, 2) if c.target_forwards else None,
            "compute s": round(c.compute_s, 2), "tokens/s": round(tps, 1) if tps else None,
            "speedup vs AR": round(tps / ar_tps, 2) if tps and ar_tps else None,
            "identical to greedy": ("n/a (lossy)" if not r.trace.meta.get("lossless") else
                                    ("yes" if ident else "NO" if ident is False else "…")),
            "judged perplexity": round(judged[k], 2) if judged.get(k) else None,
        })
    return pd.DataFrame(rows)


if runs:
    any_running = any(r.state == controls.RUNNING for r in runs.values()) or (
        controls.runner(REF) is not None and controls.runner(REF).state == controls.RUNNING)

    @st.fragment(run_every=controls.REFRESH_S if any_running else None)
    def view():
        ref = reference()
        cols = st.columns(len(runs))
        ref_texts = [lm.token_text(t) for t in ref.trace.final_ids] if ref else []
        for col, (k, r) in zip(cols, runs.items()):
            with col:
                st.markdown(f"**{names.get(k, k)}** · {r.state}")
                if r.error:
                    st.error(r.error)
                texts = [lm.token_text(t) for t in r.trace.final_ids]
                if ref and ref.finished and r.finished:
                    st.markdown(vc.diff_html(ref_texts, texts), unsafe_allow_html=True)
                else:
                    st.text(r.trace.final_text or "".join(texts))
        st.dataframe(table(runs, ref), hide_index=True, width="stretch")
        series = {names.get(k, k): r.trace.steps for k, r in runs.items()}
        a, b = st.columns(2)
        a.plotly_chart(vc.tokens_vs(series, "target_forwards", "Tokens vs target forwards (NFE)",
                                    "target forwards"), key="cmp_nfe", width="stretch")
        b.plotly_chart(vc.tokens_vs(series, "compute_s", "Tokens vs compute time", "compute seconds"),
                       key="cmp_time", width="stretch")
        still = any(r.state == controls.RUNNING for r in runs.values()) or (
            controls.runner(REF) is not None and controls.runner(REF).state == controls.RUNNING)
        if any_running and not still:
            st.rerun()

    view()
