"""Speculative decoding figures, pure functions of step records (no torch, no streamlit).

(320 lines, every figure of the Speculative view; the next split is the tree figure into viz/spec_tree.py.)

A step record holds the round's draft tree: `nodes` (root first, the appended token last with
`appended: True`), each with token text, parent, depth, q, p, status and, when sampling, u and
the acceptance probability `ratio`; `mask` (the tree attention mask, when small), `path`,
`origins` of the committed tokens.
"""
from __future__ import annotations

import networkx as nx
import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import html_text, plot_text

STATUS_LABEL = {"root": "root (last committed token)", "accepted": "accepted draft", "rejected": "rejected draft",
                "unverified": "not reached", "bonus": "bonus (target, after a full accept)",
                "corrected": "target's correction", "resampled": "resampled from the residual"}
ORIGIN_COLOUR = {"accepted": legend.ACCEPTED, "bonus": legend.BONUS, "corrected": legend.BONUS,
                 "resampled": legend.RESAMPLED}


def _show(text: str) -> str:
    return html_text(text, newline="↵<br>")  # for HTML (the token stream)


def _tok(text: str) -> str:
    return repr(text)[1:-1] or "∅"


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def node_hover(n: dict) -> str:
    lines = [f"<b>{plot_text(_tok(n.get('text', '')))}</b>  #{n.get('token')}",
             f"node {n['id']} · depth {n['depth']} · parent {n['parent']}",
             f"status: {STATUS_LABEL.get(n['status'], n['status'])}"]
    if n["status"] != "root":
        lines.append(f"q (draft) = {_fmt(n.get('q'))} · p (target) = {_fmt(n.get('p'))}")
    if n.get("proposer"):
        lines.append(f"proposed by: {plot_text(str(n['proposer']))}")
    if n.get("ratio") is not None and n.get("u") is not None:
        op = "<" if n["status"] == "accepted" else "≥"
        lines.append(f"u = {_fmt(n['u'])} {op} accept prob {_fmt(n['ratio'])}")
    elif n.get("ratio") is not None:
        lines.append(f"typical threshold = {_fmt(n['ratio'])}")
    if n.get("target_top") is not None and n["status"] == "rejected" and n.get("u") is None:
        lines.append(f"target argmax at parent: #{n['target_top']}")
    return "<br>".join(lines)


def tree_layout(nodes: list[dict]) -> dict[int, tuple[float, float]]:
    """Layered layout: x = depth; siblings spread vertically (networkx multipartite layout)."""
    g = nx.DiGraph()
    for n in nodes:
        g.add_node(n["id"], depth=n["depth"])
    for n in nodes:
        if n["parent"] >= 0:
            g.add_edge(n["parent"], n["id"])
    pos = nx.multipartite_layout(g, subset_key="depth", align="vertical")
    # order siblings by their parent's height so the drawing reads like a tree
    by_depth: dict[int, list[int]] = {}
    for n in nodes:
        by_depth.setdefault(n["depth"], []).append(n["id"])
    y: dict[int, float] = {}
    parent = {n["id"]: n["parent"] for n in nodes}
    for d in sorted(by_depth):
        ids = sorted(by_depth[d], key=lambda i: (y.get(parent[i], 0.0), i), reverse=True)
        m = len(ids)
        for r, i in enumerate(ids):
            y[i] = (m - 1) / 2 - r if m > 1 else y.get(parent[i], 0.0)
    return {i: (pos[i][0], y[i]) for i in pos}


