"""Jacobi and lookahead decoding: the iteration x position trajectory, its dependency graph, the lookahead
window and n-gram pool, and tokens per forward against autoregressive."""
import streamlit as st

from engine import run as engine_run
from engine.methods import MethodError
from ui import common, controls, render_jacobi

KEY = "runner_jacobi"
DEFAULT_PROMPT = ("Write a Python class Point with methods add, sub, mul and div, each returning a new Point.")

lm = common.page_header(
    "Jacobi & lookahead",
    "Jacobi decoding guesses a block of future tokens and refines every guess in parallel, one forward pass "
    "per iteration, until the block stops changing; the output equals greedy decoding. Lookahead decoding "
    "runs a 2-D window of such Jacobi trajectories, collects the n-grams they produce in a pool, and verifies "
    "pool n-grams that start with the last token in the same forward pass.")

with st.sidebar:
    st.header("Method")
    method = st.radio("method", ["jacobi", "lookahead"], horizontal=True, key="jl_method",
                      format_func=lambda m: {"jacobi": "Jacobi", "lookahead": "Lookahead"}[m])
    max_new = st.number_input("max new tokens", 1, 1024, 48, key="jl_max_new")
    if method == "jacobi":
        variant = st.selectbox("variant", ["jacobi", "gauss_seidel", "hybrid"], key="jl_variant",
                               help="jacobi: sliding window of guesses (block_size >= max new tokens is the "
                                    "paper's parallel Jacobi over the whole output); gauss_seidel: blocks, each "
                                    "iterated to its fixed point; hybrid: blocks for hybrid_length tokens, then "
                                    "one token per forward")
        block_size = st.number_input("block_size (guessed tokens)", 1, 128, 8, key="jl_block")
        init = st.selectbox("initial guesses", ["pad", "repeat", "random"], key="jl_init",
                            help="pad token / the last token repeated / random tokens from the context")
        hybrid_length = st.number_input("hybrid_length", 0, 4096, 32, key="jl_hybrid",
                                        disabled=variant != "hybrid")
        options = {"variant": variant, "block_size": int(block_size), "init": init,
                   "hybrid_length": int(hybrid_length)}
    else:
        w = st.number_input("window_size W", 1, 64, 5, key="jl_w", help="parallel Jacobi trajectories")
        n = st.number_input("level N (n-gram size)", 3, 16, 4, key="jl_n", help="the window keeps N-1 levels")
        g = st.number_input("guess_set_size G", 1, 64, 5, key="jl_g",
                            help="n-grams kept per first token (LRU) and verified per step")
        from_prompt = st.checkbox("seed the pool from the prompt", True, key="jl_pool_prompt")
        options = {"window_size": int(w), "level": int(n), "guess_set_size": int(g),
                   "pool_from_prompt": bool(from_prompt)}
cfg = common.sampling_controls("jl")
bps = controls.breakpoint_controls("jl", events=("changed", "draft_rejected"))
prompt = common.prompt_box("jl_prompt", DEFAULT_PROMPT)

ready = lm is not None and cfg is not None
c1, c2, c3, _ = st.columns([1, 1, 1.6, 2.4])
go_clicked = c1.button("Generate", type="primary", key="jl_go", disabled=not ready)
paused_clicked = c2.button("Start paused", key="jl_go_paused", disabled=not ready,
                           help="wait before the first iteration: use Step to run one forward pass at a time")
if (go_clicked or paused_clicked) and ready:
    controls.start(KEY, lm, method, prompt, breakpoints=bps, start_paused=paused_clicked,
                   max_new_tokens=int(max_new), sampling=cfg, options=options)

r = controls.runner(KEY)
if c3.button("Compare with autoregressive", key="jl_vs_ar", disabled=not ready or r is None or not r.finished,
             help="decode the same prompt autoregressively and put both side by side (compute time only)"):
    try:
        with st.spinner("Decoding autoregressively..."):
            ar = engine_run.run(lm, "ar", r.trace.meta["prompt"], max_new_tokens=int(r.trace.meta["params"]["max_new_tokens"]),
                                sampling=cfg, record=False)
        rows = []
        for name, t in ((r.trace.meta["method"], r.trace), ("autoregressive", ar)):
            c = t.counters
            rows.append({"method": name, "tokens": c.generated_tokens, "forwards": c.target_forwards,
                         "tokens / forward": round(c.generated_tokens / max(1, c.target_forwards), 3),
                         "compute s": round(c.compute_s, 3),
                         "tokens / s": round(c.generated_tokens / c.compute_s, 2) if c.compute_s > 0 else None})
        a, b = rows
        a["speedup vs AR"] = round((b["compute s"] / b["tokens"]) / (a["compute s"] / a["tokens"]), 3) \
            if a["compute s"] and a["tokens"] and b["tokens"] else None
        same = r.trace.final_ids == ar.final_ids if cfg.greedy else None
        r.trace.extra["vs_ar"] = {"rows": rows, "identical": same}
    except (ValueError, MethodError) as e:
        st.error(str(e))

controls.step_controls(KEY)
controls.live(KEY, lambda rr: render_jacobi.render(rr, "jl"))
controls.download_button(KEY)
