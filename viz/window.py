"""Bounds on what one view draws, whatever the run's length, and the helpers that keep to them.

A live page redraws the views of the step it shows on every refresh. So that a refresh costs the same
at step 1,000 as at step 10:
  - a step-by-position grid shows at most MAX_ROWS steps, ending at the cursor, and at most
    MAX_COLUMNS positions (beyond that positions are binned, and the title says so);
  - per-cell hover strings only up to MAX_HOVER_CELLS cells (else a hovertemplate of the cell's values);
  - a line over all steps keeps at most MAX_POINTS points (each bucket's extremes, and the cursor);
  - a token stream shows the last MAX_TOKENS tokens before the cursor, after a "… N earlier tokens" marker;
  - a summary over all steps (perplexity, acceptance, compression ...) comes from `Running` totals kept
    on the trace and extended with the new steps only.
"""
from __future__ import annotations

import math
import threading
from typing import Callable

MAX_ROWS = 64
MAX_COLUMNS = 512
MAX_HOVER_CELLS = 20_000
MAX_POINTS = 1_000
MAX_TOKENS = 400


# ---- grids ----------------------------------------------------------------------------------
def first_row(cursor: int, max_rows: int = MAX_ROWS, first: int = 0) -> int:
    """The first step of a grid whose last row is the cursor's (at most max_rows rows, from `first` on)."""
    return max(first, cursor - max_rows + 1, 0)


def steps_note(first: int, last: int, total: int, what: str = "steps") -> str:
    """' · steps a–b of N' when a view shows only some of a run's steps (else '')."""
    if first <= 0 and last >= total - 1:
        return ""
    return f" · {what} {first}–{last} of {total}"


def bin_size(width: int, max_columns: int = MAX_COLUMNS) -> int:
    """Positions per column so that `width` positions fit in max_columns columns."""
    return max(1, math.ceil(width / max_columns))


def bin_centres(width: int, k: int) -> list[float]:
    """x of each column in position units (a column of k positions sits over them)."""
    return [b * k + (k - 1) / 2 for b in range(math.ceil(width / k))] if k > 1 else list(range(width))


def hover_per_cell(n_cells: int) -> bool:
    return n_cells <= MAX_HOVER_CELLS


# ---- lines and bars over all steps -------------------------------------------------------------
def line_points(xs: list, ys: list, keep: int | None = None, max_points: int = MAX_POINTS) -> tuple[list, list]:
    """At most ~max_points of a line, in order: per bucket of consecutive points its first, lowest and
    highest point (so peaks stay), plus the last point and the one at index `keep` (the cursor)."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    per = math.ceil(3 * n / max_points)
    keep_at = {n - 1} | ({keep} if keep is not None and 0 <= keep < n else set())
    for lo in range(0, n, per):
        idx = [i for i in range(lo, min(n, lo + per)) if ys[i] is not None]
        keep_at.add(lo)
        if idx:
            keep_at.add(min(idx, key=ys.__getitem__))
            keep_at.add(max(idx, key=ys.__getitem__))
    order = sorted(keep_at)
    return [xs[i] for i in order], [ys[i] for i in order]


def bar_buckets(xs: list, ys: list, max_bars: int = MAX_POINTS) -> tuple[list, list, int]:
    """At most max_bars bars: the mean of each bucket of k consecutive bars, at the bucket's middle x.
    Returns (x, y, k); k == 1 leaves the bars as they are."""
    n = len(xs)
    if n <= max_bars:
        return list(xs), list(ys), 1
    k = math.ceil(n / max_bars)
    bx, by = [], []
    for lo in range(0, n, k):
        vals = [y for y in ys[lo: lo + k] if y is not None]
        bx.append((xs[lo] + xs[min(n, lo + k) - 1]) / 2)
        by.append(sum(vals) / len(vals) if vals else None)
    return bx, by, k


def downsampled_note(n: int, shown: int, what: str = "steps") -> str:
    return f" ({shown} of {n} {what} drawn)" if shown < n else ""


# ---- token streams ------------------------------------------------------------------------------
def stream_start(steps: list[dict], upto: int, count: Callable[[dict], int], max_tokens: int = MAX_TOKENS) -> int:
    """The first step of a token stream that ends at step `upto` and shows at most max_tokens tokens
    (whole steps; the cursor's step always)."""
    total, i = 0, upto
    while i >= 0:
        n = count(steps[i])
        if total + n > max_tokens and i < upto:
            break
        total += n
        i -= 1
    return i + 1


def earlier_marker(n: int, what: str = "tokens") -> str:
    """A stream's leading marker for the n tokens (or positions) it leaves out."""
    if n <= 0:
        return ""
    return (f'<span style="color:#888;font-style:italic;margin-right:6px" title="not drawn: a stream shows '
            f'at most the last {MAX_TOKENS} {what}">… {n:,} earlier {what}</span>')


# ---- running totals on a trace --------------------------------------------------------------
class StepCache:
    """State computed from a growing list of steps, kept between refreshes. It starts over when it is
    given another list or a shorter one (a new run, a reloaded trace)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._steps: list | None = None
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def _sync(self, steps: list, seen: int) -> None:
        if steps is not self._steps or len(steps) < seen:
            self._steps = steps
            self.reset()


class Running(StepCache):
    """Totals up to every step: `add(step)` folds one step in and returns a snapshot of the totals (a
    small dict). Each step is folded once; the totals up to any step are a lookup."""

    def __init__(self, make_add: Callable[[], Callable[[dict], dict]]):
        self._make_add = make_add
        super().__init__()

    def reset(self) -> None:
        self._add = self._make_add()
        self._snapshots: list[dict] = []

    def at(self, steps: list, i: int) -> dict:
        with self._lock:
            self._sync(steps, len(self._snapshots))
            while len(self._snapshots) <= i:
                self._snapshots.append(self._add(steps[len(self._snapshots)]))
            return self._snapshots[i]


def sums(**fields: Callable[[dict], float]) -> Callable[[], Callable[[dict], dict]]:
    """A `make_add` for Running: running sums of per-step numbers."""
    def make():
        total = dict.fromkeys(fields, 0)

        def add(step):
            for name, value in fields.items():
                total[name] += value(step)
            return dict(total)
        return add
    return make


class _Store(dict):
    """The caches kept on a trace. A copy or a pickle of the trace starts without them: they are only a
    speed-up, and they hold locks."""

    def __deepcopy__(self, memo):
        return _Store()

    def __reduce__(self):
        return _Store, ()


def cached(owner, key, make: Callable[[], object]):
    """The object kept on `owner` (a trace) under `key`, made on first use. An owner that cannot hold
    one gets a new object each time (correct, only not incremental)."""
    try:
        store = owner.__dict__.setdefault("_viz_cache", _Store())
    except AttributeError:
        return make()
    obj = store.get(key)
    if obj is None:
        obj = store[key] = make()
    return obj


def running_at(trace, key, make_add: Callable[[], Callable[[dict], dict]], i: int) -> dict:
    """Totals over trace.steps[0..i], extended incrementally on the trace."""
    return cached(trace, ("running", key), lambda: Running(make_add)).at(trace.steps, i)
