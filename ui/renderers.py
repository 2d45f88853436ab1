"""Which view renders a step of which kind: the live pages and the replay page share these."""
from __future__ import annotations

import importlib
import json

import streamlit as st

from viz import window as W

# step kind -> module under ui/ whose render(r, prefix) draws one step of a trace
MODULES = {"ar": "ui.render_ar", "speculative": "ui.render_speculative", "kv": "ui.render_kv",
           "jacobi": "ui.render_jacobi", "lookahead": "ui.render_jacobi", "diffusion": "ui.render_diffusion",
           "beam": "ui.render_beam", "cautious": "ui.render_cautious"}


def renderer(kind: str):
    name = MODULES.get(kind)
    if name:
        try:
            return importlib.import_module(name).render
        except ModuleNotFoundError:
            pass
    return render_raw


def render_raw(r, prefix: str = "raw") -> None:
    """Fallback: the step record itself."""
    step = r.trace.steps[r.cursor]
    st.code(json.dumps(step, indent=1)[:20000], language="json")


def render(r, prefix: str) -> None:
    if not r.trace.steps or r.cursor is None:
        st.info("This trace has no steps to show.")
        return
    renderer(r.trace.steps[r.cursor]["kind"])(r, prefix)


def stream_html(r, max_tokens: int | None = None) -> str | None:
    """The run's token stream at its cursor, as its family's view draws it (escaped HTML, bounded; its last
    `max_tokens` tokens when given): what the live status shows while the figures refresh less often."""
    n = {} if max_tokens is None else {"max_tokens": max_tokens}
    steps, cur = r.trace.steps, r.cursor
    if not steps or cur is None:
        return None
    kind = steps[cur].get("kind")
    if kind == "ar":
        from viz import ar
        return ar.token_stream_html(steps, cur, "prob", max_entropy=ar.max_entropy_at(r.trace), **n)
    if kind == "speculative":
        from viz import speculative
        return speculative.stream_html(steps, cur, **n)
    if kind == "kv":
        from viz import kv
        return kv.tokens_html(steps, cur, **n)
    if kind in ("jacobi", "lookahead"):
        from viz import jacobi
        return jacobi.token_stream_html(steps, cur, **n)
    if kind == "diffusion":
        from viz import diffusion
        return diffusion.text_html(steps[cur])
    if kind == "cautious":
        from viz import cautious
        return cautious.stream_html(steps, cur, **n)
    return None


def live(r) -> bool:
    """True when the view is drawn for a live run whose token stream the live status already shows."""
    return bool(getattr(r, "live", False))


def full_text(steps: list[dict], cur: int, tokens_of) -> None:
    """The whole text up to the cursor, in an expander, when the token stream above shows only its last
    tokens (`tokens_of(step)`: how many tokens the stream draws for a step). Plain text: cheap to send."""
    if W.stream_start(steps, cur, tokens_of) == 0:
        return
    with st.expander("Full text up to this step"):
        st.text("".join(s.get("new_text", "") for s in steps[: cur + 1]))
