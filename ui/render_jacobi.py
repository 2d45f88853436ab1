"""The Jacobi / lookahead view of one step of a trace (the live page and the replay page share it)."""
import pandas as pd
import streamlit as st

from ui import controls, renderers
from viz import jacobi as vz
from viz import legend
from viz import window as W
from viz.safe import md_text

TEST_COLUMNS = ("pos", "p", "q", "accept_prob", "u", "accepted")


def render(r, prefix: str = "jl") -> None:
    """`r` is a Runner or a replay view: anything with .trace and .cursor."""
    steps = r.trace.steps
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    step = steps[cur]
    if step["kind"] == "lookahead":
        _render_lookahead(r, steps, cur, step, prefix)
    else:
        _render_jacobi(r, steps, cur, step, prefix)


def _render_jacobi(r, steps, cur, step, prefix):
    s = vz.jacobi_stats_at(r.trace, cur)
    extra = {"compression (tokens / forward)": f"{s['compression_ratio']:.2f}"}
    if "iterations_per_block" in s:
        extra["iterations / block"] = f"{s['iterations_per_block']:.2f}"
    controls.metrics_row(r, extra)
    params = r.trace.meta.get("params", {})
    st.caption(f"variant **{md_text(step.get('variant', params.get('variant', '?')))}** · init "
               f"**{md_text(params.get('init', '?'))}** · block_size **{md_text(params.get('block_size', '?'))}** · "
               f"iteration {cur}: {step.get('accepted', 0)} guesses were already fixed, "
               f"{step.get('committed', 0)} token(s) committed"
               + (" · autoregressive tail (hybrid)" if step.get("phase") == "ar" else ""))
    if not renderers.live(r):
        st.markdown(vz.token_stream_html(steps, cur), unsafe_allow_html=True)
    renderers.full_text(steps, cur, vz.stream_tokens)
    n_rows = st.slider("iterations shown", 4, W.MAX_ROWS, 24, key=f"{prefix}_rows")
    first = max(0, cur - int(n_rows) + 1)
    st.markdown(legend.legend_html(vz.legend_items()), unsafe_allow_html=True)
    grid, dag, detail = st.tabs(["Trajectory grid", "Dependency graph", "This iteration"])
    with grid:
        st.plotly_chart(vz.trajectory_grid(steps, cur, r.trace.final_ids, first_row=first),
                        key=f"{prefix}_grid_{first}", width="stretch")
        st.caption("Each row is the block after one Jacobi iteration. The black staircase is the convergence "
                   "front: left of it every token is committed. A black dot marks a token that already equals "
                   "the final output but cannot be proven fixed yet, because a token before it is still changing.")
    with dag:
        st.plotly_chart(vz.dependency_graph(steps, cur, first_row=first), key=f"{prefix}_dag_{first}",
                        width="stretch")
        st.caption("Node = (iteration, position, token). An edge joins a token that changed to every later "
                   "position whose prediction the next iteration had to recompute from it. The thick chain of "
                   "convergence-front tokens is what set the number of iterations.")
    with detail:
        rows = [{"position": c["pos"], "input guess": c["guess_text"], "after update": c["text"],
                 "state": vz.STATE_LABEL[c["state"]]} for c in vz.cells(step)]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        if step.get("tests"):
            st.markdown("Speculative Jacobi tests (accept if u < min(1, p/q); q = 1 for an initial guess):")
            tests = [{k: t.get(k) for k in TEST_COLUMNS} for t in step["tests"]]
            st.dataframe(pd.DataFrame(tests, columns=list(TEST_COLUMNS)), hide_index=True, width="stretch")
    st.plotly_chart(vz.progress_figure(steps, cur), key=f"{prefix}_prog", width="stretch")
    controls.vs_ar_table(r)


def _render_lookahead(r, steps, cur, step, prefix):
    s = vz.lookahead_stats_at(r.trace, cur)
    controls.metrics_row(r, {"compression (tokens / forward)": f"{s['compression_ratio']:.2f}",
                             "n-gram pool": "-" if s["pool_size"] is None else s["pool_size"],
                             "accepted from pool / step": f"{s['mean_accepted_len']:.2f}"})
    params = r.trace.meta.get("params", {})
    st.caption(f"W={md_text(params.get('window_size', '?'))} · N={md_text(params.get('level', '?'))} · "
               f"G={md_text(params.get('guess_set_size', '?'))} · step {cur} ({md_text(step.get('phase'))}): "
               f"{len(step.get('candidates', []))} n-gram(s) verified, {step.get('accepted_len', 0)} token(s) "
               f"accepted from the pool, {step.get('committed', 0)} committed · {step.get('input_tokens', '?')} "
               "tokens in this forward")
    if not renderers.live(r):
        st.markdown(vz.token_stream_html(steps, cur), unsafe_allow_html=True)
    renderers.full_text(steps, cur, vz.stream_tokens)
    st.markdown(legend.legend_html({"window token equals the final output": legend.JACOBI_FIXED,
                                    "window token (guess)": legend.JACOBI_GUESS,
                                    "prediction of the newest level": "#F4D35E",
                                    "accepted from the pool": legend.ACCEPTED, "rejected": legend.REJECTED,
                                    "not reached": legend.UNVERIFIED, "model's own next token": legend.BONUS}),
                unsafe_allow_html=True)
    st.plotly_chart(vz.lookahead_window_figure(step, r.trace.final_ids), key=f"{prefix}_win",
                    width="stretch")
    a, b = st.columns(2)
    with a:
        st.markdown(f"**Verified this step** (n-grams starting with {md_text(repr(step.get('last_text', '')))})")
        t = vz.candidates_table(step)
        if len(t):
            st.dataframe(t, hide_index=True, width="stretch")
        else:
            st.caption("none: the pool has no n-gram for this token yet")
    with b:
        g = params.get("guess_set_size")
        g = g if isinstance(g, int) and g >= 1 else 7
        only = st.checkbox("only the next step's key", False, key=f"{prefix}_pool_only")
        nxt = steps[cur + 1] if cur + 1 < len(steps) else None
        key_id = (nxt or {}).get("last_id") if only else None
        st.markdown(f"**N-gram pool after this step** ({step.get('pool_size', 0)} n-grams)")
        pool = vz.pool_at(r.trace, cur, g)
        st.dataframe(vz.pool_table(steps, cur, g, vz.token_text_at(r.trace), only_key=key_id, pool=pool),
                     hide_index=True, width="stretch", height=260)
    st.plotly_chart(vz.progress_figure(steps, cur), key=f"{prefix}_prog", width="stretch")
    controls.vs_ar_table(r)

