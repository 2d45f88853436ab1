"""Shared Streamlit pieces: the model (loaded once per process), the sampling sidebar, errors."""
from __future__ import annotations

import json

import gc
import logging
import re
import secrets
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

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
PLACEMENT_KEY = "lab_model_placement"   # models.canonical_placement(...) chosen on the home page; absent: default
PLACEMENT_WIDGETS = ("home_device", "home_dtype", "home_device_map", "home_device_map_json", "home_quantization",
                     "home_max_memory")
_load_lock = threading.Lock()


_handles: dict[tuple, remote.ModelHandle] = {}


def _load_model(name: str, trust_remote_code: bool, placement: dict | None = None) -> remote.ModelHandle:
    """The model, loaded once in the decoder process (engine.remote) and shared by every session that asks for
    the same (name, trust_remote_code, placement); the UI process holds only a handle (two sessions asking at
    once load it once: the decoder serialises loads). placement: models.load's device / dtype / device_map /
    quantization / max_memory (None: the default)."""
    dec = remote.decoder()
    key = (name, trust_remote_code, models.placement_key(placement) if placement else (), dec.generation)
    with _load_lock:
        handle = _handles.get(key)
    if handle is None:
        handle = dec.load(name, trust_remote_code, placement)
        with _load_lock:
            _handles[key] = handle
    return handle


def model_placement() -> dict | None:
    """The session's placement (models.canonical_placement's dict), None for the default."""
    return st.session_state.get(PLACEMENT_KEY)


def model_name() -> str:
    return st.session_state.get(MODEL_KEY, models.EMBEDDED)


# ---- the model in the address bar -----------------------------------------------------------------------
# ?model=<name> keeps the chosen model across a reload and in a shared link. A link never loads a model by
# itself: a name that differs from the session's is offered with a button, loaded without trust_remote_code
# (that stays a tick on the home page), and a name that is not a model id or path is refused with a message.
MODEL_PARAM = "model"
DECLINED_KEY = "lab_model_link_declined"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_~/.][A-Za-z0-9_.\-/~]{0,199}$")


def model_name_problem(name: str) -> str | None:
    """Why `name` (from a link) is not a model id or directory path, or None when it is one."""
    if not name or len(name) > 200:
        return "it is empty or longer than 200 characters"
    if not _MODEL_NAME.match(name):
        return "it has characters a Hugging Face id or a directory path does not have"
    if ".." in name.split("/"):
        return "it climbs out of a directory (..)"
    return None


def _set_model_param(name: str) -> None:
    qp = st.query_params
    if name == models.EMBEDDED or model_name_problem(name):
        if MODEL_PARAM in qp:
            del qp[MODEL_PARAM]
    elif qp.get_all(MODEL_PARAM) != [name]:
        qp[MODEL_PARAM] = name


def _use_model(name: str) -> None:
    """Callback: switch the session to `name` (trust_remote_code off), e.g. back to the embedded model."""
    st.session_state[MODEL_KEY] = name
    st.session_state[TRUST_KEY] = False
    st.session_state.pop(PLACEMENT_KEY, None)    # (a link names no placement: the default, as for trust)
    for k in PLACEMENT_WIDGETS:
        st.session_state.pop(k, None)
    st.session_state["home_model_input"] = name
    st.session_state.pop(DECLINED_KEY, None)
    _set_model_param(name)


def _decline(name: str) -> None:
    st.session_state[DECLINED_KEY] = name
    _set_model_param(model_name())


def link_model() -> None:
    """The link's ?model=: offered (a click loads it), refused with a reason, or already the session's."""
    values = st.query_params.get_all(MODEL_PARAM)
    want = values[0].strip() if values else None
    current = model_name()
    if want is None or want == current or st.session_state.get(DECLINED_KEY) == want:
        return
    problem = model_name_problem(want)
    if problem:
        st.warning(f"This link asks for the model “{md_text(want, 80)}”, which is not loaded: {problem}. "
                   f"The page uses {md_text(current, 200)}.")
        st.session_state[DECLINED_KEY] = want
        return
    box = st.container(border=True)
    box.warning(f"This link asks for the model **{md_text(want, 200)}**. A link never loads a model by itself: "
                f"load it only if you expect it (from this machine's Hugging Face cache or a local directory, "
                f"without remote code). Until then the page uses {md_text(current, 200)}.")
    with box.container(horizontal=True):
        st.button("Load the linked model", key="lab_link_load", type="primary", on_click=_use_model, args=(want,),
                  help=f"load {want[:200]} in this session")
        st.button("Keep the current model", key="lab_link_keep", on_click=_decline, args=(want,),
                  help=f"stay with {current[:200]}")


