"""Speculative decoding: the draft tree of each round, the target's decisions, acceptance over time."""
import time

import streamlit as st

from engine import run as engine_run
from engine.methods import MethodError
from engine.methods import speculative as spec
from engine.sampling import SamplingConfig
from ui import common, controls, render_speculative

KEY = "runner_spec"
P = "spec"
TREES = {"chain": "chain", "template 2.2.2": "2.2.2", "template 3.2.1": "3.2.1",
         "Medusa-style choices": "[[0],[1],[2],[0,0],[0,1],[1,0],[0,0,0]]", "dynamic (node budget)": "dynamic",
         "custom": None}
DEFAULT_PROMPT = ("Summarise the following text, reusing its wording.\n\nThe river rises in the hills north of the "
                  "town and flows south through farmland before reaching the sea. In spring the river floods the "
                  "low fields, and farmers plant rice in the flooded fields. In summer the river is low and the "
                  "fields are dry.")

lm = common.page_header(
    "Speculative decoding",
    "A drafter proposes a chain or a tree of tokens; the target model checks all of them in ONE forward pass with "
    "a tree attention mask (each node sees the prefix and its own ancestors), accepts the longest valid path, and "
    "appends its own next token. The KV cache then keeps only the accepted path.")

with st.sidebar:
    st.header("Settings")
    max_new = st.number_input("max new tokens", 1, 1024, 48, key=f"{P}_max_new")
    drafter = st.selectbox("drafter", list(spec.DRAFTERS), index=list(spec.DRAFTERS).index("prompt_lookup"),
                           key=f"{P}_drafter", help="\n".join(f"- **{k}**: {v}" for k, v in spec.DRAFTERS.items()))
    tree_label = st.selectbox("tree shape", list(TREES), key=f"{P}_tree")
    tree = TREES[tree_label]
    if tree is None:
        tree = st.text_input("shape (chain, dynamic, 2.2.2 or [[0],[1],[0,0]])", "2.2", key=f"{P}_tree_custom")
    opts = {"drafter": drafter, "tree": tree}
    if drafter == "prompt_lookup":
        opts["prompt_lookup_num_tokens"] = int(st.number_input("prompt_lookup_num_tokens", 1, 32, 10,
                                                               key=f"{P}_pl_k"))
        opts["max_matching_ngram_size"] = int(st.number_input("max_matching_ngram_size", 1, 8, 3, key=f"{P}_pl_n"))
    else:
        opts["num_assistant_tokens"] = int(st.number_input("num_assistant_tokens (draft length k)", 1, 32, 5,
                                                           key=f"{P}_k"))
    if drafter == "draft_model":
        opts["draft_model"] = st.text_input("draft model (HF id, local path, or self:K)", "self:24", key=f"{P}_dm")
    if drafter in ("early_exit", "kangaroo"):
        opts["exit_layer"] = int(st.number_input("exit layer (0 = 80% of the layers)", 0, 512, 0, key=f"{P}_exit"))
    if drafter == "kangaroo":
        opts["exit_threshold"] = float(st.slider("stop drafting below confidence", 0.0, 0.99, 0.6, 0.01,
                                                 key=f"{P}_kthr"))
    if drafter == "layer_skip":
        opts["skip_layers"] = st.text_input("skip layers (empty = every other layer of the back half)", "",
                                            key=f"{P}_skip")
    if drafter == "token_recycling":
        opts["recycle_k"] = int(st.number_input("successors kept per token", 1, 64, 8, key=f"{P}_rk"))
    if tree == "dynamic":
        opts["tree_budget"] = int(st.number_input("node budget", 1, 256, 16, key=f"{P}_budget"))
        opts["tree_topk"] = int(st.number_input("children per node / nodes per depth", 1, 32, 4, key=f"{P}_topk"))
    with st.expander("Draft length and verification"):
        opts["schedule"] = st.radio("draft length schedule", list(spec.SCHEDULES), horizontal=True,
                                    key=f"{P}_sched", help="heuristic: +2 after a fully accepted round, -1 otherwise")
        opts["confidence_threshold"] = float(st.slider("stop a branch below cumulative draft confidence (0 = off)",
                                                       0.0, 0.95, 0.0, 0.05, key=f"{P}_cthr"))
        opts["verify"] = st.selectbox("verification rule", list(spec.RULES), key=f"{P}_rule",
                                      help="auto: greedy matching at temperature 0, lossless speculative sampling "
                                           "otherwise; typical: Medusa's typical acceptance (lossy)")
        if opts["verify"] == "typical":
            opts["typical_epsilon"] = float(st.number_input("epsilon", 0.001, 1.0, 0.09, key=f"{P}_eps"))
            opts["typical_alpha"] = float(st.number_input("alpha", 0.001, 1.0, 0.3, key=f"{P}_alpha"))
cfg = common.sampling_controls(P)
bps = controls.breakpoint_controls(P, events=("draft_rejected",))
prompt = common.prompt_box(f"{P}_prompt", DEFAULT_PROMPT, height=140)


def validate() -> bool:
    """Check the options before starting the worker, so a bad choice is an error here, not mid-run."""
    try:
        spec.validate(lm, cfg, opts)
        return True
    except MethodError as e:
        st.error(str(e))
        return False


c1, c2, c3, _ = st.columns([1, 1, 2, 3])
ready = lm is not None and cfg is not None
go_clicked = c1.button("Generate", type="primary", key=f"{P}_go", disabled=not ready)
step_clicked = c2.button("Start paused", key=f"{P}_go_paused", disabled=not ready,
                         help="prefill, then wait: use Step to run one draft-and-verify round at a time")
if (go_clicked or step_clicked) and ready and validate():
    controls.start(KEY, lm, "speculative", prompt, breakpoints=bps, start_paused=step_clicked,
                   max_new_tokens=int(max_new), sampling=cfg, options=opts)

controls.step_controls(KEY)
r = controls.runner(KEY)
if r is not None and r.finished and r.trace.steps and not r.trace.extra.get("speedup_vs_ar"):
    if c3.button("Measure speedup vs autoregressive", key=f"{P}_speedup",
                 help="decode the same prompt with the autoregressive method (no recording) and compare "
                      "compute-only tokens/s"):
        with st.spinner("Running autoregressive on the same prompt..."):
            t = r.trace
            sampling = SamplingConfig(**t.meta["params"]["sampling"])
            ar = engine_run.run(lm, "ar", t.meta["prompt"], max_new_tokens=int(t.meta["params"]["max_new_tokens"]),
                                sampling=sampling, record=False)
            # the speculative run recorded its steps; re-time it without recording for a fair comparison
            sp = engine_run.run(lm, "speculative", t.meta["prompt"], max_new_tokens=int(t.meta["params"]["max_new_tokens"]),
                                sampling=sampling, options={k: v for k, v in t.meta["params"].items()
                                                            if k in spec.OPTIONS}, record=False)
            a_tps = ar.counters.generated_tokens / max(ar.counters.compute_s, 1e-9)
            s_tps = sp.counters.generated_tokens / max(sp.counters.compute_s, 1e-9)
            t.extra["speedup_vs_ar"] = {"ar_tokens_per_s": a_tps, "spec_tokens_per_s": s_tps, "speedup": s_tps / a_tps,
                                        "same_output": ar.final_ids == sp.final_ids,
                                        "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        st.rerun()

controls.live(KEY, lambda rr: render_speculative.render(rr, P))
controls.download_button(KEY)
