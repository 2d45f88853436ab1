"""What-if forks: a branch's tokens beside its parent's, aligned by output position, and the tree of branches.

A run is described here by plain data (no streamlit, no torch): per output position a `Tok(id, text, origin)`,
origin "own" (decoded by this run), "inherited" (the parent's, before the fork) or "edited" (the token the
fork put in). Every trace string is escaped (viz.safe) before it goes into HTML or plotly text.
"""
from __future__ import annotations

from typing import NamedTuple

import networkx as nx
import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz.safe import html_text, plot_text

PER_LINE = 12          # positions per block of the aligned view
MAX_POSITIONS = 240    # positions drawn at most (from a few before the fork on)
BEFORE_FORK = 4        # inherited positions shown before the fork point


class Tok(NamedTuple):
    id: int
    text: str
    origin: str = "own"


def own_tokens(steps: list[dict], final_ids: list[int], token_texts: list[str] | None = None) -> list[Tok]:
    """A run's own output tokens with their texts: the run's token texts when it sent them (a finished
    run), else each step's (an AR step's token_text; a multi-token step's text on its first token)."""
    ids = [int(t) for t in final_ids]
    if token_texts is not None and len(token_texts) == len(ids):
        return [Tok(t, str(x)) for t, x in zip(ids, token_texts)]
    texts: list[str] = []
    for s in steps:
        new = s.get("new_ids") or ([s["token_id"]] if isinstance(s.get("token_id"), int) else [])
        if not new:
            continue
        first = s.get("token_text") if len(new) == 1 and s.get("token_text") is not None else s.get("new_text", "")
        texts += [str(first or "")] + ["…"] * (len(new) - 1)
    texts += ["?"] * (len(ids) - len(texts))
    return [Tok(t, x) for t, x in zip(ids, texts)]


def branch_tokens(parent: list[Tok], fork_meta: dict, own: list[Tok]) -> list[Tok]:
    """A branch's whole answer: the parent's tokens before the fork, the edited token (if any), its own."""
    prefix = list(fork_meta.get("prefix_ids") or [])
    edit = (fork_meta.get("edit") or {}).get("token")
    n_inh = len(prefix) - (1 if edit else 0)
    out = [Tok(t, parent[i].text if i < len(parent) and parent[i].id == t else "?", "inherited")
           for i, t in enumerate(prefix[:n_inh])]
    if edit:
        out.append(Tok(int(prefix[-1]), str(edit.get("text", "?")), "edited"))
    return out + list(own)


def first_divergence(a: list[Tok], b: list[Tok]) -> int | None:
    """The first position where two rows' tokens differ (engine.quality's), None where one is a prefix of the other
    (nothing to mark: the shorter row just ends)."""
    from engine.quality import first_divergence as first
    d = first([t.id for t in a], [t.id for t in b])
    return None if d is None or d >= min(len(a), len(b)) else d


ORIGIN_STYLE = {"inherited": "color:#888888", "edited": f"background:{legend.RESAMPLED}33;font-weight:bold",
                "own": ""}


def _cell(t: Tok | None, pos: int, diverged: bool, shown: bool) -> str:
    if t is None:
        return '<td style="padding:2px 4px"></td>'
    text = repr(t.text)[1:-1] or "∅"
    style = ORIGIN_STYLE.get(t.origin, "")
    if diverged:
        style += ";border-left:3px solid #D62728"
    if shown:
        style += ";outline:2px solid currentColor"
    tip = f"position {pos}: #{t.id} ({t.origin})"
    return (f'<td title="{html_text(tip)}" style="padding:2px 4px;white-space:pre;max-width:9em;overflow:hidden;'
            f'{style}">{html_text(text[:24])}</td>')


