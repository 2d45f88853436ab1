"""Shared Streamlit pieces: the model (loaded once per process), the sampling sidebar, errors."""
from __future__ import annotations

import threading

import streamlit as st

from engine import models
from engine.sampling import SamplingConfig, SamplingError

MODEL_KEY = "lab_model_name"
TRUST_KEY = "lab_trust_remote_code"
_load_lock = threading.Lock()


@st.cache_resource(show_spinner=False, max_entries=3)
def _load_model(name: str, trust_remote_code: bool) -> models.LM:
    with _load_lock:  # two sessions asking for the same model at once load it once
        return models.load(name, trust_remote_code=trust_remote_code)


def model_name() -> str:
    return st.session_state.get(MODEL_KEY, models.EMBEDDED)


def get_lm(name: str | None = None, trust_remote_code: bool | None = None) -> models.LM | None:
    """The current model, loaded once per process; shows a clear error and returns None on failure."""
    name = name or model_name()
    trust = st.session_state.get(TRUST_KEY, False) if trust_remote_code is None else trust_remote_code
    try:
        with st.spinner(f"Loading {name} (first load of the embedded model dequantises it, ~20 s)..."):
            return _load_model(name, bool(trust))
    except models.ModelLoadError as e:
        st.error(f"Could not load the model: {e}")
    except Exception as e:  # never crash the page
        st.error(f"Could not load the model '{name}': {type(e).__name__}: {e}")
    return None


def page_header(title: str, caption: str) -> models.LM | None:
    st.set_page_config(page_title=f"{title} · decoding lab", layout="wide")
    st.title(title)
    st.caption(caption)
    lm = get_lm()
    if lm is not None:
        st.sidebar.markdown(f"**Model:** `{lm.name}`  \n**Device:** `{lm.device}` · `{str(lm.dtype).replace('torch.', '')}`")
    return lm


def sampling_controls(prefix: str, container=None) -> SamplingConfig | None:
    """Sidebar widgets for greedy / sampling; returns a config or None (with an error shown)."""
    c = container or st.sidebar
    mode = c.radio("Decoding", ["greedy", "sample"], horizontal=True, key=f"{prefix}_mode")
    if mode == "greedy":
        return SamplingConfig()
    t = c.slider("temperature", 0.05, 2.0, 0.8, 0.05, key=f"{prefix}_temp")
    k = c.number_input("top-k (0 = off)", 0, 50000, 0, key=f"{prefix}_topk")
    p = c.slider("top-p", 0.05, 1.0, 1.0, 0.01, key=f"{prefix}_topp")
    mp = c.slider("min-p", 0.0, 0.5, 0.0, 0.01, key=f"{prefix}_minp")
    ty = c.slider("typical-p", 0.05, 1.0, 1.0, 0.01, key=f"{prefix}_typ")
    seed = c.number_input("seed", 0, 2**31 - 1, 0, key=f"{prefix}_seed")
    try:
        return SamplingConfig(temperature=float(t), top_k=int(k), top_p=float(p), min_p=float(mp),
                              typical_p=float(ty), seed=int(seed))
    except SamplingError as e:
        c.error(str(e))
        return None


DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."


def prompt_box(key: str, default: str = DEFAULT_PROMPT, height: int = 90) -> str:
    return st.text_area("Prompt", default, key=key, height=height)
