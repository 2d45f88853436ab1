"""Autoregressive view figures: token stream, per-step candidates, probability / entropy over time."""
from __future__ import annotations

import math

import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import html_text, plot_text


def _show(text: str) -> str:
    return html_text(text, newline="↵<br>")


def token_stream_html(steps: list[dict], upto: int, colour_by: str = "prob", max_entropy: float | None = None,
                      max_tokens: int = W.MAX_TOKENS) -> str:
    """The last tokens up to steps[upto] (at most window.MAX_TOKENS, after a marker for the earlier ones) as
    coloured spans; hover shows probability and entropy. Entropy shading is relative to `max_entropy`
    (the largest over all steps; computed here when not given)."""
    if max_entropy is None:
        max_entropy = max([s.get("entropy") or 0 for s in steps] + [1e-9])
    first = W.stream_start(steps, upto, lambda s: 1, max_tokens)
    spans = [W.earlier_marker(first)]
    for i in range(first, upto + 1):
        s = steps[i]
        p = s.get("prob")
        h = s.get("entropy")
        if colour_by == "entropy" and h is not None:
            colour = legend.prob_colour(1 - min(1.0, h / max(max_entropy, 1.0)))
        else:
            colour = legend.prob_colour(p if p is not None else 1.0)
        border = "2px solid currentColor" if i == upto else "1px solid transparent"
        tip = f"step {i}: p={p:.3f}" if p is not None else f"step {i}"
        if h is not None:
            tip += f", entropy={h:.2f} nats"
        spans.append(f'<span title="{html_text(tip)}" style="background:{colour}33;border-bottom:3px solid {colour};'
                     f'outline:{border};padding:1px 0;margin:0 1px">{_show(s.get("token_text", "?"))}</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(spans)}</div>'


def _short(text, n: int = 24) -> str:
    """A token's repr for a title, cut to n characters."""
    r = repr(text if text is not None else "?")
    return r if len(r) <= n else r[: n - 2] + "…'"


def candidates_figure(step: dict) -> go.Figure:
    """Top-k candidates of one step: probability before and after warping; the chosen token marked."""
    cands = sorted(step.get("candidates", []), key=lambda c: -(c.get("p_raw") or 0))
    labels = [plot_text(f"{repr(c['text'])[1:-1] or '∅'}  #{c['id']}") for c in cands]
    chosen = step.get("token_id")
    fig = go.Figure()
    ids = [c["id"] for c in cands]     # a clicked bar's token (the live page forks with it)
    fig.add_bar(y=labels, x=[c.get("p_raw") or 0 for c in cands], orientation="h", name="model p (T=1, no filter)",
                marker_color="#BBBBBB", customdata=ids)
    fig.add_bar(y=labels, x=[c.get("p_warped") or 0 for c in cands], orientation="h", name="after warpers",
                marker_color=[legend.BONUS if c["id"] == chosen else "#6FA8DC" for c in cands], customdata=ids)
    fig.update_layout(barmode="group", height=90 + 28 * len(cands), margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="probability", range=[0, 1]))
    L.title(fig, plot_text(f"Step {step.get('index')}: chose {_short(step.get('token_text'))}"),
            "dark blue: the chosen token; grey: the model's p before the warpers")
    L.legend_below(fig)
    L.themed(fig)
    return fig


