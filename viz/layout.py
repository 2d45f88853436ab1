"""Layout shared by every figure: titles that fit, legends that do not cover an axis title, nice ticks on
secondary axes, and backgrounds that work in the light and the dark theme.

- A title is short (at most TITLE_CHARS characters a line); details go in a note in smaller type under it,
  wrapped at SUBTITLE_CHARS. Plotly does not wrap a title: a longer line is cut at the figure's edge. The
  narrowest figures (two side by side in a column pair, 408 px in a 1,500-pixel window) hold ~58 title
  characters (15 px bold, 6.6 px each) and ~76 note characters (12 px, 5.2 px each), measured in chromium
  (tests/test_browser_polish.py checks every title's drawn width against its figure's).
- Paper and plot are transparent, so Streamlit's theme shows through; cell colours come from viz.legend,
  and lines drawn on the background use NEUTRAL (mid grey, visible on white and on near-black).
- An overlaying axis gets tickmode "auto": plotly's default for it ("sync") lines its ticks up with the
  primary axis's grid at values such as 0.076 / 0.301 / 0.526.
"""
from __future__ import annotations

import html
import re
import textwrap

TITLE_CHARS = 56
SUBTITLE_CHARS = 72
TITLE_SIZE = 15
SUBTITLE_SIZE = 12
LINE_PX = {TITLE_SIZE: 20, SUBTITLE_SIZE: 16}
TRANSPARENT = "rgba(0,0,0,0)"
NEUTRAL = "#888888"          # cursor lines, outlines and edges drawn over the theme's background
FAINT = "rgba(128,128,128,0.35)"
LEGEND_BOX = "rgba(255,255,255,0.88)"


SEP = " · "


def wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width` characters. A line breaks between the parts of a note (" · ") where it can,
    so that "steps 36–99 of 100" or "binned by 3" stay on one line; a longer part breaks at spaces."""
    out: list[str] = []
    for para in str(text).split("<br>"):
        line = ""
        for part in para.split(SEP):
            part = part.strip()
            if not part:
                continue
            joined = f"{line}{SEP}{part}" if line else part
            if len(joined) <= width:
                line = joined
                continue
            if line:
                out.append(line)
            pieces = textwrap.wrap(part, width, break_long_words=True, break_on_hyphens=False) or [""]
            out += pieces[:-1]
            line = pieces[-1]
        out.append(line)
    return out


_TAG = re.compile(r"<[^>]+>")


def title(fig, text: str, sub: str | None = None, *, legend_above: bool = False, axis_on_top: bool = False) -> None:
    """A short title and an optional note in smaller type under it (both wrapped to fit), and a top margin
    that holds them (and a horizontal legend above the plot when `legend_above`). The note stays part of
    the title's text, so what a figure says about itself (windowed, binned) is read in one place."""
    lines = wrap(text, TITLE_CHARS)
    sub_lines = wrap(sub, SUBTITLE_CHARS) if sub else []
    body = "<br>".join(lines + [f'<span style="font-size:{SUBTITLE_SIZE}px">{ln}</span>' for ln in sub_lines])
    # plotly anchors a title of several lines 11 px higher than one of one line (measured in chromium: its
    # top at -7 px, cut off): pad it down by as much
    pad = 8 if len(lines) + len(sub_lines) == 1 else 19
    t = dict(text=body, font={"size": TITLE_SIZE}, x=0.0, xanchor="left", xref="container",
             y=1.0, yanchor="top", yref="container", pad={"t": pad, "l": 8})
    height = 8 + pad + LINE_PX[TITLE_SIZE] * len(lines) + LINE_PX[SUBTITLE_SIZE] * len(sub_lines)
    if legend_above:
        height += 26
    if axis_on_top:          # an x axis drawn above the plot: its tick labels and title
        height += 46
    margin = dict(fig.layout.margin.to_plotly_json()) if fig.layout.margin else {}
    margin["t"] = height
    fig.update_layout(title=t, margin=margin)


def title_lines(fig) -> list[str]:
    """Every line of the figure's title as a person reads it (tags removed): what tests check against the
    limits."""
    return [html.unescape(_TAG.sub("", ln)) for ln in (fig.layout.title.text or "").split("<br>")]


def themed(fig):
    """Transparent paper and plot (the theme's background shows through), for light and dark mode."""
    fig.update_layout(paper_bgcolor=TRANSPARENT, plot_bgcolor=TRANSPARENT)
    return fig


def legend_above(fig, boxed: bool = False) -> None:
    """A horizontal legend between the title and the plot, right-aligned (title() with legend_above=True
    leaves the room). `boxed`: on a light box with dark text, for a legend with black marks (a black line
    keeps its meaning on a dark page; on a white page the box does not show)."""
    box = dict(bgcolor=LEGEND_BOX, font=dict(color="#111111")) if boxed else {}
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0, **box))


LEGEND_BELOW_PX = 24 + 22 + 22 + 6    # legend_below's bottom margin: tick labels, axis title, one legend row


def legend_below(fig, axis_title: bool = True, rows: int = 1) -> None:
    """A horizontal legend below the x axis (its tick labels and title), in pixels whatever the height."""
    height = fig.layout.height or 450
    m = fig.layout.margin
    below = 24 + (22 if axis_title else 0)          # tick labels (+ axis title) under the plot
    legend_px = 22 * rows
    b = below + legend_px + 6
    t = (m.t if m and m.t is not None else 40)
    plot_h = max(40, height - t - b)
    fig.update_layout(margin=dict(b=b), legend=dict(orientation="h", yanchor="top", xanchor="left", x=0.0,
                                                    y=-below / plot_h))


def secondary_axis(title_text: str, **kw) -> dict:
    """An overlaying y axis on the right with ticks of its own (nice values) and no grid of its own."""
    return dict(title=title_text, overlaying="y", side="right", showgrid=False, tickmode="auto", nticks=6, **kw)


def text_on(colour: str) -> str:
    """A text colour readable on a cell of `colour` (#RRGGBB): near-black on light cells, white on dark."""
    c = colour.lstrip("#")
    if len(c) != 6:
        return "#111111"
    r, g, b = (int(c[i: i + 2], 16) / 255 for i in (0, 2, 4))
    return "#111111" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#FFFFFF"


GRID_WIDTH_PX = 800    # a full-width grid's plot area in a 1,500-pixel window with the sidebar open, about


def grid_text(columns: int, lo: int = 9, hi: int = 14, max_chars: int = 6) -> tuple[int, int]:
    """(font size, label characters) for a grid of `columns` labelled columns across the page: the largest
    type that leaves a label of at least 3 characters (~0.6 em each) inside its cell. 32 columns: 10 px,
    4 characters (the full token is in the hover); 12 columns: 14 px, 6 characters."""
    if columns <= 0:
        return lo, max_chars
    cell = GRID_WIDTH_PX / columns
    size = int(max(lo, min(hi, cell / 2.5)))
    return size, int(max(3, min(max_chars, cell // (0.6 * size))))


def grid_font_size(columns: int, lo: int = 9, hi: int = 14) -> int:
    return grid_text(columns, lo, hi)[0]


def haloed_line(fig, x, y, colour: str = "#000000", width: float = 2.5, **kw) -> None:
    """A line over cells and the page alike: a wider white line under it keeps a black one visible on a
    dark page, and the black keeps it visible on white."""
    fig.add_scatter(x=x, y=y, mode="lines", line=dict(color="rgba(255,255,255,0.85)", width=width + 3),
                    hoverinfo="skip", showlegend=False)
    fig.add_scatter(x=x, y=y, mode="lines", line=dict(color=colour, width=width), hoverinfo="skip", **kw)
