"""Several decoding methods on the same prompt, live, side by side."""
import pandas as pd
import streamlit as st

from engine import measure, presets, remote
from engine.sampling import SamplingConfig
from ui import common, controls
from ui.options import max_new_tokens_widget
from viz import compare as vc

REF = "cmp_ref"


def keys():
    return st.session_state.get("cmp_keys", [])


def start_all(lm, chosen, avail, prompt, max_new):
    for k in keys() + [REF]:
        r = controls.runner(k)
        if r:
            r.cancel()
    started, names = [], {}
    for i, name in enumerate(chosen):
        p = avail[name]
        k = f"cmp_run_{i}"
        if controls.start(k, lm, p.method, prompt, max_new_tokens=max_new, sampling=SamplingConfig(),
                          options=dict(p.options)):
            started.append(k)
            names[k] = name
    if "autoregressive" not in chosen and started:  # the greedy reference, computed, never assumed
        controls.start(REF, lm, "ar", prompt, max_new_tokens=max_new, sampling=SamplingConfig())
    st.session_state["cmp_keys"] = started
    st.session_state["cmp_names"] = names


def cancel_all():
    for k in keys() + [REF]:
        r = controls.runner(k)
        if r is not None:
            r.cancel()


def view(lm, runs, names):
    def reference():
        for k, r in runs.items():
            if names.get(k) == "autoregressive":
                return r
        return controls.runner(REF)

    def running():
        return any(r.state == controls.RUNNING for r in runs.values()) or (
            controls.runner(REF) is not None and controls.runner(REF).state == controls.RUNNING)

    any_running = running()

    @st.fragment(run_every=controls.FIGURES_S if any_running else None)
    def body():
        with common.guard("comparison view"):
            ref = reference()
            cols = st.columns(len(runs))
            ref_texts = list(getattr(ref, "token_texts", [])) if ref else []
            for col, (k, r) in zip(cols, runs.items()):
                with col:
                    st.markdown(f"**{names.get(k, k)}** · {r.state}")
                    if r.error:
                        controls.show_error(r)
                    texts = list(getattr(r, "token_texts", []))
                    if ref and ref.finished and r.finished and texts and ref_texts:
                        st.markdown(vc.diff_html(ref_texts, texts), unsafe_allow_html=True)
                    else:
                        st.text(r.trace.final_text or getattr(r, "live_text", ""))
            for r in runs.values():   # judged once per finished run, in the decoder process
                if r.state == controls.DONE and "judged_perplexity" not in r.trace.extra and r.trace.final_ids:
                    r.trace.extra["judged_perplexity"] = remote.decoder().task(
                        lm, "judged", prompt_ids=r.trace.meta["prompt_ids"], output_ids=list(r.trace.final_ids))
            rows = [{"configuration": names.get(k, k), "state": r.state,
                     **measure.comparison_row(r.trace, ref.trace if ref else None, finished=r.finished)}
                    for k, r in runs.items()]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                         column_config={"judged perplexity": st.column_config.NumberColumn(width="medium")})
            series = {names.get(k, k): r.trace.steps for k, r in runs.items()}
            a, b = st.columns(2)
            a.plotly_chart(vc.tokens_vs(series, "target_forwards", "Tokens vs target forwards (NFE)",
                                        "target forwards"), key="cmp_nfe", width="stretch")
            b.plotly_chart(vc.tokens_vs(series, "compute_s", "Tokens vs compute time", "compute seconds"),
                           key="cmp_time", width="stretch")
        if any_running and not running():
            st.rerun()

    body()


def main():
    lm = common.page_header(
        "Compare",
        "Run 2 to 4 configurations on the same prompt at once. The engine interleaves their steps on one model "
        "(one step holds the model at a time, so compute seconds are each run's own). Lossless methods are "
        "checked token for token against autoregressive greedy.")
    avail = presets.available()
    with st.sidebar:
        st.header("Settings")
        max_new = max_new_tokens_widget("cmp", 32, hi=256)
    chosen = st.multiselect("Configurations (2 to 4)", list(avail), default=list(avail)[:3], max_selections=4,
                            key="cmp_choice")
    prompt = common.prompt_box("cmp_prompt", "Repeat this list in reverse order: apple, banana, cherry, date, "
                               "elderberry, fig, grape.")
    if st.button("Run all", type="primary", key="cmp_go", disabled=lm is None):
        if not (2 <= len(chosen) <= 4):
            st.error("Choose between 2 and 4 configurations.")
        else:
            start_all(lm, chosen, avail, prompt, max_new)
    runs = {k: controls.runner(k) for k in keys() if controls.runner(k)}
    names = st.session_state.get("cmp_names", {})
    if runs:   # acts in its callback, before the page is drawn: the states shown below are the new ones
        st.button("Cancel all", key="cmp_cancel", on_click=cancel_all,
                  disabled=all(r.finished for r in [*runs.values(), controls.runner(REF)] if r is not None))
    if runs and lm is not None:
        view(lm, runs, names)


common.run_page(main)
