"""A view's figures at one step, and all of them as one self-contained HTML file (plotly's to_html, so no
kaleido and no browser are needed to export). Pure: a saved trace exports with no model.

`step_figures(trace, cursor)` lists the figures the view of that step's kind draws by default (the first
watched layer and KV head for a KV trace); `figures_html(...)` embeds plotly.js once, ~4.7 MB, so a page
builds it only when the download is clicked (st.download_button with a callable).
"""
from __future__ import annotations

import html

import plotly.graph_objects as go

from viz.safe import html_text


def step_figures(trace, cursor: int | None = None) -> list[tuple[str, go.Figure]]:
    """(name, figure) for each figure of the trace's view at `cursor` (the last step when None)."""
    steps = trace.steps
    if not steps:
        return []
    cur = len(steps) - 1 if cursor is None else max(0, min(int(cursor), len(steps) - 1))
    step = steps[cur]
    kind = step.get("kind")
    if kind == "ar":
        from viz import ar
        return [("candidates", ar.candidates_figure(step)), ("confidence", ar.prob_entropy_figure(steps, cur))]
    if kind == "speculative":
        from viz import speculative as sp
        return [("draft tree", sp.tree_figure(step)), ("tree mask", sp.mask_figure(step)),
                ("acceptance", sp.acceptance_figure(steps[: cur + 1], cur)),
                ("acceptance by depth", sp.depth_figure(sp.acceptance_by_depth_at(trace, cur)))]
    if kind == "kv":
        from viz import kv
        policy = step.get("policy") or trace.meta.get("params", {}).get("policy", "")
        out = [("memory", kv.memory_figure({str(policy): steps[: cur + 1]}))]
        layers = kv.watched_layers(steps)
        if layers:
            lay = layers[0]
            out = [("eviction map", kv.eviction_map_figure(steps, lay, 0, cursor=cur)),
                   ("attention", kv.attention_heatmap_figure(steps, lay, 0, cursor=cur)),
                   ("scores", kv.score_bars_figure(step, lay, 0))] + out
        if any(s.get("quality") for s in steps[: cur + 1]):
            out.append(("agreement", kv.agreement_figure({str(policy): steps[: cur + 1]})))
        return out
    if kind == "jacobi":
        from viz import jacobi
        return [("trajectory", jacobi.trajectory_grid(steps, cur, trace.final_ids)),
                ("dependency graph", jacobi.dependency_graph(steps, cur)),
                ("tokens vs forwards", jacobi.progress_figure(steps, cur))]
    if kind == "lookahead":
        from viz import jacobi
        return [("lookahead window", jacobi.lookahead_window_figure(step, trace.final_ids)),
                ("tokens vs forwards", jacobi.progress_figure(steps, cur))]
    if kind == "beam":
        from viz import beam
        return [("beam tree", beam.tree_figure(steps, cur)), ("scores", beam.scores_figure(steps, cur))]
    if kind == "cautious":
        from viz import cautious
        params = trace.meta.get("params", {})
        return [("trials", cautious.trials_figure(step)),
                ("entropy", cautious.entropy_figure(steps, cur, params.get("entropy_low"), params.get("entropy_high")))]
    if kind == "diffusion":
        from viz import diffusion
        return [("denoising grid", diffusion.denoising_grid(steps, cur)),
                ("confidence", diffusion.confidence_figure(step)),
                ("tokens per step", diffusion.tokens_per_step_figure(steps, cur))]
    return []


def figures_html(figures: list[tuple[str, go.Figure]], title: str) -> str:
    """One HTML page with every figure (interactive, plotly.js embedded once, works offline)."""
    parts = []
    for i, (name, fig) in enumerate(figures):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%")
        parts.append(f"<h2>{html_text(name)}</h2>\n{div}")
    body = "\n".join(parts) if parts else "<p>This step has no figures.</p>"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(str(title))}</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}h2{font-size:1.1em;margin:1.5em 0 0.2em}</style>"
            f"</head><body><h1 style=\"font-size:1.3em\">{html_text(title)}</h1>\n{body}\n</body></html>")


def trace_html(trace, cursor: int | None = None) -> str:
    """The view's figures at `cursor`, titled with the method, model and step."""
    m = trace.meta if isinstance(trace.meta, dict) else {}
    n = len(trace.steps)
    cur = n - 1 if cursor is None else cursor
    title = f"{m.get('method', 'trace')} on {m.get('model', '?')} · step {cur} of {n}"
    return figures_html(step_figures(trace, cur), title)