def sync_model_param() -> None:
    """The address bar names the session's model (nothing for the embedded one), unless a link's model is
    waiting for its click."""
    qp = st.query_params
    values = qp.get_all(MODEL_PARAM)
    current = model_name()
    if values and values[0].strip() != current and st.session_state.get(DECLINED_KEY) != values[0].strip():
        return                                   # the offer above is still open
    _set_model_param(current)


def back_to_embedded_button(key: str = "lab_model_back") -> None:
    """After a failed load: the way back."""
    if model_name() != models.EMBEDDED:
        st.button("Back to the embedded model", key=key, on_click=_use_model, args=(models.EMBEDDED,),
                  help=f"load {models.EMBEDDED} (the default) in this session")


def get_lm(name: str | None = None, trust_remote_code: bool | None = None) -> remote.ModelHandle | None:
    """The current model (with the session's placement), loaded once per process; shows a clear error (and
    the way back to the embedded model) and returns None on failure."""
    chosen = name is None
    name = name or model_name()
    trust = st.session_state.get(TRUST_KEY, False) if trust_remote_code is None else trust_remote_code
    placement = model_placement() if chosen else None
    try:
        with st.spinner(f"Loading {name} (first load of the embedded model dequantises it, ~20 s)..."):
            return _load_model(name, bool(trust), placement)
    except models.ModelLoadError as e:
        st.error("Could not load the model: " + md_text(e, 1000))
    except remote.DecoderError as e:
        st.error("The decoder process is not available: " + md_text(e, 1000))
    except Exception as e:  # never crash the page
        report_internal_error(e, f"loading of the model {name[:100]!r}")
    if chosen:
        back_to_embedded_button()
    return None


def run_page(main, where: str = "page") -> None:
    """Run a page's body inside `guard`: no traceback reaches the browser."""
    with guard(where):
        main()


def app_navigation() -> None:
    """Run a page under app.py's st.navigation (the sidebar's "Home", not "app") from a server's first request.

    Streamlit decides per process: until some run has called st.navigation, a page URL opened directly
    (/Replay on a fresh server) runs the page the pages/-directory way, whose sidebar names the home page
    after its file, "app". The first page run of such a process turns that off and reruns once, so app.py's
    navigation draws the sidebar. Only under `streamlit run app.py` (an AppTest of a page file is left alone)."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
        ctx = get_script_run_ctx()
        main = ctx.pages_manager.main_script_path if ctx is not None else ""
    except Exception:  # noqa: BLE001 -- another Streamlit: its own navigation
        return
    if not PagesManager.uses_pages_directory or Path(main).name != "app.py":
        return
    PagesManager.uses_pages_directory = False
    st.rerun()


PAGE_DEFAULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "page_defaults.json"


def measured_defaults(title: str) -> str | None:
    """What this page's default prompt and settings showed on the embedded model, from the last
    `python -m benchmarks.page_defaults` run (never hand-typed); None when not measured."""
    try:
        d = json.loads(PAGE_DEFAULTS.read_text())
        line = d["pages"][title]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (f"On this page's defaults with the embedded model (measured {md_text(d.get('measured', '?'), 20)} by "
            f"{md_text(d.get('command', ''), 80)}): {md_text(line, 600)}.")


def page_header(title: str, caption: str) -> remote.ModelHandle | None:
    app_navigation()
    st.set_page_config(page_title=f"{title} · decoding lab", layout="wide")
    st.title(title)
    st.caption(caption)
    measured = measured_defaults(title)
    if measured:
        st.caption(measured)
    link_model()
    lm = get_lm()
    sync_model_param()
    from ui import controls
    controls.render_every_n_widget()
    if lm is not None:
        st.sidebar.caption("Model")
        st.sidebar.text(f"{lm.name}\n{lm.info.get('placement') or lm.device} · {lm.dtype}")
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


def session_connected():
    """A callable saying whether this page's browser session is still connected (False once its tab is closed),
    or None outside `streamlit run` (AppTest, scripts): then nobody can tell."""
    try:
        from streamlit.runtime import Runtime
        from streamlit.runtime.scriptrunner import get_script_run_ctx
        ctx = get_script_run_ctx()
        rt = Runtime.instance() if Runtime.exists() else None
    except Exception:  # noqa: BLE001 -- no runtime
        return None
    if ctx is None or type(rt) is not Runtime:   # AppTest installs a mock Runtime
        return None
    sid = ctx.session_id
    return lambda: rt.is_active_session(sid)


def session_id() -> str:
    """This browser session's id (Streamlit's), or one kept in its session state outside a server (AppTest)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx
        ctx = get_script_run_ctx()
        if ctx is not None and ctx.session_id:
            return str(ctx.session_id)
    except Exception:  # noqa: BLE001 -- another Streamlit
        pass
    return str(st.session_state.setdefault("lab_session_id", secrets.token_hex(8)))
