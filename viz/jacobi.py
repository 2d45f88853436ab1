"""Jacobi / lookahead view: trajectory grid, dependency graph, lookahead window and n-gram pool, stats.

(~360 lines, one file on purpose: the Jacobi and lookahead views share the grid, the token cells and the
stream; lookahead's own part is the last ~30 lines.)

Pure functions of step records (engine/methods/jacobi.py and lookahead.py): no torch, no streamlit, so a
saved trace replays without a model. Colours come from viz.legend. The grids show at most
window.MAX_ROWS iterations ending at the cursor; the `*_at(trace, ...)` helpers keep running totals and
the n-gram pool's replay on the trace, so a live page does not redo them over every step on each refresh.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import html_text, plot_text

# grid cell states, in colour-scale order
STATES = ["earlier", "fixed", "committed", "changed", "unchanged"]
STATE_COLOUR = {
    "earlier": "#E6ECF5",                 # committed in an earlier iteration (pale)
    "fixed": legend.JACOBI_FIXED,         # guess was already the fixed point: accepted as is
    "committed": legend.JACOBI_COMMITTED, # the convergence front: corrected (or bonus) token, committed now
    "changed": legend.JACOBI_CHANGED,     # changed this iteration, not committed yet
    "unchanged": legend.JACOBI_GUESS,     # unchanged this iteration but not yet known to be fixed
}
STATE_LABEL = {
    "earlier": "committed earlier",
    "fixed": "fixed: guess already right, accepted",
    "committed": "committed now (the convergence front)",
    "changed": "changed this iteration",
    "unchanged": "unchanged, not yet known to be fixed",
}


def tok(text: str, width: int = 7) -> str:
    """A token as a short visible label for plotly: spaces as ·, newlines as ↵, escaped."""
    s = (text or "").replace(" ", "·").replace("\n", "↵").replace("\t", "⇥")
    return plot_text(s if len(s) <= width else s[: width - 1] + "…")


def legend_items() -> dict[str, str]:
    return {STATE_LABEL[k]: STATE_COLOUR[k] for k in STATES}


# ---------------------------------------------------------------------------------------- Jacobi
def cells(step: dict) -> list[dict]:
    """The cells of one iteration's row: the block after this iteration's update, with a state each."""
    guesses = step.get("guess_ids", [])
    pred, ptext = step.get("pred_ids", []), step.get("pred_text", [])
    changed = step.get("changed", [])
    m = step.get("accepted", 0)
    start = step.get("block_start", 0)
    next_start, carried = step.get("next_start", start + m + 1), step.get("carried", 0)
    n_new = step.get("committed", m + 1)
    out = []
    for i, t in enumerate(pred):
        pos = start + i
        if i <= m:
            if i >= n_new:  # truncated at EOS / max_new_tokens
                break
            state = "fixed" if i < m else "committed"
        else:
            if i >= len(guesses) and pos >= next_start + carried:
                continue  # the prediction beyond the block, not carried to the next iteration
            state = "changed" if (i < len(changed) and changed[i]) else "unchanged"
        out.append({"pos": pos, "id": t, "text": ptext[i] if i < len(ptext) else "?", "state": state,
                    "guess_id": guesses[i] if i < len(guesses) else None,
                    "guess_text": (step.get("guess_text") or [None] * len(guesses))[i] if i < len(guesses) else None})
    return out


CONTEXT_COLUMNS = 16  # committed-earlier positions a windowed grid shows left of its oldest block


def _committed_before(steps: list[dict], first_row: int, lo: int) -> dict[int, str]:
    """Text of the output positions >= lo committed before steps[first_row]. Steps commit left to right, so
    the walk back stops at the first step whose block starts at or before lo."""
    out: dict[int, str] = {}
    for s in reversed(steps[max(0, first_row - W.MAX_COLUMNS): first_row]):
        for c in cells(s):
            if c["state"] in ("fixed", "committed") and c["pos"] >= lo:
                out.setdefault(c["pos"], c["text"])
        if s.get("block_start", 0) <= lo:
            break
    return out


def _grid_columns(row_cells: list[list[dict]]) -> tuple[int, int]:
    """The output positions [lo, hi] a grid shows: its rows' cells with a little committed context on the
    left, at most window.MAX_COLUMNS (the right end, where the cursor's block is)."""
    hi = max((c["pos"] for cs in row_cells for c in cs), default=0)
    lo = max(0, min((c["pos"] for cs in row_cells for c in cs), default=0) - CONTEXT_COLUMNS)
    return max(lo, hi - W.MAX_COLUMNS + 1), hi


def trajectory_grid(steps: list[dict], upto: int | None = None, final_ids: list[int] | None = None,
                    first_row: int = 0, max_rows: int = W.MAX_ROWS) -> go.Figure:
    """Iteration x output position; each cell the token after that iteration's update, coloured by state.
    Shows at most max_rows iterations ending at `upto`, and the positions they touch.

    The black staircase is the convergence front (everything left of it is committed). A small dot marks a
    cell that already equals the final output although the decoder cannot know it yet: the gap between
    DDGviz's "equals final output" and what the fixed-point test can prove.
    """
    upto = len(steps) - 1 if upto is None else upto
    first_row = W.first_row(upto, max_rows, first_row)
    rows = steps[first_row: upto + 1]
    if not rows:
        return go.Figure()
    row_cells = [cells(s) for s in rows]
    lo, hi = _grid_columns(row_cells)
    width = hi - lo + 1
    size, chars = L.grid_text(width, max_chars=7)
    labelled = W.hover_per_cell(len(rows) * width)
    final = final_ids or []
    out_so_far = _committed_before(steps, first_row, lo)
    z, text, hover = [], [], []
    dots_x, dots_y = [], []
    front_x, front_y = [], []
    for r, (s, cs) in enumerate(zip(rows, row_cells)):
        zr, tr, hr = [None] * width, [""] * width, [""] * width
        for pos, t in out_so_far.items():
            if lo <= pos <= hi:
                zr[pos - lo] = STATES.index("earlier")
                if labelled:
                    tr[pos - lo], hr[pos - lo] = tok(t, chars), plot_text(f"position {pos}: {t!r} (committed earlier)")
        for c in cs:
            if c["pos"] < lo:
                continue
            i = c["pos"] - lo
            zr[i] = STATES.index(c["state"])
            if labelled:
                tr[i] = tok(c["text"], chars)
                g = "" if c["guess_id"] is None else f"<br>input guess {plot_text(repr(c['guess_text']))}"
                hr[i] = (f"iteration {s['index']}, position {c['pos']}<br>token {plot_text(repr(c['text']))}{g}"
                         f"<br>{STATE_LABEL[c['state']]}")
            if c["state"] in ("changed", "unchanged") and c["pos"] < len(final) and final[c["pos"]] == c["id"]:
                dots_x.append(c["pos"] + 0.38)
                dots_y.append(r - 0.3)
            if c["state"] in ("fixed", "committed"):
                out_so_far[c["pos"]] = c["text"]
        z.append(zr)
        text.append(tr)
        hover.append(hr)
        fx = s.get("front", s.get("block_start", 0) + s.get("accepted", 0)) + 0.5
        front_x += [fx, fx]
        front_y += [r - 0.5, r + 0.5]
    n = len(STATES)
    scale = []
    for i, k in enumerate(STATES):
        scale += [[i / n, STATE_COLOUR[k]], [(i + 1) / n, STATE_COLOUR[k]]]
    if labelled:
        cell_text = dict(text=np.array(text, dtype=str), texttemplate="%{text}",
                         hovertext=np.array(hover, dtype=str), hoverinfo="text", textfont=dict(size=size))
    else:  # too many cells for a label each: the state, named in the legend above the figure
        codes = ", ".join(f"{i} {STATE_LABEL[k]}" for i, k in enumerate(STATES))
        cell_text = dict(hovertemplate=f"position %{{x}}<br>state %{{z}} ({codes})<extra></extra>")
    fig = go.Figure(go.Heatmap(z=np.array(z, dtype=float), x=list(range(lo, hi + 1)), colorscale=scale,
                               zmin=-0.5, zmax=n - 0.5, showscale=False, xgap=1, ygap=1, **cell_text))
    L.haloed_line(fig, front_x, front_y, name="convergence front")
    if dots_x:
        fig.add_scatter(x=dots_x, y=dots_y, mode="markers", marker=dict(size=5, color="#000", symbol="circle"),
                        name="already equals the final output (not yet provable)", hoverinfo="skip")
    labels = [f"it {s['index']}" for s in rows]
    note = W.steps_note(first_row, upto, len(steps), "iterations") + (f" · positions {lo}–{hi}" if lo > 0 else "")
    fig.update_layout(height=max(220, 60 + max(24, size + 12) * len(rows)), margin=dict(l=10, r=10, t=70, b=10),
                      xaxis=dict(title="output position", range=[lo - 0.5, hi + 0.5], dtick=max(1, width // 20)),
                      yaxis=dict(tickmode="array", tickvals=list(range(len(rows))), ticktext=labels,
                                 autorange="reversed"))
    L.title(fig, "Jacobi trajectory: iteration × output position", note.strip(" ·") or None, legend_above=True)
    L.legend_above(fig, boxed=True)
    L.themed(fig)
    return fig


def dependency_dag(steps: list[dict], upto: int | None = None, first_row: int = 0,
                   max_rows: int = W.MAX_ROWS) -> nx.DiGraph:
    """Node (iteration, position) with its token; edge (t, j) -> (t+1, i) when position i's prediction at
    t+1 was computed from the token at j that changed at t (the step record's `forced` ranges). At most
    max_rows iterations, ending at `upto`."""
    upto = len(steps) - 1 if upto is None else upto
    g = nx.DiGraph()
    rows = steps[W.first_row(upto, max_rows, first_row): upto + 1]
    for s in rows:
        for c in cells(s):
            g.add_node((s["index"], c["pos"]), token=c["text"], state=c["state"], id=c["id"])
    for s in rows:
        t = s["index"]
        for j, first, last in s.get("forced", []):
            if (t, j) not in g:
                continue
            for p in range(first, last + 1):
                if (t + 1, p) in g:
                    g.add_edge((t, j), (t + 1, p))
    return g


def critical_chain(steps: list[dict], g: nx.DiGraph) -> list[tuple[int, int]]:
    """The chain that set the number of iterations: each iteration's convergence front, the token whose
    change forced every later position to be recomputed in the next iteration. Consecutive front nodes are
    linked in the DAG; the chain is cut where a link is missing (e.g. a hybrid switch)."""
    chain = []
    for s in steps:
        node = (s["index"], s.get("front", 0))
        if node not in g:
            continue
        if chain and not g.has_edge(chain[-1], node):
            chain = []  # keep the chain that reaches the last iteration shown
        chain.append(node)
    return chain


def dependency_graph(steps: list[dict], upto: int | None = None, first_row: int = 0,
                     max_edges: int = 4000, max_rows: int = W.MAX_ROWS) -> go.Figure:
    """The dependency DAG drawn on the (position, iteration) grid, the critical chain highlighted; at most
    max_rows iterations ending at `upto`."""
    upto = len(steps) - 1 if upto is None else upto
    first_row = W.first_row(upto, max_rows, first_row)
    g = dependency_dag(steps, upto, first_row, max_rows)
    chain = critical_chain(steps[first_row: upto + 1], g)
    on_chain = set(chain)
    chain_edges = set(zip(chain, chain[1:]))
    fig = go.Figure()
    ex, ey = [], []
    for k, (a, b) in enumerate(g.edges):
        if k >= max_edges:
            break
        if (a, b) in chain_edges:
            continue
        ex += [a[1], b[1], None]
        ey += [a[0], b[0], None]
    fig.add_scatter(x=ex, y=ey, mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                    name="forced recomputation", hoverinfo="skip")
    cx, cy = [], []
    for a, b in zip(chain, chain[1:]):
        cx += [a[1], b[1], None]
        cy += [a[0], b[0], None]
    L.haloed_line(fig, cx, cy, width=3, name=f"critical chain ({len(chain)} iterations)")
    for state in STATES[1:]:
        nodes = [n for n, d in g.nodes(data=True) if d["state"] == state]
        if not nodes:
            continue
        fig.add_scatter(
            x=[n[1] for n in nodes], y=[n[0] for n in nodes], mode="markers+text",
            text=[tok(g.nodes[n]["token"], 5) for n in nodes], textposition="top center", textfont=dict(size=10),
            marker=dict(size=[13 if n in on_chain else 9 for n in nodes], color=STATE_COLOUR[state],
                        line=dict(color=L.NEUTRAL, width=[2.5 if n in on_chain else 0 for n in nodes])),
            hovertext=[f"iteration {n[0]}, position {n[1]}: {plot_text(repr(g.nodes[n]['token']))}"
                       f"<br>{STATE_LABEL[state]}<br>forced {g.out_degree(n)} recomputations" for n in nodes],
            hoverinfo="text", name=STATE_LABEL[state])
    n_rows = len({n[0] for n in g.nodes})
    fig.update_layout(height=max(260, 110 + 30 * n_rows), margin=dict(l=10, r=10, t=70, b=10),
                      xaxis=dict(title="output position"), yaxis=dict(title="iteration", autorange="reversed", dtick=1))
    L.title(fig, f"Dependency graph: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges",
            W.steps_note(first_row, upto, len(steps), "iterations").strip(" ·") or None, legend_above=True)
    L.legend_above(fig, boxed=True)
    L.themed(fig)
    return fig


def jacobi_stats(steps: list[dict]) -> dict:
    """Compression ratio and iterations per block from the records alone (also works on a partial trace)."""
    forwards = len(steps)
    tokens = sum(s.get("committed", len(s.get("new_ids", []))) for s in steps)
    blocks: dict = {}
    for s in steps:
        if s.get("block_index") is not None and s.get("phase", "jacobi") == "jacobi":
            blocks[s["block_index"]] = blocks.get(s["block_index"], 0) + 1
    out = {"forwards": forwards, "tokens": tokens, "compression_ratio": tokens / forwards if forwards else None}
    if blocks:
        out["iterations_per_block"] = sum(blocks.values()) / len(blocks)
    return out


def _make_jacobi_running():
    blocks: set = set()
    total = {"tokens": 0, "block_iterations": 0, "blocks": 0}

    def add(s):
        total["tokens"] += s.get("committed", len(s.get("new_ids", [])))
        if s.get("block_index") is not None and s.get("phase", "jacobi") == "jacobi":
            blocks.add(s["block_index"])
            total["block_iterations"] += 1
            total["blocks"] = len(blocks)
        return dict(total)
    return add


def jacobi_stats_at(trace, cur: int) -> dict:
    """jacobi_stats(trace.steps[: cur + 1]) from running totals kept on the trace."""
    t = W.running_at(trace, "jacobi", _make_jacobi_running, cur)
    forwards = cur + 1
    out = {"forwards": forwards, "tokens": t["tokens"], "compression_ratio": t["tokens"] / forwards}
    if t["blocks"]:
        out["iterations_per_block"] = t["block_iterations"] / t["blocks"]
    return out


def progress_figure(steps: list[dict], upto: int | None = None) -> go.Figure:
    """Cumulative tokens against forward passes, next to autoregressive's one token per forward (at most
    window.MAX_POINTS points and bars)."""
    upto = len(steps) - 1 if upto is None else upto
    xs, ys, per = [0], [0], []
    total = 0
    for i, s in enumerate(steps[: upto + 1]):
        k = s.get("committed", len(s.get("new_ids", [])))
        total += k
        xs.append(i + 1)
        ys.append(total)
        per.append(k)
    bx, by, k = W.bar_buckets(xs[1:], per)
    lx, ly = W.line_points(xs, ys)
    fig = go.Figure()
    fig.add_bar(x=bx, y=by, name="tokens committed by this forward" if k == 1 else f"tokens per forward ({k}-forward mean)",
                marker_color=legend.JACOBI_COMMITTED, opacity=0.45, yaxis="y2", width=k if k > 1 else None)
    fig.add_scatter(x=lx, y=ly, mode="lines+markers" if len(lx) == len(xs) else "lines", name="tokens so far",
                    line=dict(color=legend.JACOBI_FIXED))
    fig.add_scatter(x=[0, xs[-1]], y=[0, xs[-1]], mode="lines", name="autoregressive (1 per forward)",
                    line=dict(color="#888", dash="dash"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="forward pass",
                      yaxis=dict(title="tokens"), yaxis2=L.secondary_axis("per forward", rangemode="tozero"))
    L.title(fig, "Tokens vs forward passes", W.downsampled_note(len(xs), len(lx), "forwards").strip(" ()") or None)
    L.legend_below(fig)
    L.themed(fig)
    return fig


# ---------------------------------------------------------------------------------------- lookahead


def stream_tokens(s: dict) -> int:
    """Tokens token_stream_html draws for a step (those it committed)."""
    return s.get("committed", len(s.get("new_ids", [])))


def token_stream_html(steps: list[dict], upto: int, max_tokens: int = W.MAX_TOKENS) -> str:
    """The committed output (its last window.MAX_TOKENS tokens), each iteration's span underlined;
    multi-token iterations stand out."""
    first = W.stream_start(steps, upto, stream_tokens, max_tokens)
    spans = [W.earlier_marker(sum(map(stream_tokens, steps[:first])))]
    for i in range(first, upto + 1):
        s = steps[i]
        n = stream_tokens(s)
        colour = legend.JACOBI_COMMITTED if n > 1 else "#BBBBBB"
        border = "2px solid currentColor" if i == upto else "1px solid transparent"
        txt = html_text(s.get("new_text", ""), newline="↵<br>")
        spans.append(f'<span title="step {i}: {n} token(s)" style="background:{colour}22;border-bottom:3px solid '
                     f'{colour};outline:{border};padding:1px 0;margin:0 1px">{txt}</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(spans)}</div>'


# the lookahead view lives in viz/lookahead.py; its names stay importable from here
from viz.lookahead import (  # noqa: E402,F401
    LOOKAHEAD_SUMS, PoolReplay, TokenTexts, candidates_table, lookahead_stats, lookahead_stats_at,
    lookahead_window_figure, pool_at, pool_table, replay_pool, token_text_at)