def tree_figure(step: dict, height: int = 380) -> go.Figure:
    nodes = step.get("nodes") or []
    fig = go.Figure()
    if not nodes:
        return fig
    pos = tree_layout(nodes)
    path = set(step.get("path", []))
    for n in nodes:
        if n["parent"] < 0:
            continue
        (x0, y0), (x1, y1) = pos[n["parent"]], pos[n["id"]]
        on = n["id"] in path or n.get("appended")
        fig.add_scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                        line=dict(color=L.NEUTRAL if on else L.FAINT, width=3 if on else 1,
                                  dash="dot" if n.get("appended") else "solid"))
    for status in ["root", "accepted", "rejected", "unverified", "bonus", "corrected", "resampled"]:
        group = [n for n in nodes if n["status"] == status]
        if not group:
            continue
        fig.add_scatter(
            x=[pos[n["id"]][0] for n in group], y=[pos[n["id"]][1] for n in group], mode="markers+text",
            name=STATUS_LABEL[status], text=[plot_text(_tok(n.get("text", ""))[:10]) for n in group],
            textposition="top center",
            marker=dict(size=16, color=legend.SPEC_STATUS[status], line=dict(color="#222", width=1),
                        symbol="diamond" if status in ("bonus", "corrected", "resampled") else "circle"),
            hovertext=[node_hover(n) for n in group], hoverinfo="text")
    n_draft = sum(1 for n in nodes if n["status"] not in ("root",) and not n.get("appended"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), hovermode="closest",
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    L.title(fig, plot_text(f"Round {step.get('index')}: {n_draft} drafted, {step.get('accepted_len', 0)} accepted "
                           f"+ 1 {step.get('origin', '')}"), "depth grows to the right; the thick line is the path kept")
    L.legend_below(fig, axis_title=False, rows=2)
    L.themed(fig)
    return fig


def mask_matrix(step: dict) -> list[list[int]]:
    """The tree part of the attention mask (the prefix columns are all 1): from the record or its parents."""
    if step.get("mask"):
        return step["mask"]
    parents = step.get("parents") or []
    n = len(parents)
    m = [[0] * n for _ in range(n)]
    for i in range(n):
        j = i
        while j >= 0:
            m[i][j] = 1
            j = parents[j]
    return m


MASK_HIDDEN = "rgba(128,128,128,0.12)"   # a key the query may not see: faint on a light and a dark page


def mask_figure(step: dict, height: int = 380) -> go.Figure:
    m = mask_matrix(step)
    nodes = {n["id"]: n for n in step.get("nodes", [])}
    labels = [plot_text(f"{i}:{_tok(nodes[i].get('text', ''))[:8]}") if i in nodes else str(i) for i in range(len(m))]
    path = set(step.get("path", []))
    # 0 masked, 1 attends, 2 attends and both ends lie on the accepted path
    z = [[(2 if (i in path and j in path) else 1) if v else 0 for j, v in enumerate(row)] for i, row in enumerate(m)]
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0, zmax=2, showscale=False, xgap=1, ygap=1,
        colorscale=[[0, MASK_HIDDEN], [0.5, "#9E9E9E"], [1, legend.ACCEPTED]],
        hovertemplate="query %{y}<br>key %{x}<br>%{z}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(autorange="reversed", tickfont=dict(size=9)), xaxis=dict(tickfont=dict(size=9)))
    L.title(fig, "Tree attention mask (rows: queries)",
            "grey: attends; green: both on the accepted path; faint: hidden. The prefix columns (all visible) "
            "are left out")
    L.themed(fig)
    return fig


def _stream_texts(s: dict) -> list[str]:
    return s.get("token_texts") or [s.get("new_text", "")]


def stream_tokens(s: dict) -> int:
    """Tokens stream_html draws for a round."""
    return len(_stream_texts(s))


def stream_html(steps: list[dict], upto: int, max_tokens: int = W.MAX_TOKENS) -> str:
    """The output so far (its last window.MAX_TOKENS tokens), each token coloured by its origin; the current
    round outlined."""
    first = W.stream_start(steps, upto, stream_tokens, max_tokens)
    spans = [W.earlier_marker(sum(map(stream_tokens, steps[:first])))]
    for s in steps[first: upto + 1]:
        texts = _stream_texts(s)
        origins = s.get("origins") or ["bonus"] * len(texts)
        for t, o in zip(texts, origins):
            c = ORIGIN_COLOUR.get(o, legend.UNVERIFIED)
            out = "2px solid currentColor" if s["index"] == upto else "1px solid transparent"
            tip = f"round {s['index']}: {o}"
            spans.append(f'<span title="{html_text(tip)}" style="background:{c}33;border-bottom:3px solid {c};'
                         f'outline:{out};padding:1px 0;margin:0 1px">{_show(t)}</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(spans)}</div>'


def stream_legend() -> dict[str, str]:
    return {"accepted draft": legend.ACCEPTED, "target correction / bonus": legend.BONUS,
            "resampled": legend.RESAMPLED, "rejected": legend.REJECTED, "not reached": legend.UNVERIFIED}


def acceptance_figure(steps: list[dict], cursor: int, height: int = 280) -> go.Figure:
    """Accepted length per round (bars) against the drafted depth, and tau so far (line). Over more than
    window.MAX_POINTS rounds a bar is the mean of a few rounds and the line keeps its extremes."""
    x = [s["index"] for s in steps]
    tau, tot = [], 0
    for i, s in enumerate(steps, 1):
        tot += len(s.get("new_ids", []))
        tau.append(tot / i)
    dx, dy, k = W.bar_buckets(x, [s.get("draft_len", 0) for s in steps])
    ax, ay, _ = W.bar_buckets(x, [s.get("accepted_len", 0) for s in steps])
    tx, ty = W.line_points(x, tau, keep=cursor)
    fig = go.Figure()
    fig.add_bar(x=dx, y=dy, name="drafted depth", marker_color="#DDDDDD", width=k if k > 1 else None)
    fig.add_bar(x=ax, y=ay, name="accepted", marker_color=legend.ACCEPTED, width=k if k > 1 else None)
    fig.add_scatter(x=tx, y=ty, name="tau so far (tokens / round)", mode="lines", line=dict(color=legend.BONUS))
    fig.add_vline(x=cursor, line_dash="dot", line_color=L.NEUTRAL)
    fig.update_layout(barmode="overlay", height=height, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="round", yaxis_title="tokens")
    L.title(fig, "Acceptance over time", f"bars: means of {k} rounds" if k > 1 else None, legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def _depth_counts(s: dict) -> tuple[dict[int, int], dict[int, int]]:
    """One round's (reached, accepted) counts by depth, for acceptance_by_depth."""
    nodes = s.get("nodes") or []
    path = s.get("path") or [0]
    kids: dict[int, list[int]] = {}
    for n in nodes:
        if n["parent"] >= 0 and not n.get("appended"):
            kids.setdefault(n["parent"], []).append(n["id"])
    reached: dict[int, int] = {}
    acc: dict[int, int] = {}
    for d in range(1, len(path) + 1):
        if kids.get(path[d - 1]):
            reached[d] = 1
            if d < len(path):
                acc[d] = 1
    return reached, acc


def _depth_rates(reached: dict, acc: dict) -> dict[int, float]:
    return {d: acc.get(d, 0) / n for d, n in sorted(reached.items())}


def acceptance_by_depth(steps: list[dict]) -> dict[int, float]:
    """P(accept depth d | the path reached depth d-1 and drafted something at depth d), from the records."""
    reached: dict[int, int] = {}
    acc: dict[int, int] = {}
    for s in steps:
        r, a = _depth_counts(s)
        for d in r:
            reached[d] = reached.get(d, 0) + 1
        for d in a:
            acc[d] = acc.get(d, 0) + 1
    return _depth_rates(reached, acc)


def _make_depth_running():
    reached: dict[int, int] = {}
    acc: dict[int, int] = {}

    def add(s):
        r, a = _depth_counts(s)
        for d in r:
            reached[d] = reached.get(d, 0) + 1
        for d in a:
            acc[d] = acc.get(d, 0) + 1
        return {"reached": dict(reached), "acc": dict(acc)}
    return add


def acceptance_by_depth_at(trace, cur: int) -> dict[int, float]:
    """acceptance_by_depth(trace.steps[: cur + 1]) from running counts kept on the trace."""
    t = W.running_at(trace, "speculative depth", _make_depth_running, cur)
    return _depth_rates(t["reached"], t["acc"])


def depth_figure(rates: dict, height: int = 280) -> go.Figure:
    ds = sorted(int(d) for d in rates)
    fig = go.Figure(go.Bar(x=ds, y=[rates[d] if d in rates else rates[str(d)] for d in ds],
                           marker_color=legend.ACCEPTED))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="depth", yaxis=dict(title="accepted | reached", range=[0, 1.05]))
    L.title(fig, "Acceptance rate by depth")
    L.themed(fig)
    return fig


def round_table(step: dict) -> list[dict]:
    """Rows for a table of the round's nodes."""
    rows = []
    for n in step.get("nodes", []):
        rows.append({"node": n["id"], "parent": n["parent"], "depth": n["depth"], "token": _tok(n.get("text", "")),
                     "status": n["status"], "q": n.get("q"), "p": n.get("p"), "u": n.get("u"),
                     "accept prob": n.get("ratio")})
        if n.get("proposer"):
            rows[-1]["proposed by"] = str(n["proposer"])
    return rows


SUMMARY_FIELDS = {"tokens": lambda s: len(s.get("new_ids", [])), "drafted": lambda s: s.get("tree_size", 0),
                  "accepted": lambda s: s.get("accepted_len", 0),
                  "draft_forwards": lambda s: s.get("draft_forwards", 0),
                  "draft_s": lambda s: s.get("draft_s") or 0, "verify_s": lambda s: s.get("verify_s") or 0}


def _summary(t: dict, rounds: int) -> dict:
    return {"rounds": rounds, "tokens": t["tokens"], "tau": t["tokens"] / rounds if rounds else 0.0,
            "acceptance": t["accepted"] / t["drafted"] if t["drafted"] else None,
            "draft_forwards": t["draft_forwards"], "draft_s": t["draft_s"], "verify_s": t["verify_s"]}


def summary_from_steps(steps: list[dict], upto: int) -> dict:
    part = steps[: upto + 1]
    return _summary({name: sum(value(s) for s in part) for name, value in SUMMARY_FIELDS.items()}, len(part))


def summary_at(trace, cur: int) -> dict:
    """summary_from_steps(trace.steps, cur) from running sums kept on the trace (each round summed once)."""
    return _summary(W.running_at(trace, "speculative", W.sums(**SUMMARY_FIELDS), cur), cur + 1)


def lens_figure(steps: list[dict], cursor: int, max_columns: int = W.MAX_ROWS) -> go.Figure:
    """Logit lens over the committed tokens of the rounds up to the cursor (the last `max_columns`): each
    token's column is the verification forward's row that predicted it, every layer read through the final
    norm and the LM head."""
    from viz.ar import lens_grid
    cols, pos = [], 0
    for i in range(cursor + 1):
        s = steps[i]
        ids, texts = s.get("new_ids", []), s.get("token_texts") or []
        for j, rows in enumerate(s.get("lens") or []):
            if j < len(ids):
                cols.append((pos + j, f"round {i}, token {j}", rows, ids[j], texts[j] if j < len(texts) else None))
        pos += len(ids)
    shown = cols[-max_columns:]
    note = f" (the last {len(shown)} of {len(cols)} tokens)" if len(shown) < len(cols) else ""
    return lens_grid(shown, "output token", note)
