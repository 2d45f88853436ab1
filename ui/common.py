"""Shared Streamlit pieces: the model (loaded once per process), the sampling sidebar, errors."""
from __future__ import annotations

import gc
import logging
import secrets
import threading
import traceback
from contextlib import contextmanager

import streamlit as st

from engine import methods, models, remote
from engine.errors import LabError
from engine.sampling import SamplingConfig, SamplingError
from viz.safe import md_text

# Everything imported by now (streamlit, torch, transformers, every method module for the option specs) lives as
# long as the process: move it out of the garbage collector's generations, so a collection walks only what
# pages create.
methods.all_methods()
gc.freeze()

log = logging.getLogger("decoding_lab")
if not log.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_h)
    log.propagate = False


def report_internal_error(exc: BaseException, where: str = "page", container=None) -> str:
    """A bug reached the page: show a short id (never the traceback) and log the traceback under it."""
    eid = secrets.token_hex(4)
    remote_tb = getattr(exc, "remote_traceback", "")
    log.error("internal error %s in %s\n%s%s", eid, where, "".join(traceback.format_exception(exc)),
              f"in the decoder process:\n{remote_tb}" if remote_tb else "")
    (container or st).error(f"Something went wrong in the {where} (error id {eid}). The details are in the "
                            "server log; the rest of the app keeps working.")
    return eid


@contextmanager
def guard(where: str = "page", container=None):
    """Run a page (or a fragment) body: our own errors show their message, anything else a friendly box
    with an id. Streamlit's rerun / stop signals are BaseExceptions and pass through."""
    try:
        yield
    except LabError as e:
        (container or st).error(md_text(e, 1000))
    except Exception as e:  # noqa: BLE001 -- the boundary between the app and a person
        report_internal_error(e, where, container)

MODEL_KEY = "lab_model_name"
TRUST_KEY = "lab_trust_remote_code"
_load_lock = threading.Lock()


_handles: dict[tuple, remote.ModelHandle] = {}


def _load_model(name: str, trust_remote_code: bool) -> remote.ModelHandle:
    """The model, loaded once in the decoder process (engine.remote) and shared by every session; the UI
    process holds only a handle (two sessions asking at once load it once: the decoder serialises loads)."""
    dec = remote.decoder()
    key = (name, trust_remote_code, dec.generation)
    with _load_lock:
        handle = _handles.get(key)
    if handle is None:
        handle = dec.load(name, trust_remote_code)
        with _load_lock:
            _handles[key] = handle
    return handle


def model_name() -> str:
    return st.session_state.get(MODEL_KEY, models.EMBEDDED)


def get_lm(name: str | None = None, trust_remote_code: bool | None = None) -> remote.ModelHandle | None:
    """The current model, loaded once per process; shows a clear error and returns None on failure."""
    name = name or model_name()
    trust = st.session_state.get(TRUST_KEY, False) if trust_remote_code is None else trust_remote_code
    try:
        with st.spinner(f"Loading {name} (first load of the embedded model dequantises it, ~20 s)..."):
            return _load_model(name, bool(trust))
    except models.ModelLoadError as e:
        st.error("Could not load the model: " + md_text(e, 1000))
    except remote.DecoderError as e:
        st.error("The decoder process is not available: " + md_text(e, 1000))
    except Exception as e:  # never crash the page
        report_internal_error(e, f"loading of the model {name[:100]!r}")
    return None


def run_page(main, where: str = "page") -> None:
    """Run a page's body inside `guard`: no traceback reaches the browser."""
    with guard(where):
        main()


def page_header(title: str, caption: str) -> remote.ModelHandle | None:
    st.set_page_config(page_title=f"{title} · decoding lab", layout="wide")
    st.title(title)
    st.caption(caption)
    lm = get_lm()
    from ui import controls
    controls.render_every_n_widget()
    if lm is not None:
        st.sidebar.caption("Model")
        st.sidebar.text(f"{lm.name}\n{lm.device} · {lm.dtype}")
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
        c.error(md_text(e, 1000))
        return None


DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."


def prompt_box(key: str, default: str = DEFAULT_PROMPT, height: int = 90) -> str:
    return st.text_area("Prompt", default, key=key, height=height)