def aligned_html(runs: list[tuple[str, list[Tok], int | None]], fork_at: int, divergence: int | None) -> str:
    """Two (or more) runs' tokens aligned by output position, in blocks of PER_LINE positions: a row per run
    (label, tokens, the position of the step it shows or None), the fork point and the first divergence marked
    (a red bar before it). From BEFORE_FORK positions before the fork, at most MAX_POSITIONS positions."""
    n = max((len(toks) for _, toks, _ in runs), default=0)
    start = max(0, fork_at - BEFORE_FORK)
    end = min(n, start + MAX_POSITIONS)
    blocks = []
    if start:
        blocks.append(f'<div style="color:#888888;font-size:0.85em">… {start} earlier position'
                      f'{"s" if start != 1 else ""}, the same in every run</div>')
    for a in range(start, end, PER_LINE):
        cols = range(a, min(end, a + PER_LINE))
        head = "".join(f'<th style="padding:0 4px;font-weight:normal;color:#888888;font-size:0.8em">'
                       f'{"◆ " if p == fork_at else ""}{p}</th>' for p in cols)
        rows = [f'<tr><th style="padding:0 6px 0 0;text-align:left;font-size:0.8em"></th>{head}</tr>']
        for label, toks, shown in runs:
            cells = "".join(_cell(toks[p] if p < len(toks) else None, p, p == divergence, p == shown) for p in cols)
            rows.append(f'<tr><th style="padding:0 6px 0 0;text-align:left;white-space:nowrap;font-size:0.85em">'
                        f'{html_text(label)}</th>{cells}</tr>')
        blocks.append(f'<table style="border-collapse:collapse;font-family:monospace;margin:2px 0 6px 0">'
                      f'{"".join(rows)}</table>')
    if end < n:
        blocks.append(f'<div style="color:#888888;font-size:0.85em">… {n - end} later positions not shown</div>')
    note = ("first divergence at position " + str(divergence)) if divergence is not None else "no divergence"
    legend_row = legend.legend_html({"◆ fork point; inherited": "#888888", "edited token": legend.RESAMPLED,
                                     f"{note}": "#D62728", "step shown": "#000000"})
    return f'<div style="overflow-x:auto">{legend_row}{"".join(blocks)}</div>'


def tree_layout(nodes: list[dict]) -> dict[int, tuple[float, int]]:
    """Node id -> (x, lane): x is the output position the run starts at (its fork point, 0 for the original),
    the lane its row, in depth-first order of the fork tree (a branch right under its parent's subtree)."""
    g = nx.DiGraph()
    for n in nodes:
        g.add_node(n["id"])
        if n.get("parent") is not None and n["id"] != n["parent"]:
            g.add_edge(n["parent"], n["id"])
    at = {n["id"]: n.get("at", 0) for n in nodes}
    roots = [n for n in g.nodes if g.in_degree(n) == 0]
    order: list[int] = []
    for r in sorted(roots):
        order += [v for v in nx.dfs_preorder_nodes(g, r, sort_neighbors=lambda vs: sorted(vs, key=lambda v: at[v]))
                  if v not in order]
    return {v: (float(at[v]), lane) for lane, v in enumerate(order)}


def tree_figure(nodes: list[dict], selected: int | None = None) -> go.Figure:
    """The fork tree: each run a line from its fork point to its last output position, joined to its parent's
    line where it was forked. nodes: {"id", "parent" (None for the original), "at" (fork position), "length"
    (output tokens), "label", "state"}."""
    pos = tree_layout(nodes)
    by_id = {n["id"]: n for n in nodes}
    fig = go.Figure()
    for n in nodes:
        x0, lane = pos[n["id"]]
        x1 = max(x0, float(n.get("length") or 0))
        colour = legend.BONUS if n["id"] == selected else ("#444444" if n.get("parent") is None else "#6FA8DC")
        xs, ys = [x0, x1], [-lane, -lane]
        if n.get("parent") in by_id:
            px, plane = pos[n["parent"]]
            xs, ys = [x0, x0] + xs, [-plane, -lane] + ys
        label = plot_text(n.get("label", ""))
        fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=4 if n["id"] == selected else 2),
                        hoverinfo="skip", showlegend=False)
        fig.add_scatter(x=[x1], y=[-lane], mode="markers+text", text=[label], textposition="middle right",
                        marker=dict(size=9, color=colour), showlegend=False,
                        hovertext=[f"{label}<br>{plot_text(n.get('state', ''))} · {int(n.get('length') or 0)} tokens"],
                        hoverinfo="text")
        if n.get("parent") is not None:
            fig.add_scatter(x=[x0], y=[-pos[n["parent"]][1]], mode="markers", hoverinfo="text",
                            hovertext=[f"forked at position {int(x0)}"], showlegend=False,
                            marker=dict(size=8, symbol="diamond", color=legend.RESAMPLED))
    lanes = max((lane for _, lane in pos.values()), default=0) + 1
    right = max([float(n.get("length") or 0) for n in nodes] + [1.0])
    fig.update_layout(height=70 + 34 * lanes, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="output position", range=[-0.5, right * 1.35 + 2]),
                      yaxis=dict(visible=False, range=[-lanes + 0.5, 0.5]))
    L.title(fig, "Branches", "each line a run, from its fork point to its last token")
    L.themed(fig)
    return fig