def prob_entropy_figure(steps: list[dict], cursor: int) -> go.Figure:
    """p(chosen) and entropy over all steps (at most window.MAX_POINTS points per line, peaks kept)."""
    x = [s["index"] for s in steps]
    px, py = W.line_points(x, [s.get("prob") for s in steps], keep=cursor)
    hx, hy = W.line_points(x, [s.get("entropy") for s in steps], keep=cursor)
    fig = go.Figure()
    fig.add_scatter(x=px, y=py, name="p(chosen)", mode="lines+markers" if len(px) == len(x) else "lines")
    fig.add_scatter(x=hx, y=hy, name="entropy (nats)", mode="lines", yaxis="y2")
    fig.add_vline(x=cursor, line_dash="dot", line_color=L.NEUTRAL)
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      yaxis=dict(title="p", range=[0, 1.05]), yaxis2=L.secondary_axis("entropy", rangemode="tozero"))
    L.title(fig, "Confidence over the generation", W.downsampled_note(len(x), len(px)).strip(" ()") or None,
            legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def perplexity(steps: list[dict]) -> float | None:
    ps = [s.get("prob") for s in steps if s.get("prob")]
    if not ps:
        return None
    return math.exp(-sum(math.log(max(p, 1e-12)) for p in ps) / len(ps))


def _make_running():
    """Running log-probability sum, count and largest entropy, one snapshot per step."""
    total = {"log_p": 0.0, "n": 0, "max_entropy": 1e-9}

    def add(s):
        p = s.get("prob")
        if p:
            total["log_p"] += math.log(max(p, 1e-12))
            total["n"] += 1
        total["max_entropy"] = max(total["max_entropy"], s.get("entropy") or 0)
        return dict(total)
    return add


def perplexity_at(trace, cur: int) -> float | None:
    """perplexity(trace.steps[: cur + 1]) from running totals kept on the trace (each step summed once)."""
    t = W.running_at(trace, "ar", _make_running, cur)
    return math.exp(-t["log_p"] / t["n"]) if t["n"] else None


def max_entropy_at(trace) -> float:
    """The largest entropy over all of the trace's steps, as token_stream_html computes it."""
    return W.running_at(trace, "ar", _make_running, len(trace.steps) - 1)["max_entropy"]


def lens_first_layer(step: dict) -> int | None:
    """The layer from which on the chosen token is the lens's top token (None: not even at the last layer)."""
    return first_layer(step.get("lens") or [], step.get("token_id"))


def first_layer(rows: list[dict], chosen) -> int | None:
    first = None
    for i in range(len(rows) - 1, -1, -1):
        if rows[i]["id"] != chosen:
            break
        first = i
    return first


def lens_figure(steps: list[dict], cursor: int, max_columns: int = W.MAX_ROWS) -> go.Figure:
    """Logit lens: layer x step, each cell the top token after that layer read through the final norm and the
    LM head, shaded by its probability; a ring marks the layer from which the chosen token stays on top."""
    first = W.first_row(cursor, max_columns)
    cols = [(i, f"step {i}", steps[i]["lens"], steps[i].get("token_id"), steps[i].get("token_text"))
            for i in range(first, cursor + 1) if steps[i].get("lens")]
    return lens_grid(cols, "step", W.steps_note(first, cursor, len(steps)))


def lens_grid(cols: list[tuple], x_title: str, note: str = "") -> go.Figure:
    """The lens grid from columns (x, hover label, rows per layer, chosen id, chosen text)."""
    n = max((len(c[2]) for c in cols), default=0)
    z, text, hover = ([[None] * len(cols) for _ in range(n)] for _ in range(3))
    for c, (_, where, rows, _, chosen_text) in enumerate(cols):
        for layer, row in enumerate(rows):
            tok = repr(row.get("text", ""))[1:-1] or "∅"
            z[layer][c] = row["p"]
            text[layer][c] = plot_text(tok[:6])
            hover[layer][c] = (f"{plot_text(where)} · layer {layer}<br>top: <b>{plot_text(tok)}</b> #{row['id']} p = "
                               f"{row['p']:.3f}<br>p(chosen {plot_text(_short(chosen_text, 16))}) = "
                               + ("-" if row.get("p_chosen") is None else f"{row['p_chosen']:.3f}"))
    xs = [c[0] for c in cols]
    fig = go.Figure()
    fig.add_heatmap(z=z, x=xs, y=list(range(n)), text=text, texttemplate="%{text}", hovertext=hover,
                    hoverinfo="text", colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="p(top)"))
    marks = [(x, first_layer(rows, chosen)) for x, _, rows, chosen, _ in cols]
    marks = [(x, f) for x, f in marks if f is not None]
    fig.add_scatter(x=[x for x, _ in marks], y=[f for _, f in marks], mode="markers", hoverinfo="skip",
                    name="chosen token on top from here", marker=dict(size=16, symbol="circle-open",
                                                                      color=legend.RESAMPLED, line=dict(width=2)))
    fig.update_layout(height=160 + 16 * n, margin=dict(l=10, r=10, t=40), xaxis_title=x_title,
                      yaxis_title="layer")
    L.title(fig, "Logit lens: top token after each layer", "read through the final norm and the LM head" + note)
    L.legend_below(fig)
    L.themed(fig)
    return fig
