"""Search and structure: beam search, contrastive search, context-aware decoding, cautious next-token prediction
and grammar-constrained decoding, each step by step.

Every method of the "search" family has its own runner (key `runner_<method>`), its own options (drawn from its
registration) and, where it needs more than options, an input module `ui/search_<method>.py` with
`inputs(prefix) -> dict` (extra option values drawn in the main column, e.g. a grammar text area) and an
optional `HELP` text shown above the prompt."""
import importlib

import streamlit as st

from engine.methods import REGISTRY
from engine.sampling import SamplingConfig
from ui import common, controls, renderers
from ui.options import max_new_tokens_widget, option_widgets

ORDER = ("beam", "contrastive", "cad", "cautious", "grammar")   # the page's order; others follow by name
GREEDY_ONLY = {"beam", "contrastive"}                          # deterministic search: no sampling controls


def methods() -> list[str]:
    found = [n for n, s in REGISTRY.items() if s.family == "search"]
    return [m for m in ORDER if m in found] + sorted(m for m in found if m not in ORDER)


def _inputs_module(method: str):
    try:
        return importlib.import_module(f"ui.search_{method}")
    except ModuleNotFoundError:
        return None


def main():
    lm = common.page_header(
        "Search",
        "Decoders that choose differently from taking the likeliest token. Beam search keeps the best few partial "
        "answers (beams) at every step; diverse beam search splits them into groups that avoid each other's "
        "tokens. Contrastive search trades the model's confidence against repeating what it already said. "
        "Context-aware decoding amplifies what the context changes in the model's prediction. Cautious next-token "
        "prediction tries several continuations where the model is unsure and keeps the likeliest. "
        "Grammar-constrained decoding allows only tokens a grammar accepts.")
    names = methods()
    with st.sidebar:
        st.header("Settings")
        method = st.selectbox("search method", names, key="search_method",
                              format_func=lambda m: f"{m} — {REGISTRY[m].description.split(':')[0]}",
                              help="each method keeps its own run: switching shows that method's last run")
        max_new = max_new_tokens_widget(method, 32)
        ignore_eos = st.checkbox("ignore end-of-text", False, key=f"{method}_ignore_eos",
                                 help="no answer ends before max new tokens")
        mod = _inputs_module(method)
        skip = tuple(getattr(mod, "SKIP", ())) if mod else ()
        opts = option_widgets(method, method, skip=skip)
    key = f"runner_{method}"
    st.caption(REGISTRY[method].description)
    if mod is not None and getattr(mod, "HELP", None):
        st.caption(mod.HELP)
    cfg = SamplingConfig() if method in GREEDY_ONLY else common.sampling_controls(method)
    bps = controls.breakpoint_controls(method, keys=key)
    if mod is not None:
        extra = mod.inputs(method)
        if extra is None:        # the input module showed why its inputs cannot run yet
            cfg = None
        else:
            opts = {**opts, **extra}
    prompt = common.prompt_box(f"{method}_prompt", getattr(mod, "PROMPT", common.DEFAULT_PROMPT))

    c1, c2, _ = st.columns([1, 1, 4])
    go_clicked = c1.button("Generate", type="primary", key=f"{method}_go", disabled=lm is None or cfg is None)
    step_clicked = c2.button("Start paused", key=f"{method}_go_paused", disabled=lm is None or cfg is None,
                             help="prefill, then wait: use Step to decode one step at a time")
    if (go_clicked or step_clicked) and lm is not None and cfg is not None:
        controls.start(key, lm, method, prompt, breakpoints=bps, start_paused=step_clicked,
                       max_new_tokens=max_new, sampling=cfg, options=opts, ignore_eos=ignore_eos)
    controls.step_controls(key)
    controls.live(key, lambda r: renderers.render(r, method))
    controls.download_button(key)


common.run_page(main)
